"""Grad-CAM per channel group (`python -m timm_ssm.cam`) on tiny models."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
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
    assert grads.shape == (2, 5) + feat.shape[1:] and feat.shape[1] == widths[-1]
    assert min(feat.shape[-2:]) >= 2
    for j, width in enumerate(widths):
        assert torch.all(grads[:, j, width:] == 0)
        assert grads[:, j, :width].abs().sum((1, 2, 3)).min() > 0
    # the averaged output depends on every channel
    assert grads[:, -1].abs().sum((2, 3)).min() > 0
    torch.testing.assert_close(logits, model(x))


def test_cams_match_hooked_reference():
    """Each map against Grad-CAM computed by hand through a forward hook on the trunk's last stage."""
    model = _model('test_resnet_ssm')
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([0, 4])
    cams, ranges, _ = grad_cams(model, x, target)
    group = model.head.widths[0]
    assert ranges == [(j * group, (j + 1) * group - 1) for j in range(4)] + [(0, 4 * group - 1)]

    captured = {}
    handle = model.trunk.layer4.register_forward_hook(lambda m, i, out: captured.update(a=out))
    for j in range(5):
        splits = model.forward_splits(x)
        out = splits[:, j] if j < 4 else splits.mean(1)
        a = captured['a']
        grad = torch.autograd.grad(out[torch.arange(2), target].sum(), a)[0]
        first, last = ranges[j]
        ref = F.relu((grad.mean((2, 3), keepdim=True) * a)[:, first:last + 1].sum(1, keepdim=True))
        ref = F.interpolate(ref, size=(64, 64), mode='bilinear', align_corners=False)[:, 0]
        ref = ref - ref.flatten(1).min(1).values[:, None, None]
        ref = ref / (ref.flatten(1).max(1).values[:, None, None] + 1e-7)
        torch.testing.assert_close(cams[:, j], ref.detach(), atol=1e-4, rtol=1e-4)
    handle.remove()


@pytest.mark.parametrize('name', ['test_convnext_ssm', 'test_efficientnet_ssm', 'test_resnet'])
def test_other_cnn_trunks(name):
    model = _model(name)
    cams, ranges, _ = grad_cams(model, torch.randn(1, 3, 64, 64), torch.tensor([2]))
    n = 4 if name.endswith('_ssm') else 0
    assert cams.shape == (1, n + 1, 64, 64) and len(ranges) == n + 1
    assert cams.min() >= 0 and cams.max() <= 1


def test_non_spatial_trunk_error():
    with pytest.raises(ValueError, match='needs a spatial feature map'):
        grad_cams(_model('test_vit_ssm', img_size=32), torch.randn(1, 3, 32, 32), torch.tensor([0]))


@pytest.fixture
def class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for c in ('cat', 'dog'):
        (tmp_path / 'images' / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / 'images' / c / 'a.png')
    (tmp_path / 'classes.txt').write_text('cat\ndog\n')  # the 2 folders are classes 0 and 1 of the 5-class models
    return tmp_path / 'images'


def _class_map(class_folders):
    return ['--class-map', str(class_folders.parent / 'classes.txt')]


def _checkpoint(model, name, path, num_classes=5, **extra):
    args = argparse.Namespace(model=name, num_classes=num_classes, in_chans=3, model_kwargs=extra)
    torch.save({'state_dict': model.state_dict(), 'args': args}, path)


def test_cli_grid(class_folders, tmp_path, caplog):
    model = _model('test_resnet_ssm', num_splits=2)
    _checkpoint(model, 'test_resnet_ssm', tmp_path / 'm.pth.tar', num_splits=2)
    out = tmp_path / 'cams'
    with caplog.at_level('INFO'):
        written = main([str(class_folders), '--checkpoint', str(tmp_path / 'm.pth.tar'), '--out', str(out),
                        '--img-size', '64', '--panel', '96', '--device', 'cpu', *_class_map(class_folders)])
    assert sorted(p.name for p in out.iterdir()) == ['cat_a_cam.png', 'dog_a_cam.png']
    assert len(written) == 2
    with Image.open(out / 'cat_a_cam.png') as im:
        width, height = im.size
    assert width == 4 * (96 + PANEL_PAD) + PANEL_PAD  # the image, FC1's group, FC2's group, all channels
    assert 96 + 2 * PANEL_PAD < height < 2 * 96
    # class folders give the ground truth: dog is class 1 of the sorted folders
    assert 'target 1: dog (ground truth)' in caplog.text

    # a single image has no ground truth: the prediction is the target, unless given
    main([str(class_folders / 'dog' / 'a.png'), '--checkpoint', str(tmp_path / 'm.pth.tar'), '--out', str(out),
          '--img-size', '64', '--panel', '64', '--target-class', '3', '--device', 'cpu'])
    with Image.open(out / 'a_cam.png') as im:
        assert im.size[0] == 4 * (64 + PANEL_PAD) + PANEL_PAD


def test_cli_errors(class_folders, tmp_path, capsys):
    model = _model('test_vit_ssm', img_size=32)
    _checkpoint(model, 'test_vit_ssm', tmp_path / 'vit.pth.tar')
    with pytest.raises(SystemExit) as e:
        main([str(class_folders), '--checkpoint', str(tmp_path / 'vit.pth.tar'), '--model-kwargs', 'img_size=32',
              '--img-size', '32', '--out', str(tmp_path / 'o'), '--device', 'cpu', *_class_map(class_folders)])
    assert e.value.code == 2 and 'needs a spatial feature map' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists() or not any((tmp_path / 'o').iterdir())

    _checkpoint(_model('test_resnet_ssm'), 'test_resnet_ssm', tmp_path / 'r.pth.tar')
    with pytest.raises(SystemExit):
        main([str(tmp_path / 'nothing'), '--checkpoint', str(tmp_path / 'r.pth.tar'), '--device', 'cpu'])
    assert 'neither an image file nor a folder' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(class_folders), '--checkpoint', str(tmp_path / 'r.pth.tar'), '--target-class', '7',
              '--img-size', '64', '--out', str(tmp_path / 'o'), '--device', 'cpu'])
    assert 'outside the model\'s 5 classes' in capsys.readouterr().err


def test_cli_grayscale_checkpoint(class_folders, tmp_path):
    """A 1-channel train.py checkpoint (`--input-size 1 H W`) gives the input size and normalization."""
    model = _model('test_resnet_ssm', in_chans=1)
    args = argparse.Namespace(model='test_resnet_ssm', num_classes=5, in_chans=None, input_size=[1, 64, 64],
                              img_size=None, mean=[0.3], std=[0.4], crop_pct=1.0, interpolation='bilinear',
                              model_kwargs={})
    torch.save({'state_dict': model.state_dict(), 'args': args}, tmp_path / 'gray.pth.tar')
    written = main([str(class_folders), '--checkpoint', str(tmp_path / 'gray.pth.tar'), '--out', str(tmp_path / 'o'),
                    '--panel', '64', '--device', 'cpu', *_class_map(class_folders)])
    assert len(written) == 2


def _fails(argv, capsys, match):
    return exits_clearly(main, argv, capsys, match)


def test_bad_inputs_and_outputs_leave_nothing_behind(class_folders, tmp_path, capsys):
    _checkpoint(_model('test_resnet_ssm'), 'test_resnet_ssm', tmp_path / 'r.pth.tar')
    common = ['--checkpoint', str(tmp_path / 'r.pth.tar'), '--img-size', '64', '--panel', '32', '--device', 'cpu']
    (tmp_path / 'afile').write_text('x')
    _fails([str(class_folders), '--out', str(tmp_path / 'afile')] + common, capsys,
           '--out .*afile cannot be used as a folder: it is a file')
    assert (tmp_path / 'afile').read_text() == 'x'

    (tmp_path / 'notes.png').write_text('not an image')
    _fails([str(tmp_path / 'notes.png'), '--out', str(tmp_path / 'o1')] + common, capsys,
           'notes.png is not an image that Pillow can read')
    assert not (tmp_path / 'o1').exists()

    _fails([str(class_folders), '--target-class', '5', '--out', str(tmp_path / 'o2')] + common, capsys,
           '--target-class 5 is outside the model\'s 5 classes \\(0..4\\)')
    assert not (tmp_path / 'o2').exists()


def test_existing_grids_are_kept_unless_overwrite(class_folders, tmp_path, capsys):
    _checkpoint(_model('test_resnet_ssm'), 'test_resnet_ssm', tmp_path / 'r.pth.tar')
    out = tmp_path / 'cams'
    out.mkdir()
    (out / 'cat_a_cam.png').write_bytes(b'mine')
    argv = [str(class_folders), '--checkpoint', str(tmp_path / 'r.pth.tar'), '--img-size', '64', '--panel', '32',
            '--out', str(out), '--device', 'cpu', *_class_map(class_folders)]
    _fails(argv, capsys, '1 file\\(s\\) already in .* are no grids of an earlier .*cat_a_cam.png.*--overwrite to '
                         'replace them')
    assert sorted(p.name for p in out.iterdir()) == ['cat_a_cam.png']
    assert (out / 'cat_a_cam.png').read_bytes() == b'mine'
    assert len(main(argv + ['--overwrite'])) == 2
    with Image.open(out / 'cat_a_cam.png') as im:
        assert im.size[0] == 6 * (32 + PANEL_PAD) + PANEL_PAD  # the image, 4 groups, all channels


def test_truncated_safetensors(class_folders, tmp_path, capsys):
    safetensors.torch.save_file(_model('test_resnet_ssm').state_dict(), tmp_path / 'm.safetensors')
    data = (tmp_path / 'm.safetensors').read_bytes()
    (tmp_path / 'm.safetensors').write_bytes(data[:len(data) // 3])
    _fails([str(class_folders), '--checkpoint', str(tmp_path / 'm.safetensors'), '--model', 'test_resnet_ssm',
            '--num-classes', '5', '--out', str(tmp_path / 'o'), '--device', 'cpu'], capsys,
           'it is truncated or not a safetensors file')
    assert not (tmp_path / 'o').exists()


def test_one_by_one_feature_map_gives_flat_maps(caplog):
    """At 28 px a stride-32 trunk leaves a 1x1 map: no spatial information, so flat maps, not rounding noise
    stretched to the full colour range."""
    model = _model('test_resnet_ssm')
    with caplog.at_level('WARNING'):
        cams, _, _ = grad_cams(model, torch.randn(2, 3, 28, 28), torch.tensor([1, 3]))
    assert cams.shape[-2:] == (28, 28) and torch.all(cams == 0)
    assert 'no spatial information, so they are drawn flat (one colour)' in caplog.text


def test_cam_checks_the_data_as_evaluate_does(class_folders, tmp_path, capsys):
    """The classes, stray images and symlink loops of the input folder are checked before any grid is written, by
    the check timm_ssm.evaluate uses (`runs.create_run_dataset`)."""
    _checkpoint(_model('test_resnet_ssm'), 'test_resnet_ssm', tmp_path / 'r.pth.tar')
    common = ['--checkpoint', str(tmp_path / 'r.pth.tar'), '--img-size', '64', '--panel', '32', '--device', 'cpu',
              '--out', str(tmp_path / 'o')]
    _fails([str(class_folders)] + common, capsys,
           'images has 2 classes \\[cat, dog\\], but the model has 5.*--class-map')
    Image.new('RGB', (40, 40)).save(class_folders / 'thumbnail.png')
    _fails([str(class_folders)] + common + _class_map(class_folders), capsys,
           '1 image\\(s\\) lie beside the class folders of .*images \\(such as .*thumbnail.png\\)')
    (class_folders / 'thumbnail.png').unlink()
    os.symlink('..', class_folders / 'cat' / 'loop')
    _fails([str(class_folders)] + common + _class_map(class_folders), capsys, 'cat/loop is a symlink loop')
    (class_folders / 'cat' / 'loop').unlink()
    (tmp_path / 'big.txt').write_text('\n'.join(f'c{i}' for i in range(9)) + '\ncat\ndog\n')
    _fails([str(class_folders)] + common + ['--class-map', str(tmp_path / 'big.txt')], capsys,
           'maps the data to class indices 9..10, but the model has 5 classes')
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('option,message', [
    (['--alpha', '5'], 'argument --alpha: 5 is outside \\[0, 1\\]'),
    (['--panel', '100000'], 'argument --panel: 100000 is outside \\[16, 2048\\]'),
    (['--std', '0'], 'argument --std: 0 is outside'),
    (['--crop-pct', '0'], 'argument --crop-pct: 0 is outside'),
    (['--img-size', '0'], 'argument --img-size: 0 is outside'),
    (['--num-images', '0'], 'argument --num-images: 0 is outside'),
    (['--target-class', '-1'], 'argument --target-class: -1 is outside'),
])
def test_option_values_out_of_range_are_refused_by_the_parser(option, message, capsys):
    _fails(['x.png', '--model', 'test_resnet_ssm'] + option, capsys, message)


def test_grid_names_are_unique_and_own_grids_are_replaced(tmp_path):
    """`a/b_c.png`, `a/b_c.jpg` and `a_b/c.png` flatten to one name: each gets its own grid. A second run into the
    same folder replaces the grids of the first (this tool's own, marked in the PNG) without --overwrite."""
    rng = np.random.default_rng(0)
    for name in ('a/b_c.png', 'a/b_c.jpg', 'a_b/c.png'):
        (tmp_path / 'in' / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / 'in' / name)
    (tmp_path / 'map.txt').write_text('a\na_b\n')
    _checkpoint(_model('test_resnet_ssm'), 'test_resnet_ssm', tmp_path / 'r.pth.tar')
    argv = [str(tmp_path / 'in'), '--checkpoint', str(tmp_path / 'r.pth.tar'), '--img-size', '64', '--panel', '32',
            '--device', 'cpu', '--out', str(tmp_path / 'o'), '--class-map', str(tmp_path / 'map.txt')]
    written = main(argv)
    names = sorted(p.name for p in (tmp_path / 'o').iterdir())
    assert len(written) == len(names) == 3 and len({p for p, _, _ in written}) == 3
    assert names == ['a_b_c_jpg_cam.png', 'a_b_c_png_2_cam.png', 'a_b_c_png_cam.png']
    assert [t for _, t, _ in written] == [0, 0, 1]  # the class map's indices
    assert len(main(argv)) == 3 and sorted(p.name for p in (tmp_path / 'o').iterdir()) == names


def test_full_disk_leaves_no_partial_grid(class_folders, tmp_path):
    _checkpoint(_model('test_resnet_ssm'), 'test_resnet_ssm', tmp_path / 'r.pth.tar')
    script = ('import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
              'from timm_ssm.cam import main\n'
              'resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))\nmain(sys.argv[1:])\n')
    argv = [str(class_folders), '--checkpoint', str(tmp_path / 'r.pth.tar'), '--img-size', '64', '--panel', '32',
            '--device', 'cpu', '--out', str(tmp_path / 'o'), *_class_map(class_folders)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', script, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert 'Cannot write' in proc.stderr and 'No partial file is left' in proc.stderr
    assert 'the 0 grid(s) written before it are kept' in proc.stderr
    assert list((tmp_path / 'o').iterdir()) == []


def _run_at_28px(tmp_path, **model_kwargs):
    """A train.py checkpoint of test_resnet_ssm trained at 28 px, as the default run's."""
    model = _model('test_resnet_ssm', **model_kwargs)
    args = argparse.Namespace(model='test_resnet_ssm', num_classes=5, in_chans=None, input_size=[3, 28, 28],
                              img_size=None, mean=[0.3] * 3, std=[0.4] * 3, crop_pct=1.0, interpolation='bilinear',
                              model_kwargs=model_kwargs)
    torch.save({'state_dict': model.state_dict(), 'args': args}, tmp_path / 'r28.pth.tar')
    return tmp_path / 'r28.pth.tar'


def test_one_by_one_map_is_refused_with_what_to_do(class_folders, tmp_path, capsys):
    """The default run's model at its 28 px: a 1x1 map, every heat map flat; refused before any grid."""
    checkpoint = _run_at_28px(tmp_path)
    err = _fails([str(class_folders), '--checkpoint', str(checkpoint), '--out', str(tmp_path / 'o'),
                  '--device', 'cpu', *_class_map(class_folders)], capsys,
                 'the last feature map of the model is 1x1 at 28 px')
    assert '--model-kwargs output_stride=8' in err
    assert not (tmp_path / 'o').exists() or not any((tmp_path / 'o').iterdir())


def test_image_size_other_than_the_runs_is_warned(class_folders, tmp_path, caplog):
    """Trained at 28 px with output_stride=8 (a 4x4 map): maps at 28 px without a word, at 64 px with a warning
    that the model may be wrong at that size."""
    checkpoint = _run_at_28px(tmp_path, output_stride=8)
    common = [str(class_folders), '--checkpoint', str(checkpoint), '--panel', '32', '--device', 'cpu',
              *_class_map(class_folders)]
    with caplog.at_level('WARNING'):
        assert len(main(common + ['--out', str(tmp_path / 'a')])) == 2
    assert 'px' not in caplog.text
    caplog.clear()
    with caplog.at_level('WARNING'):
        assert len(main(common + ['--out', str(tmp_path / 'b'), '--img-size', '64'])) == 2
    assert 'the maps are drawn at 64x64 px, but test_resnet_ssm was trained and evaluated at 28x28 px' in caplog.text
