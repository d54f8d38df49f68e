"""pytest plugin that runs timm's own `tests/test_models.py`, unchanged, on a subset of SSM models.

`.ci/run` loads it (`-p timm_models_subset`, with tests/ on PYTHONPATH) against the tests of the installed timm's sdist,
so that the next change of timm's model contract shows up in CI. Importing timm_ssm here registers `<arch>_ssm` before
timm's test module builds its parameter lists from `timm.list_models()`. Only the tests parametrized with a model of
the subset (any of its pretrained tags) are kept, less those that need the network.
"""
import pytest

import timm_ssm  # noqa: F401  registers the SSM models before timm's test module lists them

# the paper's ResNets and ResNeXts (alias included), a tiny ResNet, a ConvNeXt (NHWC head with a norm),
# an EfficientNet (conv head after pooling) and a ViT (timm's non-standard tests)
SSM_MODELS = (
    'resnet18_ssm', 'resnet50_ssm', 'resnext50_32x4d_ssm', 'resnext50_ssm', 'test_resnet_ssm', 'convnext_atto_ssm',
    'efficientnet_b0_ssm', 'vit_tiny_patch16_224_ssm',
)
# the only tests deselected within the subset: they download from the Hugging Face Hub, which CI cannot reach
NEEDS_NETWORK = {
    'test_model_inference': 'downloads the pretrained weights and reference tensors of timm/<model> from the Hub',
    'test_model_load_pretrained': 'downloads the pretrained weights from the Hub',
    'test_model_features_pretrained': 'downloads the pretrained weights from the Hub',
}


def pytest_addoption(parser):
    parser.addoption(
        '--ssm-models', default=','.join(SSM_MODELS),
        help='comma-separated SSM architectures whose parametrizations of timm\'s model tests run')


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    models = set(config.getoption('ssm_models').split(','))
    keep, drop = [], []
    for item in items:
        params = getattr(item, 'callspec', None)
        model_name = params.params.get('model_name') if params is not None else None
        in_subset = isinstance(model_name, str) and model_name.split('.')[0] in models
        (keep if in_subset and item.originalname not in NEEDS_NETWORK else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_report_header(config):
    return [
        f'timm_ssm subset: {config.getoption("ssm_models")}',
        'deselected (need the network): ' + '; '.join(f'{k}: {v}' for k, v in NEEDS_NETWORK.items()),
    ]
