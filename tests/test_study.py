"""python -m timm_ssm.study: the variants, the statistics and the verdict rule, bad input stopped before any run,
class-balanced subsets, and small real studies: seed k of two variants shares trunk and data order, a --pretrained-path
study starts every trunk from the file, tuning picks per variant on a split that is not reported."""
import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from scipy import stats

import timm_ssm  # noqa: F401  registers test_efficientnet_ssm
from timm_ssm import study
from clean_exit import exits_clearly

REPO = Path(__file__).resolve().parent.parent
needs_train_py = pytest.mark.skipif(
    not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py: set TIMM_ROOT to a pytorch-image-models checkout')


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    """An image folder of 3 classes (a bright bar per class): train 16, validation 6, test 6 images a class."""
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    for split, count in (('train', 16), ('validation', 6), ('test', 6)):
        for c in range(3):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 60, (16, 16), dtype=np.uint8)
                image[5 * c:5 * c + 4] = 230
                Image.fromarray(image).save(root / split / f'class{c}' / f'{i}.png')
    return root


@pytest.fixture
def child_env(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')  # train.py on one CPU process, also on a host with GPUs
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))


def _argv(folder: Path, out: Path, *more: str):
    return ['--model', 'test_efficientnet', '--data-dir', str(folder), '--val-split', 'test', '--out', str(out),
            '--device', 'cpu', '--jobs', '1', '--img-size', '32', '--epochs', '1', '-b', '8', '--workers', '0',
            '--opt', 'momentum', '--warmup-epochs', '0', *more]


def test_statistics_are_scipys_and_the_rule_is_the_written_one():
    a, b = {0: 70.0, 1: 72.0, 2: 71.0}, {0: 69.0, 1: 70.5, 2: 70.9, 3: 50.0}
    p = study.paired(a, b, level=0.975)
    assert p['seeds'] == [0, 1, 2] and p['diffs'] == pytest.approx([1.0, 1.5, 0.1])
    assert p['p'] == pytest.approx(stats.ttest_rel([70, 72, 71], [69, 70.5, 70.9]).pvalue)
    half = stats.t.ppf(1 - 0.025 / 2, 2) * np.std(p['diffs'], ddof=1) / np.sqrt(3)
    assert p['ci'] == pytest.approx([p['mean'] - half, p['mean'] + half])
    assert (p['wins'], p['losses'], p['sign_p']) == (3, 0, 0.25)
    assert study.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert study.holm([0.02, float('nan')]) == pytest.approx([0.04, 1.0])
    assert study.verdict(0.01, 2.0, [1, 3], 0.5) == 'ahead' and study.verdict(0.01, -2.0, [-3, -1], 0.5) == 'behind'
    assert study.verdict(0.2, 0.1, [-0.4, 0.45], 0.5) == 'equivalent within ±0.5'
    assert study.verdict(0.2, 0.1, [-0.6, 0.8], 0.5) == 'inconclusive'  # a null with a wide interval
    assert study.headline(['ahead', 'ahead'], 0.5) == 'SSM helps'
    assert study.headline(['ahead', 'inconclusive'], 0.5) == 'inconclusive'
    assert study.headline(['ahead', 'behind'], 0.5) == 'SSM hurts'
    assert study.headline(['equivalent within ±0.5'] * 2, 0.5) == 'no difference within ±0.5 points'


@pytest.mark.parametrize('variant,widths,norm', [
    ('baseline', None, None), ('ssm', [64, 128, 192, 256], 384), ('ssm_norm_all', [64, 128, 192, 256], 640),
    ('bn1fc', [256], 256), ('1fc', [256], 0), ('4fc', [256] * 4, 0)])
def test_variants_are_the_papers_heads_and_the_batchnorm_control(variant, widths, norm):
    name, kwargs = study.variant_model('test_efficientnet', variant)
    model = timm.create_model(name, num_classes=10, **{k: ast.literal_eval(v) for k, v in (kv.split('=') for kv in
                                                                                          kwargs)})
    if widths is None:
        assert not hasattr(model, 'forward_splits')
        return
    assert model.get_classifier().widths == widths
    assert getattr(model.get_classifier().norm, 'num_features', 0) == norm


@pytest.mark.parametrize('more,match', [
    (['--variants', 'baseline', '0fc'], r"Unknown variant '0fc'.*kfc for any k >= 1"),
    (['--jobs', '0'], r'--jobs 0 .*give 1 to \d+ jobs'),
    (['--jobs', '999'], r'--jobs 999 .*give 1 to \d+ jobs'),
    (['--threads', '0'], r'--threads 0 .*1 or more threads'),
    (['--tune', 'lr=0.1', '--tune', 'weight_decay=../../x'], r"plain values .*not '../../x'"),
    (['--tune', 'lr=0.1', '--tune-split', 'test'], r'--val-split reads (\S+)test, --tune-split reads \1test: give'),
    (['--tune', 'lr=0.1', '--tune-split', 'train'], r'--train-split reads (\S+)train, .*--tune-split reads \1train'),
    (['--tune', 'foo=1,2'], 'train.py does not take these arguments: unrecognized arguments: --foo'),
    (['--tune', 'lr=0.1', '--lr', '0.2'], r'--lr conflicts with --tune lr'),
    (['--tune', 'lr=0.1', '--tune-seeds', '0'], 'overlap'),
    (['--tune', 'lr=0,0.1'], 'give values above 0'),
    (['--primary', 'ssm-bestplain'], 'bestplain is picked on the tuning split: give --tune'),
    (['--primary', 'ssm-4fc', '--variants', 'baseline', 'ssm'], r'--primary ssm-4fc: give A-B with two variants'),
    (['--primary', 'ssm'], r'--primary ssm-: give A-B with two variants'),
    (['--experim', 'x'], '--experiment is set by the study per run'),
    (['--train-subset', '2'], r'--train-subset 2: .* give N from 3 to 48'),
    (['--pretrained-path', '/nonexistent/w.pth'], 'is not a file'),
    (['--no-such-option', '3'], 'train.py does not take these arguments'),
    (['--model', 'test_efficientnet_ssm'], 'the study builds <model>_ssm itself'),
    (['--model', 'no_such_model'], 'not a timm classifier'),
])
@needs_train_py
def test_bad_input_stops_before_any_run(folder, tmp_path, capsys, more, match):
    exits_clearly(study.main, _argv(folder, tmp_path / 'out', *more), capsys, match)
    assert not (tmp_path / 'out' / 'runs').exists() and not (tmp_path / 'out' / 'study.json').exists()


def test_subset_is_class_balanced_links_under_out_drawn_once(folder, tmp_path):
    reader = timm.data.create_dataset('', root=str(folder), split='train').reader
    root, name = study.subset_folder(reader, 'train', 8, str(tmp_path), '--train-subset')
    assert Path(root).parent == tmp_path / 'data' and name == 'a class-balanced draw of 8 images of `train`'
    sub = timm.data.create_dataset('', root=root, split='train').reader
    assert sub.class_to_idx == reader.class_to_idx
    assert sorted(np.bincount([t for _, t in sub.samples]).tolist()) == [2, 3, 3]
    files = [Path(p) for p, _ in sub.samples]
    assert all(p.is_symlink() and p.resolve().is_relative_to(folder) for p in files)
    assert study.subset_folder(reader, 'train', 8, str(tmp_path), '--train-subset')[0] == root  # the same draw


def _load(run: Path) -> dict:
    return torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=False)


@needs_train_py
def test_pretrained_study_starts_every_trunk_from_the_file(folder, tmp_path, child_env):
    torch.manual_seed(123)
    weights = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v  # unlike any initialization
               for k, v in timm.create_model('test_efficientnet').state_dict().items()}  # 1000 classes, as ImageNet
    torch.save(weights, tmp_path / 'weights.pth')
    out = tmp_path / 'out'
    study.main(_argv(folder, out, '--variants', 'baseline', 'bn1fc', 'ssm', '--seeds', '0', '--lr', '1e-9',
                     '--pretrained-path', str(tmp_path / 'weights.pth')))
    trunk = [n for n, _ in timm.create_model('test_efficientnet').named_parameters() if not n.startswith('classifier')]
    for variant, prefix, heads in (('baseline', '', 1), ('bn1fc', 'trunk.', 1), ('ssm', 'trunk.', 4)):
        state = _load(out / 'runs' / f'{variant}-seed0')['state_dict']  # lr 1e-9: the weights it started from
        assert all(torch.allclose(state[prefix + n], weights[n], atol=1e-6) for n in trunk), variant
        assert state['classifier.bias' if variant == 'baseline' else 'head.bias'].numel() == 3 * heads  # fresh
    assert sorted(p.name for p in (out / 'runs').iterdir() if p.is_dir()) == ['baseline-seed0', 'bn1fc-seed0',
                                                                               'ssm-seed0']  # no tuning runs
    report = (out / 'study.md').read_text()
    assert f'pretrained trunk of `{tmp_path / "weights.pth"}` and its head starts fresh for the data\'s 3 classes' \
        in report and 'The learning rate was not tuned: every variant ran at lr 1e-09' in report


@needs_train_py
def test_tuned_study_picks_per_variant_on_a_split_it_does_not_report(folder, tmp_path, capsys, monkeypatch,
                                                                     child_env):
    monkeypatch.setattr(study, 'PROGRESS_SECONDS', 1)
    out, runs = tmp_path / 'out', tmp_path / 'out' / 'runs'
    study.main(_argv(folder, out, '--variants', 'baseline', 'ssm', '--seeds', '0', '--tune', 'lr=1e-9,0.05',
                     '--tune-seeds', '5', '--tune-subset', '6', '--jobs', str(min(2, os.cpu_count()))))
    printed = capsys.readouterr().out
    assert re.search(r'done\] tune-\S+ at epoch [\d.]+ of 1.*min left for the study', printed)  # while training
    result = json.loads((out / 'study.json').read_text())
    for variant in ('baseline', 'ssm'):
        tuned = {r['tuned']['lr']: r['top1'] for r in result['tuning'] if r['variant'] == variant}
        (pick,) = [p['tuned']['lr'] for p in result['picks'] if p['variant'] == variant]
        assert pick == max(tuned, key=tuned.get) and _load(runs / f'{variant}-seed0')['args'].lr == float(pick)
        for lr in ('1e-9', '0.05'):  # tuning runs read the tuning subset of validation, reported runs read test
            data = json.loads((runs / f'tune-{variant}-lr{lr}-seed5' / 'eval.json').read_text())['data']
            assert (data['split'], data['num_samples']) == ('validation', 6)
            assert Path(data['data_dir']).parent == out / 'data'
        data = json.loads((runs / f'{variant}-seed0' / 'eval.json').read_text())['data']
        assert (data['split'], data['num_samples'], data['data_dir']) == ('test', 18, str(folder))
    assert [p['primary'] for p in result['comparisons']] == ['ssm-bestplain'] and result['headline']
    # the pairing: at seed 5 (lr 1e-9) both variants start from one trunk and see the same batches (the trunk's
    # BatchNorm statistics), the trunk that create_model('test_efficientnet') builds at that seed
    base, ssm = (_load(runs / f'tune-{v}-lr1e-9-seed5')['state_dict'] for v in ('baseline', 'ssm'))
    assert all(torch.allclose(x.float(), ssm[f'trunk.{k}'].float(), atol=1e-6) for k, x in base.items()
               if not k.startswith('classifier'))
    torch.manual_seed(5)
    reference = timm.create_model('test_efficientnet', num_classes=3).conv_stem.weight
    assert torch.allclose(base['conv_stem.weight'], reference, atol=1e-6)
    report = (out / 'study.md').read_text()
    (out / 'study.md').unlink()
    study.main(['--out', str(out), '--report'])  # from --out alone: the options saved at the start
    assert 'to train' not in capsys.readouterr().out
    again = (out / 'study.md').read_text()
    assert [x for x in again.splitlines() if 'Wall time' not in x] == [x for x in report.splitlines()
                                                                       if 'Wall time' not in x]
