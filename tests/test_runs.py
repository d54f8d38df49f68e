"""One road from a train.py run to its model (`timm_ssm.runs`): real train.py runs with the options that shape the
model, measured by timm's validate.py, `timm_ssm.evaluate`, `timm_ssm.cam` and the Hub export.

The runs need timm's train.py and validate.py: set TIMM_ROOT to a pytorch-image-models checkout."""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch
from PIL import Image

import timm
from timm.models import load_checkpoint

import timm_ssm  # noqa: F401  registers the *_ssm models
from timm_ssm import cam, evaluate, hub
from timm_ssm.runs import RunError, atomic_write, check_data_dir, create_run_model, load_run, read_checkpoint, \
    run_data_config

REPO = Path(__file__).resolve().parent.parent
TIMM_ROOT = os.environ.get('TIMM_ROOT')
needs_timm_scripts = pytest.mark.skipif(
    not TIMM_ROOT, reason='needs timm\'s train.py and validate.py: set TIMM_ROOT to a pytorch-image-models checkout')

CLASSES = ('circle', 'square', 'stripe')
COMMON = ['--num-classes', '3', '--img-size', '64', '--device', 'cpu', '--workers', '0']  # 64: a 2x2 map to pool
# name: (train.py options, validate.py options for the same model, create_model arguments of that model)
RUNS = {
    'gp_max': (['--model', 'test_resnet_ssm', '--gp', 'max'], ['--model', 'test_resnet_ssm', '--gp', 'max'],
               dict(global_pool='max')),
    'bn_eps': (['--model', 'test_efficientnet_ssm', '--bn-eps', '0.1'],  # validate.py has no --bn-eps option
               ['--model', 'test_efficientnet_ssm', '--model-kwargs', 'bn_eps=0.1'], dict(bn_eps=0.1)),
    'num_splits': (['--model', 'test_resnet_ssm', '--model-kwargs', 'num_splits=2'],
                   ['--model', 'test_resnet_ssm', '--model-kwargs', 'num_splits=2'], dict(num_splits=2)),
    'in_chans': (['--model', 'test_resnet_ssm', '--in-chans', '1'], ['--model', 'test_resnet_ssm', '--in-chans', '1'],
                 dict(in_chans=1)),
    'model_ema': (['--model', 'test_resnet_ssm', '--model-ema', '--model-ema-decay', '0.9'],
                  ['--model', 'test_resnet_ssm', '--use-ema'], dict()),
}


def _run(cmd, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


@pytest.fixture(scope='module')
def shapes(tmp_path_factory) -> Path:
    """An image folder (train/, validation/, a folder per class) of shapes drawn on noise, hard enough that two
    epochs give a top-1 between chance and 100 %, which other model options change."""
    root = tmp_path_factory.mktemp('shapes')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(16):
                img = rng.integers(0, 160, (40, 40, 3), dtype=np.uint8)
                k = int(rng.integers(0, 8))
                if name == 'circle':
                    yy, xx = np.mgrid[:40, :40]
                    img[(yy - 20) ** 2 + (xx - 20) ** 2 < (6 + k) ** 2] = 200
                elif name == 'square':
                    img[12 - k:28 + k, 12 - k:28 + k] = 200
                else:
                    img[:, k % 4::4 + k % 3] = 200
                Image.fromarray(img).save(root / split / name / f'{name}{i}.png')
    return root


@needs_timm_scripts
@pytest.mark.parametrize('case', list(RUNS))
def test_tools_measure_the_model_train_py_trained(case, shapes, tmp_path, capsys):
    """On a checkpoint of a real train.py run: evaluate's top-1 equals validate.py's and train.py's own, cam's
    predictions score the same, and the export's logits equal those of the model built by hand from the options."""
    train_opts, validate_opts, model_args = RUNS[case]
    _run([sys.executable, '-m', 'timm_ssm.launch', 'train.py', '--data-dir', str(shapes), *train_opts, *COMMON,
          '--epochs', '2', '-b', '4', '--opt', 'sgd', '--lr', '0.03', '--warmup-epochs', '0', '--no-aug',
          '--output', str(tmp_path), '--experiment', 'run'], tmp_path)
    run_dir, ema = tmp_path / 'run', case == 'model_ema'
    checkpoint = run_dir / 'last.pth.tar'
    with open(run_dir / 'summary.csv') as f:
        trained = float(list(csv.DictReader(f))[-1]['eval_top1'])  # train.py's own evaluation (EMA's with EMA)

    validated = tmp_path / 'validate.json'
    _run([sys.executable, '-m', 'timm_ssm.launch', 'validate.py', '--data-dir', str(shapes), *validate_opts, *COMMON,
          '--checkpoint', str(checkpoint), '-b', '16', '--results-file', str(validated), '--results-format', 'json'],
         tmp_path)
    validated = json.loads(validated.read_text())['top1']

    ema_opt = ['--use-ema'] if ema else []
    result = evaluate.main(['--checkpoint', str(checkpoint), '--data-dir', str(shapes), '--workers', '0',
                            '--device', 'cpu', '--no-progress', *ema_opt])['models'][0]
    assert result['top1'] == pytest.approx(validated, abs=1e-3) == pytest.approx(trained, abs=1e-3)

    cams = cam.main([str(shapes / 'validation'), '--checkpoint', str(checkpoint), '--num-images', '100',
                     '--out', str(tmp_path / 'cam'), '--panel', '32', '--device', 'cpu', *ema_opt])
    assert 100 * np.mean([target == pred for _, target, pred in cams]) == pytest.approx(result['top1'], abs=1e-3)

    reference = timm.create_model(train_opts[1], num_classes=3, **model_args)
    load_checkpoint(reference, str(checkpoint), use_ema=ema)
    reference.eval()
    assert hub.main([str(run_dir), '--repo-id', 'test/run', '--checkpoint', 'last.pth.tar', '--dry-run',
                     '--out', str(tmp_path / 'export'), *(['--ema'] if ema else [])]) == 0
    exported_top1 = evaluate.main(['--model', f'local-dir:{tmp_path / "export"}', '--data-dir', str(shapes),
                                   '--workers', '0', '--device', 'cpu', '--no-progress'])['models'][0]['top1']
    assert exported_top1 == result['top1']  # the export's config.json holds the run's data config
    exported = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True).eval()
    x = torch.randn(2, model_args.get('in_chans', 3), 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), reference(x))
        if case in ('gp_max', 'bn_eps', 'model_ema'):  # the option changes the model: dropping it is seen
            plain = timm.create_model(train_opts[1], num_classes=3)
            load_checkpoint(plain, str(checkpoint), use_ema=False)
            assert not torch.allclose(plain.eval()(x), reference(x), atol=1e-3)
    print(f'{case}: train.py {trained:.2f}, validate.py {validated:.2f}, evaluate {result["top1"]:.2f}, '
          f'cam {100 * np.mean([t == p for _, t, p in cams]):.2f}, export {exported_top1:.2f}')


def _checkpoint(path: Path, **args):
    model = timm.create_model('test_resnet_ssm', num_classes=3, global_pool='max')
    torch.save({'state_dict': model.state_dict(), 'epoch': 4, 'args': argparse.Namespace(**args)}, path)
    return model


def test_run_arguments_rebuild_the_model_and_the_command_line_goes_over_them(tmp_path):
    model = _checkpoint(tmp_path / 'c.pth.tar', model='test_resnet_ssm', num_classes=3, gp='max', input_size=None,
                        img_size=48, crop_pct=1.0, mean=[0.5] * 3, std=[0.25] * 3, interpolation='bilinear',
                        model_kwargs={})
    run = load_run(tmp_path / 'c.pth.tar')
    assert run.epoch == 4 and not run.has_ema and run.trained
    rebuilt = create_run_model(run)
    assert rebuilt.trunk.global_pool.pool_type == 'max'
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(rebuilt(x), model.eval()(x))
    config = run_data_config(run, rebuilt)
    assert (config['input_size'], config['crop_pct'], config['mean'], config['interpolation']) == (
        (3, 48, 48), 1.0, (0.5,) * 3, 'bilinear')
    config = run_data_config(run, rebuilt, dict(img_size=64, crop_pct=None, interpolation=''))
    assert (config['input_size'], config['crop_pct'], config['interpolation']) == ((3, 64, 64), 1.0, 'bilinear')
    assert create_run_model(run, overrides=dict(global_pool='avg')).trunk.global_pool.pool_type == 'avg'


def test_clear_errors(tmp_path):
    with pytest.raises(RunError, match='does not exist: give a train.py output folder'):
        load_run(tmp_path / 'nothing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(RunError, match='No model_best.pth.tar or last.pth.tar in'):
        load_run(tmp_path / 'empty')
    (tmp_path / 'cut.pth.tar').write_bytes(b'PK\x03\x04broken')
    with pytest.raises(RunError, match='truncated or not a PyTorch checkpoint'):
        load_run(tmp_path / 'cut.pth.tar')
    torch.save({'state_dict': {}, 'thing': Path('x')}, tmp_path / 'pickled.pth.tar')
    with pytest.raises(RunError, match='pickled Python objects'):
        load_run(tmp_path / 'pickled.pth.tar')
    _checkpoint(tmp_path / 'c.pth.tar', model='test_resnet_ssm', num_classes=3, gp='max', model_kwargs={})
    run = load_run(tmp_path / 'c.pth.tar')
    with pytest.raises(RunError, match='has no EMA weights'):
        create_run_model(run, use_ema=True)
    with pytest.raises(RunError, match='do not fit test_resnet_ssm.*num_splits=2'):
        create_run_model(run, overrides=dict(num_splits=2))
    torch.save(timm.create_model('test_resnet_ssm').state_dict(), tmp_path / 'bare.pth')
    with pytest.raises(RunError, match='no train.py arguments.*give its model name'):
        create_run_model(load_run(tmp_path / 'bare.pth'))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / 'a' / 'f.txt'
    atomic_write(path, lambda f: f.write('one'), mode='w')
    with pytest.raises(ValueError):
        atomic_write(path, lambda f: f.write('two'), mode='w', check=lambda p: (_ for _ in ()).throw(ValueError()))
    assert path.read_text() == 'one' and os.listdir(path.parent) == ['f.txt']
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def _fuzz_cases(path: Path, rng: np.random.Generator, count: int):
    """Truncations and 1-4 byte flips of a real file, `count` of each."""
    data = path.read_bytes()
    for _ in range(count):
        yield data[:int(rng.integers(0, len(data)))]
    for _ in range(count):
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), int(rng.integers(1, 5))):
            flipped[i] ^= int(rng.integers(1, 256))
        yield bytes(flipped)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_checkpoint_reader_fuzz(tmp_path):
    """Random bytes, truncations and byte flips of a real train.py-style `.pth.tar` (zip and legacy format) and a
    `.safetensors` file: the reader returns the checkpoint or raises RunError, never another exception."""
    rng = np.random.default_rng(16)
    state = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 3)).state_dict()
    args = argparse.Namespace(model='test_resnet_ssm', num_classes=3, model_kwargs={'num_splits': 2}, mean=[0.5] * 3)
    checkpoint = {'epoch': 3, 'arch': 'test_resnet_ssm', 'state_dict': state, 'state_dict_ema': state, 'args': args}
    torch.save(checkpoint, tmp_path / 'real.pth.tar')
    torch.save(checkpoint, tmp_path / 'legacy.pth.tar', _use_new_zipfile_serialization=False)
    safetensors_torch.save_file(state, tmp_path / 'real.safetensors')
    cases = [('.pth.tar', rng.bytes(int(rng.integers(0, 3000)))) for _ in range(60)]
    cases += [('.pth.tar', magic + rng.bytes(int(rng.integers(0, 2000))))
              for magic in (b'PK\x03\x04', b'\x80\x02', b'\x80\x04\x95') for _ in range(30)]
    cases += [('.safetensors', rng.bytes(int(rng.integers(0, 2000)))) for _ in range(20)]
    for name in ('real', 'legacy'):
        cases += [('.pth.tar', c) for c in _fuzz_cases(tmp_path / f'{name}.pth.tar', rng, 50)]
    cases += [('.safetensors', c) for c in _fuzz_cases(tmp_path / 'real.safetensors', rng, 50)]
    outcomes = {'read': 0, 'refused': 0}
    for i, (suffix, data) in enumerate(cases):
        path = tmp_path / f'case{i}{suffix}'
        path.write_bytes(data)
        try:
            read_checkpoint(path)
            outcomes['read'] += 1
        except RunError as e:
            assert str(path) in str(e)
            outcomes['refused'] += 1
        path.unlink()
    assert sum(outcomes.values()) == len(cases) >= 400 and outcomes['refused'] > len(cases) // 2, outcomes


def test_data_check_refuses_an_empty_folder_and_loops(tmp_path):
    """The check train_timm.sh, evaluate and cam share (`runs.check_data_dir`)."""
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(RunError, match='--data-dir .*empty holds no images'):
        check_data_dir(tmp_path / 'empty')
    (tmp_path / 'data' / 'train' / 'a').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(tmp_path / 'data' / 'train' / 'a' / 'x.png')
    assert check_data_dir(tmp_path / 'data') == tmp_path / 'data'
    assert check_data_dir(tmp_path / 'data', split='training') == tmp_path / 'data' / 'train'  # timm's synonyms
    os.symlink(tmp_path / 'data', tmp_path / 'data' / 'train' / 'a' / 'up')
    with pytest.raises(RunError, match='a/up is a symlink loop'):
        check_data_dir(tmp_path / 'data')


@needs_timm_scripts
def test_train_timm_refuses_an_empty_data_folder(tmp_path, capsys):
    from timm_ssm import train_timm
    (tmp_path / 'empty').mkdir()
    assert train_timm.main(['--data-dir', str(tmp_path / 'empty'), '--device', 'cpu']) == 2
    assert 'holds no images' in capsys.readouterr().err


def _weights(path: Path, ema: bool = False) -> dict:
    model = timm.create_model('test_resnet_ssm', num_classes=3)
    load_checkpoint(model, str(path), use_ema=ema)
    return model.state_dict()


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


@needs_timm_scripts
def test_resume_with_several_batches_per_epoch(shapes, tmp_path):
    """What docs/training.md says of `--resume` with 6 batches per epoch: the resumed run continues at the next epoch
    with the schedule's learning rate, the optimizer's state (AdamW's step count), the BatchNorm counters and the EMA
    weights of the checkpoint; it is not bit-identical to an uninterrupted run (the data order differs)."""
    train = [sys.executable, '-m', 'timm_ssm.launch', 'train.py', '--data-dir', str(shapes),
             '--model', 'test_resnet_ssm', '--num-classes', '3', '--img-size', '32', '--device', 'cpu',
             '--workers', '0', '-b', '8', '--no-aug',
             '--opt', 'adamw', '--lr', '0.01', '--sched', 'step', '--decay-epochs', '1', '--decay-rate', '0.1',
             '--warmup-epochs', '0', '--model-ema', '--model-ema-decay', '0.9999', '--output', str(tmp_path)]
    _run(train + ['--epochs', '1', '--experiment', 'first'], tmp_path)
    _run(train + ['--epochs', '2', '--experiment', 'resumed', '--resume', str(tmp_path / 'first' / 'last.pth.tar')],
         tmp_path)
    _run(train + ['--epochs', '2', '--experiment', 'straight'], tmp_path)
    first, resumed, straight = (tmp_path / name / 'last.pth.tar' for name in ('first', 'resumed', 'straight'))
    batches = 3 * 16 // 8

    with open(tmp_path / 'resumed' / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / 'straight' / 'summary.csv') as f:
        straight_rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['1']
    assert float(rows[0]['lr']) == pytest.approx(0.001) == pytest.approx(float(straight_rows[1]['lr']))
    raw = torch.load(resumed, map_location='cpu', weights_only=False)
    steps = {int(s['step']) for s in raw['optimizer']['state'].values()}
    assert raw['epoch'] == 1 and steps == {2 * batches}  # AdamW's state went on from the first epoch's
    weights = _weights(resumed)
    assert weights['head.norm.num_batches_tracked'] == 2 * batches
    # EMA with decay 0.9999 barely moves in 6 steps: resumed, it stays at the first run's EMA, far from its weights
    ema, first_ema, first_weights = _weights(resumed, ema=True), _weights(first, ema=True), _weights(first)
    assert _max_difference(ema, first_ema) < 0.01 * _max_difference(first_ema, first_weights)
    difference = _max_difference(weights, _weights(straight))
    assert difference > 1e-3  # not bit-identical: the resumed epoch sees the batches in another order
    print(f'max weight difference, resumed vs uninterrupted: {difference:.3g}')
    docs = ' '.join((REPO / 'docs' / 'training.md').read_text().split())
    assert 'A resumed run is not bit-identical to an uninterrupted one' in docs  # what the docs say is what we see
