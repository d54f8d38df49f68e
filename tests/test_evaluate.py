"""`python -m timm_ssm.evaluate` against an independent computation on tiny models and generated image folders."""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image

import timm
import timm_ssm  # noqa: F401  (registers the *_ssm models)
from timm.data import create_transform, resolve_data_config
from timm_ssm import evaluate as evaluate_module
from timm_ssm.evaluate import main

from clean_exit import exits_clearly

K = 6  # classes
IMG_SIZE = 32


def _images(folder: Path, classes, n=4, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 4  # a little class structure
            Image.fromarray(pixels).save(folder / name / f'{i}.png')
    return folder


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    """An image folder: validation/class0..class5, 4 images of 40x40 each."""
    root = tmp_path_factory.mktemp('images')
    _images(root / 'validation', [f'class{c}' for c in range(K)])
    return root


def _reference_inputs(folder: Path):
    """Images and labels read with PIL in folder order, through the models' eval transform."""
    config = resolve_data_config(dict(img_size=IMG_SIZE), model=timm.create_model('test_resnet_ssm'))
    transform = create_transform(**config)
    paths = [(p, c) for c, d in enumerate(sorted(folder.iterdir())) for p in sorted(d.iterdir())]
    return torch.stack([transform(Image.open(p).convert('RGB')) for p, _ in paths]), np.array([c for _, c in paths])


def _random_model(name: str, images: torch.Tensor, **kwargs) -> nn.Module:
    """A random model whose BatchNorm statistics are those of the images, so that its outputs vary between samples
    and sub-classifiers as a trained model's do."""
    model = timm.create_model(name, num_classes=K, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = None  # cumulative average over the batch below
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 1)
        model.train()(images)
    return model.eval()


def _run_folder(path: Path, model=None, name='test_resnet_ssm', **args) -> Path:
    """A train.py output folder: last.pth.tar with its train.py arguments, args.yaml, summary.csv."""
    path.mkdir(parents=True)
    model = model or timm.create_model(name, num_classes=K)
    args = dict(dict(model=name, num_classes=K, in_chans=3, model_kwargs={}), **args)
    torch.save({'epoch': 1, 'state_dict': model.state_dict(), 'args': argparse.Namespace(**args)},
               path / 'last.pth.tar')
    (path / 'args.yaml').write_text(yaml.safe_dump(args))
    (path / 'summary.csv').write_text('epoch,train_loss,eval_top1\n0,1.0,50.0\n')
    return path


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_metrics(splits: np.ndarray, labels: np.ndarray):
    """Top-1/top-5 of the averaged output, each head, the oracle and the selection rules, sample by sample."""
    n_samples, n, k = splits.shape
    hits = {}
    chosen = {r: np.zeros(n) for r in ('max_prob', 'min_entropy', 'max_margin')}

    def score(name, scores, label, ranking=None):
        ranking = ranking or sorted(range(k), key=lambda c: -scores[c])
        hits[name] = hits.get(name, 0) + np.array([ranking[0] == label, label in ranking[:5]])

    for s, y in zip(splits, labels):
        score('avg', s.mean(0), y)
        for j in range(n):
            score(f'FC{j + 1}', s[j], y)
        score('oracle', None, y, [y if any(np.argmax(s[j]) == y for j in range(n)) else -1])
        prob = _softmax(s)
        margin = [np.sort(p)[-1] - np.sort(p)[-2] for p in prob]
        for rule, j in (('max_prob', np.argmax(prob.max(-1))), ('max_margin', np.argmax(margin)),
                        ('min_entropy', np.argmin([-(p * np.log(p)).sum() for p in prob]))):
            score(rule, s[j], y)
            chosen[rule][j] += 1
        votes = np.bincount([np.argmax(s[j]) for j in range(n)], minlength=k)
        score('vote', None, y, sorted(range(k), key=lambda c: (-votes[c], -prob.mean(0)[c])))
        score('prob_avg', prob.mean(0), y)
    return {name: 100 * h / n_samples for name, h in hits.items()}, {r: c / n_samples for r, c in chosen.items()}


def test_evaluate_against_reference(image_folder, tmp_path, capsys):
    """Two SSM runs and a plain timm model: every output, the oracle, the rules and the ensemble against a
    sample-by-sample computation; the JSON, CSV and plot written, and said where."""
    images, labels = _reference_inputs(image_folder / 'validation')
    names = ['test_resnet_ssm', 'test_resnet_ssm', 'test_resnet']
    models = [_random_model(name, images) for name in names]
    runs = [_run_folder(tmp_path / f'run{i}', m, n) for i, (m, n) in enumerate(zip(models, names))]
    out = tmp_path / 'out'
    result = main(['--checkpoint', *map(str, runs), '--data-dir', str(image_folder), '--img-size', str(IMG_SIZE),
                   '-b', '5', '-j', '0', '--device', 'cpu', '--no-progress',
                   '--json', str(out / 'r.json'), '--csv', str(out / 'r.csv'), '--plot', str(out / 'r.png')])
    printed = capsys.readouterr().out
    assert all(f'wrote results to {out / name}' in printed for name in ('r.json', 'r.csv', 'r.png'))
    assert json.loads((out / 'r.json').read_text()) == json.loads(json.dumps(result))
    assert result['data']['num_samples'] == 4 * K and result['data']['input_size'] == [3, IMG_SIZE, IMG_SIZE]
    assert result['data']['split_folder'] == str(image_folder / 'validation')

    averaged = []
    with torch.no_grad():
        for model, name, entry in zip(models, names, result['models']):
            assert entry['model'] == name and entry['num_classes'] == K and entry['use_ema'] is False
            assert entry['param_count'] == sum(p.numel() for p in model.parameters())
            if name == 'test_resnet':
                logits = model(images).numpy()
                ref, _ = _reference_metrics(logits[:, None], labels)
                assert (entry['num_splits'], entry['heads'], entry['oracle']) == (None, [], None)
                assert entry['head_macs'] == model.num_features * K
            else:
                splits = model.forward_splits(images).numpy()
                logits = splits.mean(1)
                ref, chosen = _reference_metrics(splits, labels)
                widths = model.head.widths
                assert entry['num_splits'] == 4 and entry['head_macs'] == sum(widths) * K
                for j, head in enumerate(entry['heads']):
                    assert (head['name'], head['width'], head['group']) == (
                        f'FC{j + 1}', widths[j], [widths[0] * j, widths[0] * (j + 1) - 1])
                    assert [head['top1'], head['top5']] == pytest.approx(ref[f'FC{j + 1}'], abs=1e-3)
                assert entry['oracle']['top1'] == pytest.approx(ref['oracle'][0], abs=1e-3)
                for rule, r in entry['selection'].items():
                    assert [r['top1'], r['top5']] == pytest.approx(ref[rule], abs=1e-3), rule
                    assert r['chosen'] == (pytest.approx(list(chosen[rule]), abs=1e-4) if rule in chosen else None)
            averaged.append(logits)
            assert [entry['top1'], entry['top5']] == pytest.approx(ref['avg'], abs=1e-3)
            assert entry['top1_err'] == pytest.approx(100 - entry['top1'])

    ensemble, _ = _reference_metrics(np.mean(averaged, 0)[:, None], labels)
    assert result['ensemble']['members'] == 3
    assert [result['ensemble']['top1'], result['ensemble']['top5']] == pytest.approx(ensemble['avg'], abs=1e-3)
    rows = list(csv.DictReader((out / 'r.csv').open()))
    assert len(rows) == 2 * 11 + 1 + 1  # per SSM model: 4 heads, averaged, oracle, 5 rules; the baseline; ensemble
    assert rows[4]['output'] == 'averaged' and float(rows[4]['top1']) == result['models'][0]['top1']
    assert (out / 'r.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.name for p in out.iterdir()) == ['r.csv', 'r.json', 'r.png']


def test_local_dir_and_data_config_from_the_run(image_folder, tmp_path):
    """Weights in timm's Hub format (`local-dir:`, 2 sub-classifiers from its config); a 1-channel run with
    `--input-size 1 H W` sees its own size, normalization, crop and EMA weights; the command line goes over them."""
    images, labels = _reference_inputs(image_folder / 'validation')
    model = _random_model('test_resnet_ssm', images, num_splits=2)
    timm.models.save_for_hf(model, str(tmp_path / 'hub'), safe_serialization=True)
    data = ['--data-dir', str(image_folder), '-b', '24', '-j', '0', '--device', 'cpu', '--no-progress']
    entry = main(['--model', f'local-dir:{tmp_path / "hub"}', '--img-size', str(IMG_SIZE), *data])['models'][0]
    with torch.no_grad():
        ref, _ = _reference_metrics(model.forward_splits(images).numpy(), labels)
    assert [entry['top1'], entry['heads'][0]['top1'], entry['heads'][1]['top1']] == pytest.approx(
        [ref['avg'][0], ref['FC1'][0], ref['FC2'][0]], abs=1e-3)

    gray = timm.create_model('test_resnet_ssm', num_classes=K, in_chans=1)
    ema = {k: torch.zeros_like(v) if k.startswith('head.') else v for k, v in gray.state_dict().items()}
    ema['head.bias'].view(4, K)[:, 2] = 1.  # EMA weights that always predict class 2
    args = argparse.Namespace(model='test_resnet_ssm', num_classes=K, in_chans=None, input_size=[1, IMG_SIZE, 36],
                              mean=[0.4], std=[0.2], crop_pct=1.0, interpolation='bilinear', model_kwargs={})
    torch.save({'state_dict': gray.state_dict(), 'state_dict_ema': ema, 'args': args}, tmp_path / 'gray.pth.tar')
    data += ['--checkpoint', str(tmp_path / 'gray.pth.tar')]
    result = main(data)['data']
    assert (result['input_size'], result['mean'], result['std'], result['crop_pct'], result['interpolation']) == (
        [1, IMG_SIZE, 36], [0.4], [0.2], 1.0, 'bilinear')
    result = main(data + ['--img-size', '30', '--mean', '0.5', '--model-kwargs', 'norm_all=False'])['data']
    assert result['input_size'] == [1, 30, 30] and result['mean'] == [0.5]
    assert main(data + ['--use-ema'])['models'][0]['top1'] == pytest.approx(100 / K, abs=1e-3)


@pytest.mark.parametrize('workers', [0, 2])
def test_unreadable_images_are_named_and_no_number_is_reported(workers, tmp_path, capsys):
    """timm's reader reads the next image in place of one it cannot read and only logs a warning: with every image
    of one class corrupt, evaluate used to report 24 images. Now the pass counts them, in its worker processes too,
    and refuses."""
    data = _images(tmp_path / 'data' / 'validation', ['a', 'b', 'c'], n=8)
    for path in (data / 'c').iterdir():
        path.write_text('not an image')
    run = _run_folder(tmp_path / 'run', num_classes=3, model=timm.create_model('test_resnet_ssm', num_classes=3))
    err = _fails(['--checkpoint', str(run), '--data-dir', str(data.parent), '-j', str(workers), '--device', 'cpu',
                  '--img-size', str(IMG_SIZE), '--json', str(tmp_path / 'r.json')], capsys,
                 '8 of the 24 images in .*validation could not be read, and timm\'s reader read the next image in '
                 'place of each, so no result is reported: .*c/0.png, .*c/4.png and 3 more; replace or remove them')
    assert 'images/s' not in err and not (tmp_path / 'r.json').exists()


def test_non_finite_weights_and_logits_are_refused(image_folder, tmp_path, capsys):
    model = timm.create_model('test_resnet_ssm', num_classes=K)
    state = model.state_dict()
    state['head.weight'][0, 0] = float('nan')
    model.load_state_dict(state)
    common = ['--data-dir', str(image_folder), '-j', '0', '--device', 'cpu', '--img-size', str(IMG_SIZE)]
    _fails(['--checkpoint', str(_run_folder(tmp_path / 'nan', model))] + common, capsys,
           'holds non-finite weights \\(NaN or inf\\) in \\[head.weight\\]: its training diverged')
    state['head.weight'].fill_(1e38)  # finite weights whose logits overflow
    model.load_state_dict(state)
    _fails(['--checkpoint', str(_run_folder(tmp_path / 'inf', model))] + common, capsys,
           '[1-9][0-9]* of the 24 images gave logits that are not finite \\(NaN or inf\\), so no accuracy is reported')


def test_split_is_recorded_as_the_folder_read(tmp_path):
    """`--split train/` (trailing slash) and `--split val` are the folders timm reads, recorded as absolute paths
    (`--split ''` and the other split names: tests/test_runs.py)."""
    data = tmp_path / 'data'
    for split in ('train', 'validation'):
        _images(data / split, [f'class{c}' for c in range(K)], n=1)
    common = ['--checkpoint', str(_run_folder(tmp_path / 'run')), '--data-dir', str(data), '-j', '0', '--device',
              'cpu', '--img-size', str(IMG_SIZE), '--no-progress']
    for split, folder in (('train/', 'train'), ('val', 'validation')):
        assert main(common + ['--split', split])['data']['split_folder'] == str(data / folder)


def test_classes_are_the_runs_or_mapped_in_its_order(tmp_path, capsys):
    """The data's class names must be the run's training classes; `--class-map` maps other names, but must keep
    each training class at its index; stray images and a flat folder are refused (another number of classes when the
    run's are unknown: tests/test_cam.py)."""
    trained = [f'kind{c}' for c in range(K)]
    train = _images(tmp_path / 'trained' / 'train', trained, n=1)
    _images(tmp_path / 'trained' / 'validation', trained, n=1)
    other = _images(tmp_path / 'other' / 'validation', [f'c{c}' for c in range(K)], n=2)
    images, _ = _reference_inputs(other)
    model = _random_model('test_resnet_ssm', images)
    run = _run_folder(tmp_path / 'run', model, data_dir=str(train.parent))
    common = ['--checkpoint', str(run), '--device', 'cpu', '-j', '0', '--img-size', str(IMG_SIZE), '--no-progress']
    assert main(common + ['--data-dir', str(tmp_path / 'trained')])['data']['num_samples'] == K
    err = _fails(common + ['--data-dir', str(tmp_path / 'other')], capsys,
                 'The classes of .*other/validation are not those the model was trained on')
    assert 'data (6): [c0, c1, c2, c3, c4, c5]\n  model (6): [kind0, kind1, kind2, kind3, kind4, kind5]' in err

    (tmp_path / 'map.txt').write_text(''.join(f'c{c}\n' for c in reversed(range(K))))  # c5 is index 0, ...
    mapped = main(common + ['--data-dir', str(tmp_path / 'other'), '--class-map', str(tmp_path / 'map.txt')])
    with torch.no_grad():
        pred = model(images).argmax(-1).numpy()
    assert mapped['models'][0]['top1'] == pytest.approx(
        100 * np.mean(pred == np.repeat(K - 1 - np.arange(K), 2)), abs=1e-4)  # the JSON's 4 decimals
    (tmp_path / 'swapped.txt').write_text('\n'.join(['kind1', 'kind0'] + trained[2:]))
    _fails(common + ['--data-dir', str(tmp_path / 'trained'), '--class-map', str(tmp_path / 'swapped.txt')], capsys,
           'swapped.txt gives class kind1 index 0, but the model was trained with it at 1: give the classes in the '
           'model\'s order \\[kind0, kind1')

    run = _run_folder(tmp_path / 'unknown')  # no training data here: the number of classes is checked
    common[1] = str(run)
    Image.new('RGB', (36, 36)).save(tmp_path / 'other' / 'validation' / 'thumbnail.png')
    _fails(common + ['--data-dir', str(tmp_path / 'other')], capsys,
           '1 image\\(s\\) lie beside the class folders of .*validation \\(such as .*thumbnail.png\\)')
    _fails(common + ['--data-dir', str(tmp_path / 'other' / 'validation' / 'c0')], capsys,
           'c0 has no class folders, so its images have no labels')


def test_outputs_are_regular_files_that_exist_only_with_overwrite(image_folder, tmp_path, capsys, monkeypatch):
    """Checked before the pass: a device is refused, never opened (it used to hang or fill memory); an existing file
    needs --overwrite; a file of the run (checkpoint, args.yaml) is refused even then; nothing is written on refusal."""
    run = _run_folder(tmp_path / 'run')
    saved = {p.name: p.read_bytes() for p in run.iterdir()}
    (tmp_path / 'notes.json').write_text('my notes')
    common = ['--checkpoint', str(run), '--data-dir', str(image_folder), '--device', 'cpu', '-j', '0', '--img-size',
              str(IMG_SIZE), '--no-progress']
    with monkeypatch.context() as m:
        m.setattr(evaluate_module, 'evaluate', None)  # never reached
        _fails(common + ['--csv', '/dev/zero', '--overwrite'], capsys, '/dev/zero is not a regular file')
        _fails(common + ['--json', str(tmp_path / 'notes.json')], capsys,
               'notes.json already exists: give another --json, or --overwrite to replace it')
        _fails(common + ['--json', str(run / 'last.pth.tar'), '--overwrite'], capsys, 'is an input of this run')
        _fails(common + ['--json', str(run / 'args.yaml'), '--overwrite'], capsys, 'is an input of this run')
        _fails(common + ['--json', str(tmp_path / 'r'), '--csv', str(tmp_path / 'r')], capsys,
               '--json and --csv name one file between them')
    assert {p.name: p.read_bytes() for p in run.iterdir()} == saved and (tmp_path / 'notes.json').read_text() == \
        'my notes'
    result = main(common + ['--json', str(tmp_path / 'notes.json'), '--overwrite'])
    assert json.loads((tmp_path / 'notes.json').read_text())['models'][0]['top1'] == result['models'][0]['top1']


@pytest.mark.parametrize('option,message', [
    (['--img-size', '0'], 'argument --img-size: 0 is not an integer in \\[1, inf\\)'),
    (['--input-size', '3', '0', '32'], 'argument --input-size: 0 is not'),
    (['--crop-pct', '0'], 'argument --crop-pct: 0 is not a finite number in \\(0, 1\\]'),
    (['--std', 'inf'], 'argument --std: inf is not a finite number in \\(0, inf\\)'),
    (['--mean', 'nan'], 'argument --mean: nan is not a finite number'),
    (['--gp', 'nonsense'], "argument --gp: invalid choice: 'nonsense'"),
    (['--interpolation', 'bogus'], "argument --interpolation: invalid choice: 'bogus'"),
    (['--model-kwargs', 'num_splits'], "argument --model-kwargs: 'num_splits' is no NAME=VALUE pair"),
    (['-b', '0'], 'argument -b/--batch-size: 0 is not'),
    (['--num-classes', '-1'], 'argument --num-classes: -1 is not'),
    (['--amp-dtype', 'float8'], 'argument --amp-dtype: invalid choice'),
])
def test_option_values_are_checked_by_the_parser(option, message, capsys):
    _fails(['--model', 'test_resnet_ssm'] + option, capsys, message)


@pytest.mark.parametrize('line,message', [
    ('mean: [0.5, 0.5]', 'mean in .*args.yaml has 2 values, but the model sees 3 channel\\(s\\): give --mean with one'),
    ('std: [0.5, .inf, 0.5]', 'holds a value train.py would not write \\(argument --std: inf is not a finite number'),
    ('input_size: [3, 32]', 'argument --input-size: expected 3 arguments'),
    ('model_kwargs: [num_splits, 2]', 'model_kwargs no mapping'),
])
def test_hand_edited_args_yaml(line, message, tmp_path, image_folder, capsys):
    run = _run_folder(tmp_path / 'run')
    args = yaml.safe_load((run / 'args.yaml').read_text())
    args.update(yaml.safe_load(line))
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    _fails(['--checkpoint', str(run), '--data-dir', str(image_folder), '--device', 'cpu', '-j', '0'], capsys, message)


def test_errors(image_folder, tmp_path, capsys):
    run = _run_folder(tmp_path / 'run')
    os.link(run / 'last.pth.tar', run / 'model_best.pth.tar')
    data = ['--data-dir', str(image_folder), '--device', 'cpu', '-j', '0', '--img-size', str(IMG_SIZE),
            '-b', '1000000000', '--no-progress']
    assert main(['--checkpoint', str(run)] + data)['data']['num_samples'] == 4 * K  # a batch larger than the data
    _fails(['--model', 'test_resnet_ssm', 'test_resnet', '--checkpoint', str(run)] + data, capsys,
           '2 model names for 1 checkpoints')
    _fails(['--checkpoint', str(run / 'last.pth.tar'), str(run)] + data, capsys,
           'hold identical weights, so an ensemble of them measures nothing')
    _fails(['--checkpoint', str(run), '--device', 'bogus'], capsys, '--device bogus is not here.*give --device cpu')
    assert 'docs/' not in evaluate_module.parser.format_help()  # a wheel has no docs/


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
from timm_ssm.evaluate import main
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
main(sys.argv[1:])
"""


def test_full_disk_keeps_the_printed_results_and_leaves_no_partial_file(image_folder, tmp_path):
    run = _run_folder(tmp_path / 'run')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'r.csv').write_text('earlier\n')
    argv = ['--checkpoint', str(run), '--data-dir', str(image_folder), '--device', 'cpu', '-j', '0', '--img-size',
            str(IMG_SIZE), '--no-progress', '--csv', str(out / 'r.csv'), '--json', str(out / 'r.json'), '--overwrite']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', _FULL_DISK, *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr and 'images/s' in proc.stdout, proc.stderr
    assert re.search('error: Cannot write .*r.json: the file would exceed the size limit .*No partial file is left '
                     'and an earlier file there is unchanged; the results are printed above', proc.stderr)
    assert (out / 'r.csv').read_text() == 'earlier\n' and sorted(p.name for p in out.iterdir()) == ['r.csv']


def _fails(argv, capsys, match):
    return exits_clearly(main, argv, capsys, match)
