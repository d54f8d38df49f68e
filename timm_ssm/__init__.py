"""timm-ssm: the Split-and-Share Module (SSM) classifier head for every timm model.

`import timm_ssm` registers `<arch>_ssm` for every timm architecture with a classifier.
"""
from .version import __version__
from .head import IndividualLoss, SplitShareHead
from .split_share import PAPER_MODELS, SplitShareNet, base_model_name
