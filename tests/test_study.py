"""python -m timm_ssm.study: the variants are the paper's heads and controls, the statistics are right, bad input
stops before any run, finished runs are kept only when trained with the same arguments, the individual loop trains
as train.py does but for the loss, and a small real study runs, resumes and reports with its figure (the tests
that run timm's train.py need TIMM_ROOT)."""
import ast
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import timm
import torch

import timm_ssm  # noqa: F401  registers test_resnet_ssm
from timm_ssm import study
from clean_exit import exits_clearly

REPO = Path(__file__).resolve().parent.parent
needs_train_py = pytest.mark.skipif(
    not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py: set TIMM_ROOT to a pytorch-image-models checkout')


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


@pytest.fixture
def child_env(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')  # train.py on one CPU process, also on a host with GPUs
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))


def test_sign_test_exact():
    assert study.sign_test([1.0] * 5) == pytest.approx(2 / 32)
    assert study.sign_test([0.3, 0.1, 0.2]) == pytest.approx(0.25)  # 3 seeds: never below 0.25
    assert study.sign_test([1.0, -1.0]) == 1.0
    assert study.sign_test([1.0] * 6 + [-1.0]) == pytest.approx(2 * (1 + 7) / 128)
    assert study.sign_test([0.0, 0.0, 1.0]) == 1.0  # ties dropped: one win of one


def test_paired_t_and_its_quantile_against_closed_forms():
    t, df, p = study.paired_t([1.0, 2.0, 3.0])  # mean 2, sd 1: t = 2 sqrt(3), df 2
    assert (t, df) == (pytest.approx(2 * math.sqrt(3)), 2)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-6)  # Student t, 2 df
    t, df, p = study.paired_t([0.5, -0.1])
    assert df == 1 and p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-6)  # Cauchy
    assert study.paired_t([-0.2, -0.2, -0.2])[2] == 0.0
    assert study.paired_t([0.0, 0.0])[2] == 1.0
    assert study.t_quantile(0.025, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-5)  # 12.706
    assert study.t_quantile(0.025, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95 ** 2)), rel=1e-5)  # 4.303
    assert study.t_quantile(0.025, 4) == pytest.approx(2.7764, abs=1e-4)


@pytest.mark.parametrize('variant,widths,norm', [
    ('baseline', None, None),
    ('ssm', [24, 48, 72, 96], 24 + 48 + 72),
    ('ssm_norm_all', [24, 48, 72, 96], 24 + 48 + 72 + 96),
    ('1fc', [96], 0),
    ('2fc', [96, 96], 0),
    ('4fc', [96] * 4, 0),
    ('8fc', [96] * 8, 0),
])
def test_variants_are_the_papers_heads(variant, widths, norm):
    name, kwargs = study.variant_model('test_resnet', variant)
    kwargs = {k: ast.literal_eval(v) for k, v in (kv.split('=') for kv in kwargs)}  # as train.py's ParseKwargs
    model = timm.create_model(name, num_classes=10, in_chans=1, **kwargs)
    if widths is None:
        assert not hasattr(model, 'forward_splits')
        return
    head = model.get_classifier()
    assert head.widths == widths
    assert getattr(head.norm, 'num_features', 0) == norm  # no BatchNorm in Table 4's controls
    assert model.forward_splits(torch.randn(2, 1, 28, 28)).shape == (2, len(widths), 10)


def test_comparisons():
    assert study.comparisons(['baseline', 'ssm', '2fc', '4fc', 'ssm_individual']) == [
        ('ssm', 'baseline'), ('2fc', 'baseline'), ('4fc', 'baseline'), ('ssm_individual', 'baseline'),
        ('ssm', '2fc'), ('ssm', '4fc'), ('ssm_individual', 'ssm')]
    assert study.comparisons(['ssm', '3fc']) == [('ssm', '3fc')]
    assert study.comparisons(['baseline', '1fc', '4fc']) == [('1fc', 'baseline'), ('4fc', 'baseline'), ('4fc', '1fc')]
    assert study.comparisons(['baseline']) == []


@pytest.mark.parametrize('argv,match', [
    (['--variants', 'baseline', '0fc'], r'Unknown variant \'0fc\'.*kfc for any k >= 1'),
    (['--variants', 'ssm', 'fc4'], r'Unknown variant \'fc4\''),
    (['--model', 'deepseek_vit_412m_enc'], 'is no classifier'),
    (['--model', 'test_resnet_ssm'], 'the study builds <model>_ssm itself'),
    (['--model', 'no_such_model'], 'not a timm model'),
    (['--model', 'lcnet_050', '--sweep', 'num_features=256,512'], 'lcnet_050 does not take num_features=256'),
    (['--model', 'mnasnet_small', '--sweep', 'num_features=256,wide'], 'does not take num_features=wide'),
    (['--model', 'test_resnet', '--sweep', 'num_features'], 'give KEY=V1,V2'),
    (['--model', 'test_resnet', '--seed', '3'], '--seed is set by the study per run'),
    (['--model', 'test_resnet', '--no-such-option', '3'], 'train.py does not take these arguments: unrecognized'),
    (['--model', 'test_resnet', '--data-dir', '/nonexistent/fm'], '--data-dir /nonexistent/fm does not exist'),
])
@needs_train_py
def test_bad_input_stops_before_any_run(tiny_fashion_mnist, tmp_path, capsys, argv, match):
    out = tmp_path / 'out'
    data = [] if '--data-dir' in argv else ['--data-dir', str(tiny_fashion_mnist), '--dataset', 'torch/fashion_mnist']
    exits_clearly(study.main, ['--out', str(out), '--device', 'cpu', *data, *argv], capsys, match)
    assert not (out / 'runs').exists()


def test_subset_is_the_first_images(tiny_fashion_mnist, tmp_path):
    root = study.subset_fashion_mnist(str(tiny_fashion_mnist), str(tmp_path / 'sub'), 30)
    full = timm.data.create_dataset('torch/fashion_mnist', root=str(tiny_fashion_mnist), split='train')
    sub = timm.data.create_dataset('torch/fashion_mnist', root=root, split='train')
    assert len(sub) == 30 and [sub[i][1] for i in range(30)] == [full[i][1] for i in range(30)]
    assert np.array_equal(np.asarray(sub[29][0]), np.asarray(full[29][0]))
    assert len(timm.data.create_dataset('torch/fashion_mnist', root=root, split='test')) == 40
    with pytest.raises(ValueError, match='--train-subset must be in 1..96'):
        study.subset_fashion_mnist(str(tiny_fashion_mnist), str(tmp_path / 'big'), 97)


def _train_args(data: Path, out: Path, experiment: str):
    return [
        '--model', 'test_resnet_ssm', '--model-kwargs', 'num_splits=1', '--seed', '3', '--data-dir', str(data),
        '--dataset', 'torch/fashion_mnist', '--train-split', 'train', '--val-split', '', '--num-classes', '10',
        '--input-size', '1', '28', '28', '--mean', '0.286', '--std', '0.353', '--opt', 'momentum', '--lr', '0.1',
        '--sched', 'cosine', '--epochs', '2', '--warmup-epochs', '0', '-b', '32', '--workers', '1',
        '--device', 'cpu', '--scale', '0.75', '1', '--output', str(out), '--experiment', experiment,
    ]


@needs_train_py
def test_individual_loop_trains_as_train_py_but_for_the_loss(tiny_fashion_mnist, tmp_path, monkeypatch, child_env):
    """With one sub-classifier the individual loss is train.py's loss: the weights must come out identical."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    for cmd, name in (([sys.executable, '-m', 'timm_ssm.launch', 'train.py'], 'train_py'),
                      ([sys.executable, '-m', 'timm_ssm.study', '--individual'], 'individual')):
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
    args = _train_args(tiny_fashion_mnist, tmp_path, 'x') + ['--mixup', '0.2']
    proc = subprocess.run([sys.executable, '-m', 'timm_ssm.study', '--individual', *args], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and 'does not support --mixup/--cutmix' in proc.stderr


@needs_train_py
def test_study_runs_resumes_and_reports(tiny_fashion_mnist, tmp_path, capsys, child_env):
    out = tmp_path / 'out'
    argv = ['--model', 'test_resnet', '--device', 'cpu', '--seeds', '0', '1', '--jobs', '2', '--variants',
            'baseline', '4fc', '--data-dir', str(tiny_fashion_mnist), '--dataset', 'torch/fashion_mnist',
            '--train-subset', '64', '--out', str(out), '--epochs', '1', '-b', '32', '--workers', '0']
    study.main(argv)
    first = capsys.readouterr().out
    runs = out / 'runs'
    evals = {name: json.loads((runs / name / 'eval.json').read_text())['models'][0]
             for name in ('baseline-seed0', 'baseline-seed1', '4fc-seed0', '4fc-seed1')}
    for name, m in evals.items():  # each run is train.py's, with the study's arguments, evaluated on test
        args = torch.load(runs / name / 'last.pth.tar', map_location='cpu', weights_only=False)['args']
        assert args.val_split == '' and args.epochs == 1 and args.seed == int(name[-1])
        assert m['model'] == ('test_resnet_ssm' if name.startswith('4fc') else 'test_resnet')
        assert f'] {name}: top-1 {m["top1"]:.2f}' in first and 'min to go' in first
    assert args.model_kwargs == {'num_splits': 4, 'split': False}
    report = (out / 'study.md').read_text()
    assert 'Partial report' not in report and 'test` split (40 images)' in report
    diffs = [evals[f'4fc-seed{s}']['top1'] - evals[f'baseline-seed{s}']['top1'] for s in (0, 1)]
    assert f'| 4fc − baseline | 0, 1 | {", ".join(f"{d:+.2f}" for d in diffs)} |' in report
    result = json.loads((out / 'study.json').read_text())
    (pair,) = result['comparisons']
    assert pair['diffs'] == pytest.approx(diffs) and pair['t_p'] == pytest.approx(study.paired_t(diffs)[2])
    assert pair['sign_p'] == study.sign_test(diffs) and result['complete']
    image = matplotlib.image.imread(out / 'study.png')
    assert image.shape[0] > 100 and image.shape[1] > 100 and image[..., :3].std() > 0

    (runs / '4fc-seed1' / 'run.json').unlink()  # an interrupted run: reported as missing, then trained again
    study.main(argv + ['--report'])
    assert 'Partial report: 3 of 4 runs finished' in (out / 'study.md').read_text()
    assert '| 4fc − baseline | 0 | ' in (out / 'study.md').read_text()
    assert 'to train' not in capsys.readouterr().out
    study.main(argv)
    assert '3 finished and kept, 1 to train' in capsys.readouterr().out
    assert (runs / '4fc-seed1' / 'run.json').is_file() and not (out / 'study.md').read_text().count('Partial')
    with pytest.raises(SystemExit, match='No finished runs'):  # runs trained otherwise are not reported as these
        study.main(argv[:-5] + ['2', '-b', '32', '--workers', '0', '--report'])
