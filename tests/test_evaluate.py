"""`python -m timm_ssm.evaluate` against an independent computation on a tiny model and a generated data set."""
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
import safetensors.torch
import torch
import torch.nn as nn
import yaml
from PIL import Image

import timm
import timm_ssm  # noqa: F401  (registers the *_ssm models)
from timm.data import create_transform, resolve_data_config
from timm_ssm import SplitShareHead, evaluate as evaluate_module
from timm_ssm.evaluate import main

from clean_exit import exits_clearly

NUM_CLASSES = 6
IMG_SIZE = 32


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """An ImageFolder data set: val/<class>/<n>.png, 4 images of 40x40 per class."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for c in range(NUM_CLASSES):
        folder = root / 'val' / f'class{c}'
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 4  # a little class structure
            Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


def _train_checkpoint(model: nn.Module, model_name: str, path):
    """A checkpoint as timm's train.py writes it: state dict and the argparse Namespace of the run."""
    args = argparse.Namespace(model=model_name, num_classes=NUM_CLASSES, in_chans=3, model_kwargs={})
    torch.save({'epoch': 1, 'arch': model_name, 'state_dict': model.state_dict(), 'args': args}, path)


def _random_model(name: str, images: torch.Tensor, **kwargs) -> nn.Module:
    """A randomly initialized model whose BatchNorm statistics are those of the images, so that its eval-mode
    outputs vary between samples and sub-classifiers as a trained model's do."""
    model = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = None  # cumulative average over the batch below
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 1)
        model.train()(images)
    return model.eval()


def _reference_inputs(root):
    """Images and labels read with PIL in ImageFolder order and transformed with the models' eval transform."""
    config = resolve_data_config(dict(img_size=IMG_SIZE), model=timm.create_model('test_resnet_ssm'))
    transform = create_transform(**config)
    images, labels = [], []
    for c in range(NUM_CLASSES):
        for path in sorted((root / 'val' / f'class{c}').iterdir()):
            images.append(transform(Image.open(path).convert('RGB')))
            labels.append(c)
    return torch.stack(images), np.array(labels)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_metrics(splits: np.ndarray, labels: np.ndarray):
    """Accuracies of the averaged output, each head, the oracle and the selection rules, sample by sample."""
    n_samples, n, k = splits.shape
    hits = {name: np.zeros(2) for name in ['avg', 'oracle', 'max_prob', 'min_entropy', 'max_margin', 'vote',
                                          'prob_avg'] + [f'FC{j + 1}' for j in range(n)]}
    chosen = {r: np.zeros(n) for r in ('max_prob', 'min_entropy', 'max_margin')}

    def score(name, scores, label):
        ranking = sorted(range(k), key=lambda c: -scores[c])
        hits[name] += [ranking[0] == label, label in ranking[:5]]

    for s, y in zip(splits, labels):
        avg = s.mean(0)
        score('avg', avg, y)
        for j in range(n):
            score(f'FC{j + 1}', s[j], y)
        hits['oracle'][0] += any(np.argmax(s[j]) == y for j in range(n))
        prob = _softmax(s)
        entropy = [-(p * np.log(p)).sum() for p in prob]
        margin = [np.sort(p)[-1] - np.sort(p)[-2] for p in prob]
        for rule, j in (('max_prob', np.argmax(prob.max(-1))), ('min_entropy', np.argmin(entropy)),
                        ('max_margin', np.argmax(margin))):
            score(rule, s[j], y)
            chosen[rule][j] += 1
        votes = np.bincount([np.argmax(s[j]) for j in range(n)], minlength=k)
        ranking = sorted(range(k), key=lambda c: (-votes[c], -prob.mean(0)[c]))
        hits['vote'] += [ranking[0] == y, y in ranking[:5]]
        score('prob_avg', prob.mean(0), y)
    pct = {name: 100 * h / n_samples for name, h in hits.items()}
    return pct, {r: c / n_samples for r, c in chosen.items()}


def _reference_macs(model, images):
    """Multiply-adds of the Conv2d and Linear layers and the Split-and-Share head's one weight of one image, counted
    with forward hooks."""
    total = [0]

    def conv_hook(m, inputs, out):
        total[0] += out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inputs, out):
        total[0] += m.in_features * m.out_features

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.forward_splits(images[:1]) if hasattr(model, 'forward_splits') else model(images[:1])
    for h in handles:
        h.remove()
    # the head's one weight holds every sub-classifier's block (width_j x classes)
    return total[0] + sum(m.weight.numel() for m in model.modules() if isinstance(m, SplitShareHead) and m.num_classes)


def test_evaluate_against_reference(image_folder, tmp_path):
    images, labels = _reference_inputs(image_folder)
    names = ['test_resnet_ssm', 'test_resnet_ssm', 'test_resnet']
    models = [_random_model(name, images) for name in names]
    checkpoints = []
    for i, (model, name) in enumerate(zip(models, names)):
        checkpoints.append(str(tmp_path / f'run{i}' / 'model_best.pth.tar'))
        (tmp_path / f'run{i}').mkdir()
        _train_checkpoint(model, name, checkpoints[-1])

    saved = [open(c, 'rb').read() for c in checkpoints]
    out = tmp_path / 'out'
    # the model names come from the checkpoints' train.py args; a folder stands for its model_best.pth.tar
    result = main([
        '--checkpoint', checkpoints[0], str(tmp_path / 'run1'), checkpoints[2],
        '--data-dir', str(image_folder), '--img-size', str(IMG_SIZE), '-b', '5', '-j', '0', '--device', 'cpu',
        '--json', str(out / 'r.json'), '--csv', str(out / 'r.csv'), '--plot', str(out / 'r.png'), '--no-progress',
    ])
    assert json.loads((out / 'r.json').read_text()) == json.loads(json.dumps(result))
    assert result['data']['num_samples'] == 4 * NUM_CLASSES
    assert result['data']['input_size'] == [3, IMG_SIZE, IMG_SIZE]

    averaged = []
    with torch.no_grad():
        for model, name, entry in zip(models, names, result['models']):
            assert entry['model'] == name and entry['num_classes'] == NUM_CLASSES and entry['use_ema'] is False
            assert entry['param_count'] == sum(p.numel() for p in model.parameters())
            assert entry['macs'] == _reference_macs(model, images)
            if name == 'test_resnet':
                logits = model(images).numpy()
                ref, _ = _reference_metrics(logits[:, None], labels)
                assert entry['num_splits'] is None and entry['heads'] == [] and entry['oracle'] is None
                assert entry['selection'] == {}
                assert entry['head_macs'] == model.num_features * NUM_CLASSES
                averaged.append(logits)
            else:
                splits = model.forward_splits(images).numpy()
                ref, chosen = _reference_metrics(splits, labels)
                averaged.append(splits.mean(1))
                widths = model.head.widths
                assert entry['num_splits'] == 4
                assert entry['head_macs'] == sum(widths) * NUM_CLASSES
                assert entry['head_param_count'] == sum(p.numel() for p in model.head.parameters())
                for j, head in enumerate(entry['heads']):
                    assert head['name'] == f'FC{j + 1}' and head['width'] == widths[j]
                    assert head['group'] == [widths[0] * j, widths[0] * (j + 1) - 1]
                    assert [head['top1'], head['top5']] == pytest.approx(ref[f'FC{j + 1}'], abs=1e-3)
                assert entry['oracle']['top1'] == pytest.approx(ref['oracle'][0], abs=1e-3)
                assert entry['oracle']['top1'] >= max(h['top1'] for h in entry['heads'])
                for rule, r in entry['selection'].items():
                    assert [r['top1'], r['top5']] == pytest.approx(ref[rule], abs=1e-3), rule
                    if rule in chosen:
                        assert r['chosen'] == pytest.approx(list(chosen[rule]), abs=1e-4)
                    else:
                        assert r['chosen'] is None
            assert [entry['top1'], entry['top5']] == pytest.approx(ref['avg'], abs=1e-3)
            assert entry['top1_err'] == pytest.approx(100 - entry['top1'])

    ensemble, _ = _reference_metrics(np.mean(averaged, 0)[:, None], labels)
    assert result['ensemble']['members'] == 3
    assert [result['ensemble']['top1'], result['ensemble']['top5']] == pytest.approx(ensemble['avg'], abs=1e-3)
    assert result['ensemble']['gain_over_best'] == pytest.approx(
        result['ensemble']['top1'] - max(m['top1'] for m in result['models']), abs=1e-3)

    rows = list(csv.DictReader((out / 'r.csv').open()))
    # per SSM model: 4 heads, averaged, oracle, 5 rules; the baseline: averaged; then the ensemble
    assert len(rows) == 2 * 11 + 1 + 1
    assert rows[4]['output'] == 'averaged' and float(rows[4]['top1']) == result['models'][0]['top1']
    assert rows[-1]['output'] == 'ensemble'
    assert (out / 'r.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.name for p in out.iterdir()) == ['r.csv', 'r.json', 'r.png']  # nothing else written
    assert [open(c, 'rb').read() for c in checkpoints] == saved


def test_evaluate_local_dir(image_folder, tmp_path):
    """Weights published in timm's Hub format (`local-dir:`), with 2 sub-classifiers from its config."""
    images, labels = _reference_inputs(image_folder)
    model = _random_model('test_resnet_ssm', images, num_splits=2)
    timm.models.save_for_hf(model, str(tmp_path / 'hub'), safe_serialization=True)
    result = main([
        '--model', f'local-dir:{tmp_path / "hub"}', '--data-dir', str(image_folder), '--img-size', str(IMG_SIZE),
        '-b', '8', '-j', '0', '--device', 'cpu', '--no-progress', '--no-prefetcher',
    ])
    with torch.no_grad():
        ref, _ = _reference_metrics(model.forward_splits(images).numpy(), labels)
    entry = result['models'][0]
    assert entry['num_splits'] == 2 and len(entry['heads']) == 2 and result['ensemble'] is None
    assert [entry['top1'], entry['heads'][0]['top1'], entry['heads'][1]['top1']] == pytest.approx(
        [ref['avg'][0], ref['FC1'][0], ref['FC2'][0]], abs=1e-3)


def test_evaluate_errors(image_folder, tmp_path, capsys):
    model = timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES)
    ckpt = tmp_path / 'a.pth.tar'
    _train_checkpoint(model, 'test_resnet_ssm', ckpt)
    data = ['--data-dir', str(image_folder), '--device', 'cpu', '-j', '0']

    with pytest.raises(SystemExit) as e:
        main(['--model', 'test_resnet_ssm', 'test_resnet', '--checkpoint', str(ckpt)] + data)
    assert e.value.code == 2 and '2 model names for 1 checkpoints' in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(['--checkpoint', str(tmp_path / 'missing.pth.tar')] + data)
    assert 'missing.pth.tar does not exist' in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(['--checkpoint', str(ckpt), '--num-classes', '3'] + data)
    assert 'give the --model, --num-classes' in capsys.readouterr().err

    (tmp_path / 'truncated.pth.tar').write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(SystemExit):
        main(['--checkpoint', str(tmp_path / 'truncated.pth.tar')] + data)
    assert 'Cannot read checkpoint' in capsys.readouterr().err

    before = (tmp_path / 'keep.json')
    before.write_text('{"kept": true}')
    with pytest.raises(SystemExit):
        main(['--checkpoint', str(ckpt), '--num-classes', '3', '--json', str(before)] + data)
    assert json.loads(before.read_text()) == {'kept': True}


def test_evaluate_input_size_from_checkpoint(image_folder, tmp_path):
    """A 1-channel model trained with `--input-size 1 H W` (train.py leaves in_chans None) loads and sees
    grayscale images at the size, normalization, crop and interpolation it was trained with, without data
    options on the command line."""
    model = timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES, in_chans=1).eval()
    args = argparse.Namespace(model='test_resnet_ssm', num_classes=NUM_CLASSES, in_chans=None,
                              input_size=[1, IMG_SIZE, IMG_SIZE], img_size=None, mean=[0.4], std=[0.2], crop_pct=1.0,
                              crop_mode=None, interpolation='bilinear', model_kwargs={})
    # EMA weights whose sub-classifiers always predict class 2: zero weights, a bias for class 2 only
    ema = {k: torch.zeros_like(v) if k in ('head.weight', 'head.bias') else v for k, v in model.state_dict().items()}
    ema['head.bias'][:, 2] = 1.
    torch.save({'state_dict': model.state_dict(), 'state_dict_ema': ema, 'args': args}, tmp_path / 'gray.pth.tar')
    data = ['--data-dir', str(image_folder), '-b', '24', '-j', '0', '--device', 'cpu', '--no-progress',
            '--no-prefetcher']
    result = main(['--checkpoint', str(tmp_path / 'gray.pth.tar')] + data)
    assert result['data']['input_size'] == [1, IMG_SIZE, IMG_SIZE]
    assert result['data']['mean'] == [0.4] and result['data']['std'] == [0.2]
    assert result['data']['crop_pct'] == 1.0 and result['data']['interpolation'] == 'bilinear'
    assert result['models'][0]['num_splits'] == 4 and result['data']['num_samples'] == 4 * NUM_CLASSES
    assert result['models'][0]['use_ema'] is False

    # the command line wins over the checkpoint's data options
    result = main(['--checkpoint', str(tmp_path / 'gray.pth.tar'), '--img-size', '36', '--mean', '0.5'] + data)
    assert result['data']['input_size'] == [1, 36, 36] and result['data']['mean'] == [0.5]

    # train.py arguments without data options (all defaulted): the model's input size, with the model's channels
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(
        model='test_resnet_ssm', num_classes=NUM_CLASSES, in_chans=1, input_size=None, img_size=None, mean=None,
        std=None, crop_pct=None, interpolation='', model_kwargs={})}, tmp_path / 'gray_default.pth.tar')
    result = main(['--checkpoint', str(tmp_path / 'gray_default.pth.tar')] + data)
    assert result['data']['input_size'] == [1] + list(model.pretrained_cfg['input_size'][1:])
    assert len(result['data']['mean']) == 1

    # the EMA weights when asked for: class 2 for every image, right for 1 image in NUM_CLASSES
    result = main(['--checkpoint', str(tmp_path / 'gray.pth.tar'), '--use-ema'] + data)
    assert result['models'][0]['use_ema'] is True
    assert result['models'][0]['heads'][0]['top1'] == pytest.approx(100 / NUM_CLASSES, abs=1e-3)


def test_evaluate_model_kwargs_over_checkpoint(image_folder, tmp_path):
    """--model-kwargs add to the checkpoint's model arguments instead of replacing them."""
    model = timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES, num_splits=2).eval()
    args = argparse.Namespace(model='test_resnet_ssm', num_classes=NUM_CLASSES, in_chans=3,
                              model_kwargs={'num_splits': 2})
    torch.save({'state_dict': model.state_dict(), 'args': args}, tmp_path / 'n2.pth.tar')
    result = main(['--checkpoint', str(tmp_path / 'n2.pth.tar'), '--model-kwargs', 'norm_all=False',
                   '--data-dir', str(image_folder), '--img-size', str(IMG_SIZE), '-b', '24', '-j', '0',
                   '--device', 'cpu', '--no-progress'])
    assert result['models'][0]['num_splits'] == 2


def _fails(argv, capsys, match):
    return exits_clearly(main, argv, capsys, match)


def test_truncated_safetensors_and_random_bytes(image_folder, tmp_path, capsys):
    model = timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES)
    safetensors.torch.save_file(model.state_dict(), tmp_path / 'model.safetensors')
    data = (tmp_path / 'model.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
    common = ['--model', 'test_resnet_ssm', '--num-classes', str(NUM_CLASSES), '--data-dir', str(image_folder),
              '--device', 'cpu', '-j', '0']
    _fails(['--checkpoint', str(tmp_path / 'cut.safetensors')] + common, capsys,
           'Cannot read .*cut.safetensors: it is truncated or not a safetensors file')
    (tmp_path / 'random.pth.tar').write_bytes(np.random.default_rng(0).bytes(4096))
    _fails(['--checkpoint', str(tmp_path / 'random.pth.tar')] + common, capsys, 'random.pth.tar is not a checkpoint')


def test_outputs_are_checked_before_the_pass(image_folder, tmp_path, capsys, monkeypatch):
    """An output that cannot be written stops the tool before the pass, which would otherwise be lost."""
    model = timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES)
    ckpt = tmp_path / 'a.pth.tar'
    _train_checkpoint(model, 'test_resnet_ssm', ckpt)
    monkeypatch.setattr(evaluate_module, 'evaluate', _not_called)
    data = ['--checkpoint', str(ckpt), '--data-dir', str(image_folder), '--device', 'cpu', '-j', '0']
    (tmp_path / 'folder').mkdir()
    _fails(data + ['--json', str(tmp_path / 'folder')], capsys, '--json .*folder is a folder: give a file name')
    (tmp_path / 'afile').write_text('x')
    _fails(data + ['--csv', str(tmp_path / 'afile' / 'r.csv')], capsys, f'{tmp_path / "afile"} is a file')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.pth.tar', 'afile', 'folder']


def test_missing_data_dir(tmp_path, capsys, monkeypatch):
    model = timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES)
    ckpt = tmp_path / 'a.pth.tar'
    _train_checkpoint(model, 'test_resnet_ssm', ckpt)
    monkeypatch.setattr(evaluate_module, 'evaluate', _not_called)
    _fails(['--checkpoint', str(ckpt), '--data-dir', str(tmp_path / 'no' / 'data'), '--device', 'cpu'], capsys,
           f'--data-dir .*data does not exist \\(the nearest existing folder is {tmp_path}\\)')
    _fails(['--checkpoint', str(ckpt), '--data-dir', str(ckpt), '--device', 'cpu'], capsys, 'is a file, not a folder')
    _fails(['--checkpoint', str(ckpt), '--device', 'cpu'], capsys, 'No data folder: give --data-dir DIR')


def test_default_workers_at_most_the_cpus():
    """4 loader workers, fewer on a machine with fewer cores (torch warns once per loader otherwise)."""
    assert evaluate_module.parser.get_default('workers') == min(4, os.cpu_count() or 1)


def _not_called(*args, **kwargs):
    raise AssertionError('not to be called')


def _images(folder, classes, n=2, size=36):
    rng = np.random.default_rng(1)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / c / f'{i}.png')
    return folder


def _run_folder(tmp_path, model=None, **args):
    """A train.py output folder: last.pth.tar with its train.py arguments and args.yaml, summary.csv."""
    run = tmp_path / 'run'
    run.mkdir()
    model = model or timm.create_model('test_resnet_ssm', num_classes=NUM_CLASSES)
    args = dict(model='test_resnet_ssm', num_classes=NUM_CLASSES, in_chans=3, model_kwargs={}, **args)
    torch.save({'epoch': 1, 'state_dict': model.state_dict(), 'args': argparse.Namespace(**args)},
               run / 'last.pth.tar')
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    (run / 'summary.csv').write_text('epoch,train_loss,eval_top1\n0,1.0,50.0\n')
    return run


def test_data_is_checked_before_the_pass(image_folder, tmp_path, capsys, monkeypatch):
    """Data that timm's readers would silently misread (a missing split, a stray image, other classes, a symlink
    loop, no images) is refused before the models see it, with what is wrong and how to fix it."""
    monkeypatch.setattr(evaluate_module, 'evaluate', _not_called)
    run = _run_folder(tmp_path)
    common = ['--checkpoint', str(run), '--device', 'cpu', '-j', '0', '--img-size', str(IMG_SIZE)]
    classes = [f'class{c}' for c in range(NUM_CLASSES)]

    data = tmp_path / 'data'
    _images(data / 'train', classes)
    _images(data / 'validation', classes)
    _fails(common + ['--data-dir', str(data), '--split', 'test'], capsys,
           '--split test: .*data has no test folder, it has train, validation: give --split')

    Image.new('RGB', (36, 36)).save(data / 'validation' / 'thumbnail.png')
    _fails(common + ['--data-dir', str(data)], capsys,
           '1 image\\(s\\) lie beside the class folders of .*validation \\(such as .*thumbnail.png\\)')
    (data / 'validation' / 'thumbnail.png').unlink()

    for other in (classes[:1], classes + ['class6']):  # 1 and 7 classes for a 6-class model
        wrong = _images(tmp_path / f'wrong{len(other)}' / 'validation', other)
        _fails(common + ['--data-dir', str(wrong.parent)], capsys,
               f'validation has {len(other)} classes \\[class0.*\\], but the model has {NUM_CLASSES}.*--class-map')

    os.symlink('..', data / 'validation' / 'class0' / 'loop')
    _fails(common + ['--data-dir', str(data)], capsys, 'class0/loop is a symlink loop: it leads back to .*validation')
    (data / 'validation' / 'class0' / 'loop').unlink()

    (tmp_path / 'empty' / 'validation').mkdir(parents=True)
    _fails(common + ['--data-dir', str(tmp_path / 'empty')], capsys, 'validation holds no images')
    _images(tmp_path / 'flat', ['validation'])
    _fails(common + ['--data-dir', str(tmp_path / 'flat')], capsys,
           'has no class folders, so its images have no labels')
    _fails(common + ['--dataset', 'torch/cifar10'], capsys, 'No data folder: give --data-dir DIR .*torch/cifar10')
    _fails(common + ['--data-dir', str(data), '--class-map', str(tmp_path / 'nomap.txt')], capsys,
           '--class-map .*nomap.txt does not exist')


def test_classes_are_the_runs_training_classes_or_mapped(tmp_path, capsys):
    """With the run's training data at hand, its class names must be the data's; `--class-map` maps other names
    (timm's `--class-map` file: one name per line, in index order) and the labels follow the map."""
    train = _images(tmp_path / 'trained' / 'train', [f'kind{c}' for c in range(NUM_CLASSES)], n=1)
    other = _images(tmp_path / 'other' / 'validation', [f'c{c}' for c in range(NUM_CLASSES)])
    images, _ = _reference_inputs_of(other)
    model = _random_model('test_resnet_ssm', images)
    run = _run_folder(tmp_path, model, data_dir=str(train.parent))
    common = ['--checkpoint', str(run), '--device', 'cpu', '-j', '0', '--img-size', str(IMG_SIZE), '--no-progress']
    err = _fails(common + ['--data-dir', str(tmp_path / 'other')], capsys,
                 'classes of .*other/validation are not those the model was trained on')
    assert 'data (6): [c0, c1, c2, c3, c4, c5]' in err
    assert 'model (6): [kind0, kind1, kind2, kind3, kind4, kind5]' in err

    # the map gives c5 index 0, c4 index 1, ...: the labels follow it
    (tmp_path / 'map.txt').write_text(''.join(f'c{c}\n' for c in reversed(range(NUM_CLASSES))))
    mapped = main(common + ['--data-dir', str(tmp_path / 'other'), '--class-map', str(tmp_path / 'map.txt')])
    with torch.no_grad():
        pred = model(images).argmax(-1).numpy()
    labels = np.repeat(NUM_CLASSES - 1 - np.arange(NUM_CLASSES), 2)
    assert mapped['models'][0]['top1'] == pytest.approx(100 * np.mean(pred == labels), abs=1e-3)
    # the data of the run's own classes passes
    _images(tmp_path / 'trained' / 'validation', [f'kind{c}' for c in range(NUM_CLASSES)], n=1)
    assert main(common + ['--data-dir', str(tmp_path / 'trained')])['data']['num_samples'] == NUM_CLASSES


def _reference_inputs_of(folder):
    config = resolve_data_config(dict(img_size=IMG_SIZE), model=timm.create_model('test_resnet_ssm'))
    transform = create_transform(**config)
    images = [transform(Image.open(p).convert('RGB')) for c in sorted(folder.iterdir()) for p in sorted(c.iterdir())]
    return torch.stack(images), None


def test_outputs_never_destroy_inputs(image_folder, tmp_path, capsys, monkeypatch):
    """An output that is an input of the run (checkpoint, args.yaml, summary.csv, also through a link) is refused
    even with --overwrite; two outputs in one file are refused; an existing file that is not an earlier output of
    evaluate is refused unless --overwrite; nothing is written or changed by a refusal."""
    run = _run_folder(tmp_path)
    os.link(run / 'last.pth.tar', tmp_path / 'linked.pth.tar')
    saved = {p.name: p.read_bytes() for p in run.iterdir()}
    common = ['--checkpoint', str(run / 'last.pth.tar'), '--data-dir', str(image_folder), '--device', 'cpu', '-j', '0',
              '--img-size', str(IMG_SIZE), '--no-progress', '-b', '24']
    with monkeypatch.context() as m:
        m.setattr(evaluate_module, 'evaluate', _not_called)
        _fails(common + ['--json', str(run / 'last.pth.tar'), '--overwrite'], capsys,
               '--json .*last.pth.tar is .*last.pth.tar, an input of this run that would be lost')
        _fails(common + ['--csv', str(run / 'summary.csv'), '--overwrite'], capsys, 'summary.csv, an input of this run')
        _fails(common + ['--json', str(run / 'args.yaml'), '--overwrite'], capsys, 'args.yaml, an input of this run')
        _fails(common + ['--json', str(tmp_path / 'linked.pth.tar'), '--overwrite'], capsys, 'an input of this run')
        _fails(common + ['--json', str(tmp_path / 'r'), '--csv', str(tmp_path / 'r')], capsys,
               '--json and --csv both name .*r: give each output its own file')
        _fails(common + ['--plot', str(image_folder / 'val' / 'plot.png')], capsys, 'lies in the data folder')
        (tmp_path / 'notes.json').write_text('my notes')
        _fails(common + ['--json', str(tmp_path / 'notes.json')], capsys,
               'notes.json already exists and is not an earlier output of python -m timm_ssm.evaluate: give another '
               'path, or --overwrite')
    assert {p.name: p.read_bytes() for p in run.iterdir()} == saved
    assert (tmp_path / 'notes.json').read_text() == 'my notes'

    outputs = ['--json', str(tmp_path / 'notes.json'), '--csv', str(tmp_path / 'r.csv'), '--plot',
               str(tmp_path / 'r.png')]
    first = main(common + outputs + ['--overwrite'])
    assert json.loads((tmp_path / 'notes.json').read_text())['models'][0]['top1'] == first['models'][0]['top1']
    main(common + outputs)  # earlier outputs of evaluate are replaced without --overwrite
    assert evaluate_module.is_own_output(tmp_path / 'r.png') and evaluate_module.is_own_output(tmp_path / 'r.csv')


def test_ensemble_of_identical_weights_is_refused(tmp_path, image_folder, capsys, monkeypatch):
    """model_best.pth.tar hard-linked to (or a copy of) last.pth.tar, or one checkpoint twice: no ensemble."""
    monkeypatch.setattr(evaluate_module, 'evaluate', _not_called)
    run = _run_folder(tmp_path)
    os.link(run / 'last.pth.tar', run / 'model_best.pth.tar')
    (tmp_path / 'copy.pth.tar').write_bytes((run / 'last.pth.tar').read_bytes())
    common = ['--data-dir', str(image_folder), '--device', 'cpu', '-j', '0', '--img-size', str(IMG_SIZE)]
    for members in ([run / 'last.pth.tar', run / 'model_best.pth.tar'],
                    [run / 'last.pth.tar', tmp_path / 'copy.pth.tar'], [run, run / 'last.pth.tar']):
        _fails(['--checkpoint', *map(str, members)] + common, capsys,
               'hold identical weights .*an ensemble of them measures nothing')


@pytest.mark.parametrize('option,message', [
    (['--img-size', '0'], 'argument --img-size: 0 is outside \\[1, inf\\)'),
    (['--input-size', '3', '0', '32'], 'argument --input-size: 0 is outside'),
    (['--crop-pct', '0'], 'argument --crop-pct: 0 is outside \\(0, 1\\]'),
    (['--std', '0'], 'argument --std: 0 is outside \\(0, inf\\)'),
    (['--interpolation', 'bogus'], "argument --interpolation: 'bogus' is none of nearest, bilinear"),
    (['--model-kwargs', 'num_splits'], "argument --model-kwargs: 'num_splits' is no NAME=VALUE pair"),
    (['-b', '0'], 'argument -b/--batch-size: 0 is outside'),
    (['--num-classes', '-1'], 'argument --num-classes: -1 is outside'),
    (['--amp-dtype', 'float8'], 'argument --amp-dtype: invalid choice'),
])
def test_option_values_out_of_range_are_refused_by_the_parser(option, message, capsys):
    _fails(['--model', 'test_resnet_ssm'] + option, capsys, message)


def test_option_errors_before_the_pass(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluate_module, 'evaluate', _not_called)
    run = _run_folder(tmp_path)
    common = ['--checkpoint', str(run), '--data-dir', str(image_folder), '-j', '0']
    _fails(common + ['--device', 'cpu', '--mean', '0.5', '0.5'], capsys,
           '--mean has 2 values, but the model sees 3 channel\\(s\\): give one value, or one per channel')
    _fails(common + ['--device', 'bogus'], capsys, '--device bogus is no device')
    if not torch.cuda.is_available():
        _fails(common + ['--device', 'cuda'], capsys, '--device cuda: no CUDA GPU is visible here.*--device cpu')
    _fails(common + ['--device', 'cuda:99'], capsys, '--device cuda:99: ')


@pytest.mark.parametrize('line,message', [
    ('model_kwargs: [num_splits, 2]', "model_kwargs is \\['num_splits', 2\\], but train.py writes a mapping"),
    ('input_size: [3, 32]', 'input_size is \\[3, 32\\], but train.py writes three positive integers'),
    ('model: 123', 'model is 123, but train.py writes a model name'),
])
def test_hand_edited_args_yaml(line, message, tmp_path, image_folder, capsys):
    run = _run_folder(tmp_path)
    args = yaml.safe_load((run / 'args.yaml').read_text())
    args.update(yaml.safe_load(line))
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    _fails(['--checkpoint', str(run), '--data-dir', str(image_folder), '--device', 'cpu'], capsys,
           f'args.yaml: {message}.* there: fix or delete that line')


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
from timm_ssm.evaluate import main
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
main(sys.argv[1:])
"""


def test_full_disk_keeps_the_printed_results_and_leaves_no_partial_file(image_folder, tmp_path):
    """A write that fails (here: the file size limit, as a full disk does) is a clear error after the results are
    printed; the earlier file is unchanged and no temporary file is left."""
    run = _run_folder(tmp_path)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'r.csv').write_text(','.join(evaluate_module._CSV_FIELDS) + '\nearlier,,averaged,1,2\n')
    argv = ['--checkpoint', str(run), '--data-dir', str(image_folder), '--device', 'cpu', '-j', '0', '--img-size',
            str(IMG_SIZE), '--no-progress', '-b', '24', '--csv', str(out / 'r.csv'), '--json', str(out / 'r.json')]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get(
        'PYTHONPATH', '')]), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', _FULL_DISK, *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert 'averaged' in proc.stdout and 'images/s' in proc.stdout  # the table came first
    assert re.search('error: Cannot write .*r.json: the file would exceed the size limit .*No partial file is left '
                     'and an earlier file there is unchanged; the results are printed above', proc.stderr)
    assert (out / 'r.csv').read_text().endswith('earlier,,averaged,1,2\n')
    assert sorted(p.name for p in out.iterdir()) == ['r.csv']  # no r.json, no temporary file; --csv not tried
