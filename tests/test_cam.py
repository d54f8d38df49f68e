"""Grad-CAM per channel group (`python -m timm_ssm.cam`) on tiny models."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import timm
import timm_ssm  # noqa: F401  (registers the *_ssm models)
from timm_ssm.cam import PANEL_PAD, feature_gradients, grad_cams, main

from clean_exit import exits_clearly


def _model(name: str, **kwargs):
    model = timm.create_model(name, num_classes=5, **kwargs)
    with torch.no_grad():
        for m in model.modules():  # sub-classifiers that are not all alike
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 1)
    return model.eval()


# a tiny Swin: its feature map is channels-last (NHWC), 2x2 at 64 px
_TINY_SWIN = dict(img_size=64, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


@pytest.mark.parametrize('name,kwargs', [
    ('test_resnet_ssm', {}),
    ('test_efficientnet_ssm', {}),
    ('swin_tiny_patch4_window7_224_ssm', _TINY_SWIN),
])
def test_gradients_stay_in_prefix(name, kwargs):
    """Sub-classifier j's logit has zero gradient on the feature map's channels outside its prefix."""
    model = _model(name, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    feat, grads, logits = feature_gradients(model, x, torch.tensor([1, 3]))
    widths = model.head.widths
    assert grads.shape == (2, 5) + feat.shape[1:] and feat.shape[1] == widths[-1] and min(feat.shape[-2:]) >= 2
    for j, width in enumerate(widths):
        assert torch.all(grads[:, j, width:] == 0) and grads[:, j, :width].abs().sum((1, 2, 3)).min() > 0
    assert grads[:, -1].abs().sum((2, 3)).min() > 0  # the averaged output depends on every channel
    torch.testing.assert_close(logits, model(x))


def test_cams_match_hooked_reference():
    """Each map against Grad-CAM computed by hand through a forward hook on the trunk's last stage."""
    model = _model('test_resnet_ssm')
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([0, 4])
    cams, ranges, _ = grad_cams(model, x, target)
    group = model.head.widths[0]
    assert ranges == [(j * group, (j + 1) * group - 1) for j in range(4)] + [(0, 4 * group - 1)]
    captured = {}
    handle = model.trunk.layer4.register_forward_hook(lambda m, i, out: captured.update(a=out))
    for j, (first, last) in enumerate(ranges):
        splits = model.forward_splits(x)
        out = splits[:, j] if j < 4 else splits.mean(1)
        grad = torch.autograd.grad(out[torch.arange(2), target].sum(), captured['a'])[0]
        ref = F.relu((grad.mean((2, 3), keepdim=True) * captured['a'])[:, first:last + 1].sum(1, keepdim=True))
        ref = F.interpolate(ref, size=(64, 64), mode='bilinear', align_corners=False)[:, 0]
        ref = ref - ref.flatten(1).min(1).values[:, None, None]
        ref = ref / (ref.flatten(1).max(1).values[:, None, None] + 1e-7)
        torch.testing.assert_close(cams[:, j], ref.detach(), atol=1e-4, rtol=1e-4)
    handle.remove()


@pytest.mark.parametrize('name,size', [('test_convnext_ssm', 64), ('test_resnet', 64), ('test_resnet_ssm', 28)])
def test_other_trunks_and_flat_maps(name, size):
    """Other trunks, a plain classifier; a 1x1 map (28 px) gives flat maps, not rounding noise stretched."""
    cams, ranges, _ = grad_cams(_model(name), torch.randn(1, 3, size, size), torch.tensor([2]))
    n = 4 if name.endswith('_ssm') else 0
    assert cams.shape == (1, n + 1, size, size) and len(ranges) == n + 1 and cams.min() >= 0 and cams.max() <= 1
    assert torch.all(cams == 0) == (size == 28)


@pytest.fixture
def class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for c in ('cat', 'dog'):
        (tmp_path / 'images' / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / 'images' / c / 'a.png')
    (tmp_path / 'classes.txt').write_text('cat\ndog\n')  # the 2 folders are classes 0 and 1 of the 5-class models
    return tmp_path / 'images'


def _checkpoint(path, name='test_resnet_ssm', model_kwargs=None, **args):
    model = _model(name, **(model_kwargs or {}), in_chans=args.get('input_size', [3])[0])
    args = dict(dict(model=name, num_classes=5, in_chans=None, model_kwargs=model_kwargs or {}), **args)
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(**args)}, path)
    return str(path)


def _fails(argv, capsys, match):
    return exits_clearly(main, argv, capsys, match)


def test_grids_of_a_class_folder_and_of_one_image_name_the_classes(class_folders, tmp_path, capsys):
    """Class folders give the ground truth; one image takes the prediction, and shows it by the name of the run's
    training class (it used to say 'class 3')."""
    train = tmp_path / 'data' / 'train'
    for name in ('ankle', 'bag', 'coat', 'dress', 'shirt'):
        (train / name).mkdir(parents=True)
    checkpoint = _checkpoint(tmp_path / 'm.pth.tar', model_kwargs=dict(num_splits=2), data_dir=str(train.parent))
    common = ['--checkpoint', checkpoint, '--img-size', '64', '--panel', '96', '--device', 'cpu']
    written = main([str(class_folders), '--out', str(tmp_path / 'o'), '--class-map', str(tmp_path / 'classes.txt')]
                   + common)
    assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == ['cat_a_cam.png', 'dog_a_cam.png']
    assert [t for _, t, _ in written] == [0, 1]
    with Image.open(tmp_path / 'o' / 'cat_a_cam.png') as im:
        assert im.size[0] == 4 * (96 + PANEL_PAD) + PANEL_PAD  # the image, FC1's group, FC2's group, all channels
        assert 96 + 2 * PANEL_PAD < im.size[1] < 2 * 96
    assert 'dog_a_cam.png: target 1: bag (ground truth)' in capsys.readouterr().out
    (path, target, pred), = main([str(class_folders / 'dog' / 'a.png'), '--out', str(tmp_path / 'one')] + common)
    out = capsys.readouterr().out
    names = ('ankle', 'bag', 'coat', 'dress', 'shirt')
    assert f'target {pred}: {names[pred]} (prediction), prediction {pred}: {names[pred]}' in out
    assert f'wrote 1 Grad-CAM grid(s) to {tmp_path / "one"}' in out


def test_bad_inputs_and_outputs_leave_nothing_behind(class_folders, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / 'r.pth.tar')
    common = ['--checkpoint', checkpoint, '--img-size', '64', '--panel', '32', '--device', 'cpu']
    (tmp_path / 'afile').write_text('x')
    _fails([str(class_folders), '--out', str(tmp_path / 'afile'), '--class-map', str(tmp_path / 'classes.txt')]
           + common, capsys, '--out .*afile cannot be used as a folder')
    (tmp_path / 'notes.png').write_text('not an image')
    _fails([str(tmp_path / 'notes.png'), '--out', str(tmp_path / 'o')] + common, capsys,
           'notes.png is not an image that Pillow can read')
    _fails([str(tmp_path / 'nothing'), '--out', str(tmp_path / 'o')] + common, capsys,
           'is neither an image file nor a folder')
    _fails([str(class_folders), '--target-class', '5', '--out', str(tmp_path / 'o')] + common, capsys,
           '--target-class 5 is outside the model\'s 5 classes: give 0..4')
    _fails([str(class_folders), '--out', str(tmp_path / 'o')] + common, capsys,
           'images has 2 classes \\[cat, dog\\], but the model has 5: .*--class-map')
    vit = _checkpoint(tmp_path / 'vit.pth.tar', 'test_vit_ssm', model_kwargs=dict(img_size=32))
    _fails([str(class_folders), '--checkpoint', vit, '--img-size', '32', '--out', str(tmp_path / 'o'), '--device',
            'cpu'], capsys, 'Grad-CAM needs a spatial feature map')
    assert not (tmp_path / 'o').exists()

    out = tmp_path / 'cams'
    out.mkdir()
    (out / 'cat_a_cam.png').write_bytes(b'mine')
    argv = [str(class_folders), '--out', str(out), '--class-map', str(tmp_path / 'classes.txt')] + common
    _fails(argv, capsys, '--out .*cat_a_cam.png already exists: give another --out, or --overwrite to replace it')
    assert [p.name for p in out.iterdir()] == ['cat_a_cam.png'] and (out / 'cat_a_cam.png').read_bytes() == b'mine'
    assert len(main(argv + ['--overwrite'])) == 2

    (class_folders / 'dog' / 'b.png').write_text('not an image')
    _fails([str(class_folders), '--out', str(tmp_path / 'o'), '--class-map', str(tmp_path / 'classes.txt')] + common,
           capsys, '1 of the 3 images in .*images could not be read, .*so no result is reported: .*dog/b.png')
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('option,message', [
    (['--alpha', '5'], 'argument --alpha: 5 is not a finite number in \\[0, 1\\]'),
    (['--panel', '100000'], 'argument --panel: 100000 is not an integer in \\[16, 2048\\]'),
    (['--num-images', '0'], 'argument --num-images: 0 is not'),
    (['--target-class', '-1'], 'argument --target-class: -1 is not'),
])
def test_option_values_are_checked_by_the_parser(option, message, capsys):
    _fails(['x.png', '--model', 'test_resnet_ssm'] + option, capsys, message)


def test_grid_names_are_unique(tmp_path):
    """`a/b_c.png`, `a/b_c.jpg` and `a_b/c.png` flatten to one name: each gets its own grid."""
    rng = np.random.default_rng(0)
    for name in ('a/b_c.png', 'a/b_c.jpg', 'a_b/c.png'):
        (tmp_path / 'in' / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / 'in' / name)
    (tmp_path / 'map.txt').write_text('a\na_b\n')
    written = main([str(tmp_path / 'in'), '--checkpoint', _checkpoint(tmp_path / 'r.pth.tar'), '--img-size', '64',
                    '--panel', '32', '--device', 'cpu', '--out', str(tmp_path / 'o'), '--class-map',
                    str(tmp_path / 'map.txt')])
    assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == [
        'a_b_c_jpg_cam.png', 'a_b_c_png_2_cam.png', 'a_b_c_png_cam.png']
    assert [t for _, t, _ in written] == [0, 0, 1]  # the class map's indices


def test_map_size(class_folders, tmp_path, capsys, caplog):
    """The default run's model at its 28 px leaves a 1x1 map: refused, saying what to do. With output_stride=8 (a
    4x4 map) the maps are drawn without a word at 28 px, with a warning at a size the run was not trained at."""
    common = [str(class_folders), '--class-map', str(tmp_path / 'classes.txt'), '--panel', '32',
              '--device', 'cpu']
    args = dict(input_size=[3, 28, 28], mean=[0.3] * 3, std=[0.4] * 3, crop_pct=1.0, interpolation='bilinear')
    err = _fails(common + ['--checkpoint', _checkpoint(tmp_path / 'a.pth.tar', **args), '--out', str(tmp_path / 'o')],
                 capsys, 'The last feature map of the model is 1x1 at 28 px, so every heat map would be one flat')
    assert '--model-kwargs output_stride=8' in err and not (tmp_path / 'o').exists()
    common += ['--checkpoint', _checkpoint(tmp_path / 'b.pth.tar', model_kwargs=dict(output_stride=8), **args)]
    with caplog.at_level('WARNING'):
        assert len(main(common + ['--out', str(tmp_path / 'a')])) == 2
        assert 'px' not in caplog.text
        assert len(main(common + ['--out', str(tmp_path / 'b'), '--img-size', '64'])) == 2
    assert 'the maps are drawn at 64 px, but test_resnet_ssm was trained and evaluated at 28 px' in caplog.text
