"""One road from a train.py run to its model and data (`timm_ssm.runs`), and file safety (`timm_ssm.files`)."""
import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import timm
import timm_ssm  # noqa: F401  registers the *_ssm models
from timm_ssm import cam, evaluate, launch
from timm_ssm.files import RunError, atomic_write, check_output
from timm_ssm.runs import create_run_model, load_run, read_checkpoint, run_data_config, split_folder

TIMM_ROOT = os.environ.get('TIMM_ROOT')


@pytest.fixture(scope='module')
def shapes(tmp_path_factory) -> Path:
    """An image folder (train/, validation/, a folder per class) of shapes drawn on noise, hard enough that one
    epoch gives a top-1 between chance and 100 %."""
    root = tmp_path_factory.mktemp('shapes')
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    for split in ('train', 'validation'):
        for name in ('circle', 'square', 'stripe'):
            (root / split / name).mkdir(parents=True)
            for i in range(12):
                img = rng.integers(0, 160, (40, 40, 3), dtype=np.uint8)
                k = int(rng.integers(0, 8))
                mask = {'circle': (yy - 20) ** 2 + (xx - 20) ** 2 < (6 + k) ** 2,
                        'square': (abs(yy - 20) < 8 + k) & (abs(xx - 20) < 8 + k), 'stripe': xx % (4 + k % 3) == 0}
                img[mask[name]] = 200
                Image.fromarray(img).save(root / split / name / f'{name}{i}.png')
    return root


@pytest.mark.skipif(not TIMM_ROOT, reason='needs timm\'s train.py and validate.py: set TIMM_ROOT')
def test_evaluate_and_cam_measure_what_validate_py_measures(shapes, tmp_path):
    """One real train.py run with every option that shapes the model (global pool, BatchNorm eps, model kwargs,
    1 input channel, EMA): evaluate's top-1 is validate.py's and train.py's own, and cam's predictions score it."""
    common = ['--model', 'test_efficientnet_ssm', '--num-classes', '3', '--img-size', '64', '--in-chans', '1',
              '--gp', 'max', '--device', 'cpu', '--workers', '0', '--data-dir', str(shapes)]
    launch.main(['train.py', *common, '--bn-eps', '0.1', '--model-kwargs', 'num_splits=2', '--model-ema',
                 '--model-ema-decay', '0.5', '--epochs', '1', '-b', '6', '--opt', 'sgd', '--lr', '0.05',
                 '--warmup-epochs', '0', '--no-aug', '--output', str(tmp_path), '--experiment', 'run'])
    run = tmp_path / 'run'
    with open(run / 'summary.csv') as f:
        trained = float(list(csv.DictReader(f))[-1]['eval_top1'])  # train.py evaluates the EMA weights with EMA
    launch.main(['validate.py', *common, '--model-kwargs', 'bn_eps=0.1', 'num_splits=2', '--use-ema', '--checkpoint',
                 str(run / 'last.pth.tar'), '--results-file', str(tmp_path / 'v.json'), '--results-format', 'json'])
    validated = json.loads((tmp_path / 'v.json').read_text())['top1']

    result = evaluate.main(['--checkpoint', str(run), '--use-ema', '--data-dir', str(shapes), '-j', '0', '--device',
                            'cpu', '--no-progress'])
    assert result['models'][0]['top1'] == validated == pytest.approx(trained, abs=1e-3)
    assert result['models'][0]['num_splits'] == 2 and result['data']['input_size'] == [1, 64, 64]
    grids = cam.main([str(shapes / 'validation'), '--checkpoint', str(run), '--use-ema', '--num-images', '36',
                      '--out', str(tmp_path / 'cam'), '--panel', '16', '--device', 'cpu'])
    assert 100 * np.mean([t == p for _, t, p in grids]) == pytest.approx(validated, abs=1e-3)


def _checkpoint(path: Path, model_name='test_efficientnet_ssm', **args):
    kwargs = dict(num_classes=3, global_pool='max', in_chans=1, bn_eps=0.1, bn_momentum=0.5, num_splits=2)
    model = timm.create_model(model_name, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.05, 0.2)  # a BatchNorm eps of 0.1 against 1e-5 is seen in the output
    args = dict(model=model_name, num_classes=3, gp='max', in_chans=1, bn_eps=0.1, bn_momentum=0.5,
                model_kwargs=dict(num_splits=2), **args)
    torch.save({'state_dict': model.state_dict(), 'epoch': 4, 'args': argparse.Namespace(**args)}, path)
    return model.eval()


def test_run_arguments_rebuild_the_model_and_the_command_line_goes_over_them(tmp_path):
    model = _checkpoint(tmp_path / 'c.pth.tar', img_size=48, crop_pct=1.0, mean=[0.5], std=[0.25],
                        interpolation='bilinear')
    run = load_run(tmp_path / 'c.pth.tar')
    assert run.epoch == 4 and not run.has_ema and run.trained
    rebuilt = create_run_model(run)
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(rebuilt(x), model(x))
    plain = timm.create_model('test_efficientnet_ssm', num_classes=3, in_chans=1, num_splits=2)
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.eval()(x), model(x), atol=1e-3)  # the options change the output
    config = run_data_config(run, rebuilt)
    assert (config['input_size'], config['crop_pct'], config['mean'], config['interpolation']) == (
        (1, 48, 48), 1.0, (0.5,), 'bilinear')
    config = run_data_config(run, rebuilt, dict(img_size=64, crop_pct=None, interpolation=''))
    assert (config['input_size'], config['crop_pct'], config['interpolation']) == ((1, 64, 64), 1.0, 'bilinear')
    assert create_run_model(run, overrides=dict(global_pool='avg')).trunk.global_pool.pool_type == 'avg'


def test_clear_errors(tmp_path):
    with pytest.raises(RunError, match='does not exist: give a train.py output folder'):
        load_run(tmp_path / 'nothing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(RunError, match='No model_best.pth.tar or last.pth.tar in .*: give a train.py output folder'):
        load_run(tmp_path / 'empty')
    (tmp_path / 'cut.pth.tar').write_bytes(b'PK\x03\x04broken')
    with pytest.raises(RunError, match='Cannot read .*cut.pth.tar as a checkpoint of tensors.*: give a whole copy'):
        load_run(tmp_path / 'cut.pth.tar')
    torch.save({'state_dict': {}, 'thing': Path('x')}, tmp_path / 'pickled.pth.tar')
    with pytest.raises(RunError, match='weights_only=True \\(UnpicklingError: Unsupported global: GLOBAL pathlib'):
        load_run(tmp_path / 'pickled.pth.tar')
    _checkpoint(tmp_path / 'c.pth.tar')
    run = load_run(tmp_path / 'c.pth.tar')
    with pytest.raises(RunError, match='has no EMA weights .*leave out --use-ema'):
        create_run_model(run, use_ema=True)
    with pytest.raises(RunError, match='do not fit test_efficientnet_ssm.*num_splits=4'):
        create_run_model(run, overrides=dict(num_splits=4))
    torch.save(timm.create_model('test_resnet_ssm').state_dict(), tmp_path / 'bare.pth')
    with pytest.raises(RunError, match='no train.py arguments.*give its model name'):
        create_run_model(load_run(tmp_path / 'bare.pth'))
    safetensors.torch.save_file(timm.create_model('test_resnet_ssm').state_dict(), tmp_path / 'cut.safetensors')
    (tmp_path / 'cut.safetensors').write_bytes((tmp_path / 'cut.safetensors').read_bytes()[:5000])
    with pytest.raises(RunError, match='cut.safetensors do not fit .*, or the file is damaged: .*a whole copy'):
        create_run_model(load_run(tmp_path / 'cut.safetensors'), model_name='test_resnet_ssm')


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_checkpoint_reader_fuzz(tmp_path):
    """Random bytes, truncations and byte flips of a train.py-style `.pth.tar` (zip and legacy format): the reader
    returns the checkpoint or raises RunError, never another exception (a `.safetensors` file: test_clear_errors)."""
    rng = np.random.default_rng(16)
    state = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()
    checkpoint = {'epoch': 3, 'state_dict': state, 'args': argparse.Namespace(model='m', mean=[0.5] * 3)}
    torch.save(checkpoint, tmp_path / 'zip.pth.tar')
    torch.save(checkpoint, tmp_path / 'legacy.pth.tar', _use_new_zipfile_serialization=False)
    cases = [magic + rng.bytes(int(rng.integers(0, 2000)))
             for magic in (b'', b'PK\x03\x04', b'\x80\x02', b'\x80\x04\x95') for _ in range(25)]
    for name in ('zip.pth.tar', 'legacy.pth.tar'):
        data = (tmp_path / name).read_bytes()
        for _ in range(40):
            cut, flipped = data[:int(rng.integers(0, len(data)))], bytearray(data)
            for i in rng.integers(0, len(data), int(rng.integers(1, 5))):
                flipped[i] ^= int(rng.integers(1, 256))
            cases += [cut, bytes(flipped)]
    refused = 0
    for i, data in enumerate(cases):
        path = tmp_path / f'case{i}.pth.tar'
        path.write_bytes(data)
        try:
            read_checkpoint(path)
        except RunError as e:
            assert str(path) in str(e)
            refused += 1
        path.unlink()
    assert len(cases) == 260 and refused > len(cases) // 2


def test_split_names_resolve_to_the_folder_timm_reads(tmp_path):
    for split in ('train', 'validation', 'test'):
        (tmp_path / 'data' / split / 'a').mkdir(parents=True)
    data = tmp_path / 'data'
    assert split_folder(data, 'train/') == data / 'train'
    assert split_folder(str(data) + '/', 'val') == split_folder(data, 'validation') == data / 'validation'
    assert split_folder(data, None) == data and split_folder(data, 'x', 'torch/cifar10') is None
    with pytest.raises(RunError, match="--split '': .*data has no such split folder, and reading it whole would mix "
                                       "its splits test, train, validation: give --split validation"):
        split_folder(data, '')
    with pytest.raises(RunError, match='--split .testing.: .* give --split validation'):
        split_folder(data, 'testing')
    assert split_folder(data / 'train', 'validation') == data / 'train'  # no split folders: read whole, as timm
    with pytest.raises(RunError, match='--data-dir .*nowhere does not exist'):
        split_folder(tmp_path / 'nowhere', 'validation')


def test_outputs_are_regular_files_written_whole(tmp_path):
    path = tmp_path / 'a' / 'f.txt'
    atomic_write(path, lambda f: f.write('one'), mode='w')
    with pytest.raises(ValueError):
        atomic_write(path, lambda f: f.write('two'), mode='w', check=lambda p: (_ for _ in ()).throw(ValueError()))
    assert path.read_text() == 'one' and os.listdir(path.parent) == ['f.txt']
    os.mkfifo(tmp_path / 'fifo')  # /dev/zero: tests/test_evaluate.py
    with pytest.raises(RunError, match='fifo is not a regular file'):
        check_output(tmp_path / 'fifo', '--json', overwrite=True)
    with pytest.raises(RunError, match='--json .*f.txt already exists: give another --json, or --overwrite'):
        check_output(path, '--json')
    assert check_output(path, '--json', overwrite=True) == path
    os.link(path, tmp_path / 'link.txt')
    with pytest.raises(RunError, match='is an input of this run'):
        check_output(tmp_path / 'link.txt', '--json', overwrite=True, inputs=[path])
    with pytest.raises(RunError, match='is a folder'):
        check_output(tmp_path, '--json')
