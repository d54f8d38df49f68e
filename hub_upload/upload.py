#!/usr/bin/env python3
"""Publish an SSM model trained with timm's train.py to the Hugging Face Hub: `python -m timm_ssm.hub` from this
checkout (`python hub_upload/upload.py RUN --repo-id ORG/NAME [--dry-run]`; `--help` for the options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's timm_ssm

from timm_ssm.hub import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
