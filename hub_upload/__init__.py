"""Publish SSM models trained with timm's `train.py` to the Hugging Face Hub in timm's format.

Run `python hub_upload/upload.py --help`.
"""
