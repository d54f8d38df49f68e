"""benchmarks/fashion_mnist_evidence.py and benchmarks/train_individual.py: the variants are the paper's heads,
the statistics are right, finished runs are kept only when trained with the same arguments, the individual loop
trains as train.py does but for the loss, and the whole benchmark runs, resumes and reports on a tiny data set
(the end-to-end tests need timm's train.py: TIMM_ROOT)."""
import ast
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import timm_ssm  # noqa: F401  registers test_resnet_ssm

REPO = Path(__file__).resolve().parent.parent
TIMM_ROOT = os.environ.get('TIMM_ROOT')
needs_train_py = pytest.mark.skipif(
    not TIMM_ROOT, reason='needs timm\'s train.py: set TIMM_ROOT to a pytorch-image-models checkout')


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def evidence():
    return _load('fashion_mnist_evidence')


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray):
    (folder / f'{prefix}-images-idx3-ubyte').write_bytes(struct.pack('>IIII', 2051, len(images), 28, 28) +
                                                        images.astype(np.uint8).tobytes())
    (folder / f'{prefix}-labels-idx1-ubyte').write_bytes(struct.pack('>II', 2049, len(labels)) +
                                                        labels.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def tiny_fashion_mnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST root in torchvision's IDX layout: 96 train and 40 test images, a bright bar per class."""
    root = tmp_path_factory.mktemp('fm')
    raw = root / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (('train', 96), ('t10k', 40)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 40, (count, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c:2 * c + 4] = 220
        _write_idx(raw, prefix, images, labels)
    return root


def _env(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')  # train.py on one CPU process, also on a host with GPUs
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))


def test_sign_test_exact(evidence):
    assert evidence.sign_test([1.0] * 5) == pytest.approx(2 / 32)
    assert evidence.sign_test([0.3, 0.1, 0.2]) == pytest.approx(0.25)  # 3 seeds: never below 0.25
    assert evidence.sign_test([1.0, -1.0]) == 1.0
    assert evidence.sign_test([1.0] * 6 + [-1.0]) == pytest.approx(2 * (1 + 7) / 128)
    assert evidence.sign_test([0.0, 0.0, 1.0]) == 1.0  # ties dropped: one win of one


def test_paired_t_against_closed_forms(evidence):
    t, df, p = evidence.paired_t([1.0, 2.0, 3.0])  # mean 2, sd 1: t = 2 sqrt(3), df 2
    assert (t, df) == (pytest.approx(2 * math.sqrt(3)), 2)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-6)  # Student t, 2 df
    t, df, p = evidence.paired_t([0.5, -0.1])
    assert df == 1 and p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-6)  # Cauchy
    assert evidence.paired_t([-0.2, -0.2, -0.2])[2] == 0.0
    assert evidence.paired_t([0.0, 0.0])[2] == 1.0


@pytest.mark.parametrize('variant,widths,norm', [
    ('baseline', None, None),
    ('ssm', [24, 48, 72, 96], 24 + 48 + 72),
    ('ssm_individual', [24, 48, 72, 96], 24 + 48 + 72),
    ('ssm_norm_all', [24, 48, 72, 96], 24 + 48 + 72 + 96),
    ('2fc', [96, 96], 0),
    ('3fc', [96, 96, 96], 0),
])
def test_variants_are_the_papers_heads(evidence, variant, widths, norm):
    args = evidence.resolve_defaults(evidence.parser.parse_args(['--model', 'test_resnet', '--device', 'cpu']))
    name, kwargs = evidence.variant_model(args, variant)
    kwargs = {k: ast.literal_eval(v) for k, v in (kv.split('=') for kv in kwargs)}  # as train.py's ParseKwargs
    model = timm.create_model(name, num_classes=10, in_chans=1, **kwargs)
    if widths is None:
        assert not hasattr(model, 'forward_splits')
        return
    head = model.get_classifier()
    assert head.widths == widths
    assert (getattr(head.norm, 'num_features', 0)) == norm  # no BatchNorm in Table 4's controls
    assert model.forward_splits(torch.randn(2, 1, 28, 28)).shape == (2, len(widths), 10)


def test_comparisons(evidence):
    assert evidence.comparisons(evidence.VARIANTS) == [
        ('ssm', 'baseline'), ('ssm_norm_all', 'baseline'), ('2fc', 'baseline'), ('3fc', 'baseline'),
        ('ssm_individual', 'baseline'), ('ssm', '2fc'), ('ssm', '3fc'), ('ssm_norm_all', 'ssm'),
        ('ssm_individual', 'ssm')]
    assert evidence.comparisons(['ssm', '3fc']) == [('ssm', '3fc')]
    assert evidence.comparisons(['baseline']) == []


def _fake_run(runs, name, train_args, epochs):
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / 'last.pth.tar').write_bytes(b'')
    (run_dir / 'summary.csv').write_text('epoch,train_loss\n' + ''.join(f'{e},1.0\n' for e in range(epochs)))
    (run_dir / 'run.json').write_text(json.dumps(dict(train_args=train_args, seconds=60.0, load=1.0)))


def test_kept_only_with_same_arguments(evidence, tmp_path, monkeypatch):
    def _no_training(*args, **kwargs):
        raise AssertionError('training started')

    monkeypatch.setattr(evidence.subprocess, 'call', _no_training)
    base = ['--epochs', '3', '--device', 'cpu', '--model', 'test_resnet']
    args = evidence.resolve_defaults(evidence.parser.parse_args(base))
    data_dir = str(tmp_path / 'data')
    train_args = evidence.train_arguments(args, '2fc', 0, data_dir)
    assert train_args[-3:] == ['--model-kwargs', 'num_splits=2', 'split=False']
    runs = tmp_path / 'runs'
    _fake_run(runs, '2fc-seed0', train_args, epochs=3)
    assert evidence.train(args, '2fc', 0, data_dir, str(runs))['seconds'] == 60.0

    run_dir = str(runs / '2fc-seed0')
    assert evidence.finished_run(run_dir, train_args, 3) is not None
    assert evidence.finished_run(run_dir, train_args, 2) is None  # more epochs than asked for
    assert evidence.finished_run(run_dir, train_args, 4) is None
    for i, other in enumerate([['--lr', '0.05'], ['--img-size', '32'], ['--epochs', '2'], ['--amp'],
                               ['--train-args', '--drop', '0.1']]):
        runs = tmp_path / f'other{i}'
        _fake_run(runs, '2fc-seed0', train_args, epochs=3)
        other_args = evidence.resolve_defaults(evidence.parser.parse_args(base + other))
        with pytest.raises(AssertionError, match='training started'):  # trained again, not kept
            evidence.train(other_args, '2fc', 0, data_dir, str(runs))
    # the SSM variants differ in their arguments, so one's run is never kept for another
    ssm_args = evidence.train_arguments(args, 'ssm', 0, data_dir)
    assert ssm_args != evidence.train_arguments(args, 'ssm_norm_all', 0, data_dir)
    assert ssm_args != evidence.train_arguments(args, 'ssm', 1, data_dir)


def test_subset_is_the_first_images(evidence, tiny_fashion_mnist, tmp_path):
    root = evidence.subset_fashion_mnist(str(tiny_fashion_mnist), str(tmp_path / 'sub'), 30)
    full = timm.data.create_dataset('torch/fashion_mnist', root=str(tiny_fashion_mnist), split='train')
    sub = timm.data.create_dataset('torch/fashion_mnist', root=root, split='train')
    assert len(sub) == 30 and [sub[i][1] for i in range(30)] == [full[i][1] for i in range(30)]
    assert np.array_equal(np.asarray(sub[29][0]), np.asarray(full[29][0]))
    assert len(timm.data.create_dataset('torch/fashion_mnist', root=root, split='test')) == 40
    with pytest.raises(ValueError, match='--train-subset must be in 1..96'):
        evidence.subset_fashion_mnist(str(tiny_fashion_mnist), str(tmp_path / 'big'), 97)


def _train_args(data: Path, out: Path, experiment: str):
    return [
        '--model', 'test_resnet_ssm', '--model-kwargs', 'num_splits=1', '--seed', '3', '--data-dir', str(data),
        '--dataset', 'torch/fashion_mnist', '--train-split', 'train', '--val-split', '', '--num-classes', '10',
        '--input-size', '1', '28', '28', '--mean', '0.286', '--std', '0.353', '--opt', 'momentum', '--lr', '0.1',
        '--sched', 'cosine', '--epochs', '2', '--warmup-epochs', '0', '-b', '32', '--workers', '1',
        '--device', 'cpu', '--scale', '0.75', '1', '--output', str(out), '--experiment', experiment,
    ]


@needs_train_py
def test_individual_loop_trains_as_train_py_but_for_the_loss(tiny_fashion_mnist, tmp_path, monkeypatch):
    """With one sub-classifier the individual loss is train.py's loss: the weights must come out identical."""
    _env(monkeypatch)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    for cmd, name in (([sys.executable, '-m', 'timm_ssm.launch', 'train.py'], 'train_py'),
                      ([sys.executable, str(REPO / 'benchmarks' / 'train_individual.py')], 'individual')):
        proc = subprocess.run(cmd + _train_args(tiny_fashion_mnist, tmp_path, name), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    load = lambda name: torch.load(tmp_path / name / 'last.pth.tar', map_location='cpu', weights_only=False)  # noqa
    reference, individual = load('train_py'), load('individual')
    assert reference['state_dict'].keys() == individual['state_dict'].keys()
    for key, value in reference['state_dict'].items():
        assert torch.equal(value, individual['state_dict'][key]), key
    assert individual['args'].model_kwargs == {'num_splits': 1}  # what timm_ssm.evaluate reads
    assert (tmp_path / 'individual' / 'summary.csv').read_text() == (tmp_path / 'train_py' / 'summary.csv').read_text()


@needs_train_py
def test_individual_loop_refuses_what_it_does_not_do(tiny_fashion_mnist, tmp_path, monkeypatch):
    _env(monkeypatch)
    args = _train_args(tiny_fashion_mnist, tmp_path, 'x') + ['--mixup', '0.2']
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'train_individual.py'), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and 'does not support --mixup/--cutmix' in proc.stderr


@needs_train_py
def test_benchmark_runs_resumes_and_reports(evidence, tiny_fashion_mnist, tmp_path, monkeypatch, capsys):
    _env(monkeypatch)
    out = tmp_path / 'out'
    argv = ['--model', 'test_resnet', '--device', 'cpu', '--epochs', '1', '--seeds', '0', '1', '--workers', '0',
            '-b', '32', '--variants', 'baseline', 'ssm', 'ssm_individual', '--data-dir', str(tiny_fashion_mnist),
            '--train-subset', '64', '--out', str(out)]
    evidence.main(argv)
    first = capsys.readouterr().out
    runs = out / 'runs'
    for v in ('baseline', 'ssm', 'ssm_individual'):
        for s in (0, 1):
            assert (runs / f'{v}-seed{s}' / 'last.pth.tar').is_file()
    report = (out / 'results.md').read_text()
    assert 'Partial report' not in report
    for v in ('baseline', 'ssm', 'ssm_individual'):  # the table holds what timm_ssm.evaluate measured
        top1 = [m['top1'] for m in json.loads((out / f'eval_{v}.json').read_text())['models']]
        assert f'| {v} | ' in report and ', '.join(f'{x:.2f}' for x in top1) in report
    ssm = json.loads((out / 'eval_ssm.json').read_text())
    diffs = [s['top1'] - b['top1'] for s, b in
             zip(ssm['models'], json.loads((out / 'eval_baseline.json').read_text())['models'])]
    assert f'| ssm − baseline | 0, 1 | {", ".join(f"{d:+.2f}" for d in diffs)} |' in report
    assert 'individual loss, not train.py' in report and 'What it shows' in report
    assert first.count('training (') == 6

    (runs / 'ssm-seed1' / 'last.pth.tar').unlink()  # an interrupted run: trained again, the others kept
    evidence.main(argv)
    second = capsys.readouterr().out
    assert second.count('found, kept') == 5 and 'ssm-seed1: training (' in second

    (runs / 'baseline-seed1' / 'run.json').unlink()
    evidence.main(argv + ['--report'])
    partial = (out / 'results.md').read_text()
    assert 'Partial report' in partial and 'training (' not in capsys.readouterr().out
    assert 'test split (40 images)' in partial
    assert '| baseline | `test_resnet` | 0 |' in partial and '| ssm − baseline | 0 |' in partial
