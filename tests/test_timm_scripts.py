"""End to end with timm's real scripts, run in this process: train.py through train_timm (resume, a shipped recipe by
name, head options, pretrained starts), validate/inference/benchmark.py through the launcher. Needs a
pytorch-image-models checkout in TIMM_ROOT (timm's scripts are not in its wheel)."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import timm
from PIL import Image
from timm.models import load_checkpoint, load_state_dict
from timm.utils import random_seed

from timm_ssm import evaluate, launch, train_timm

pytestmark = pytest.mark.skipif(not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py and validate.py: set '
                                'TIMM_ROOT to a pytorch-image-models checkout')

CLASSES = ('circle', 'square', 'stripe')
IMAGES_PER_CLASS = 4
TRAIN_ARGS = [
    '--model', 'test_resnet_ssm', '--num-classes', '3', '--img-size', '32', '--device', 'cpu', '--workers', '0',
    '--opt', 'momentum', '--lr', '0.05', '--sched', 'step', '--decay-epochs', '1', '--decay-rate', '0.1',
    '--warmup-epochs', '0', '-b', str(len(CLASSES) * IMAGES_PER_CLASS), '--no-aug', '--smoothing', '0',
    '--model-ema', '--model-ema-decay', '0.5', '--log-interval', '1', '--checkpoint-hist', '2',
]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


def _launch(script: str, *args):
    launch.main([script, *args])


def _train(out: Path, experiment: str, data: Path, *extra) -> Path:
    args = ['--data-dir', str(data), *TRAIN_ARGS, '--output', str(out), '--experiment', experiment, *extra]
    assert train_timm.main(args) == 0
    return out / experiment


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    """A tiny image folder data set: train/ and validation/, one folder of random pictures per class."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(IMAGES_PER_CLASS):
                image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
                image.save(root / split / name / f'{name}{i}.png')
    return root


@pytest.fixture(scope='module')
def runs(image_folder, tmp_path_factory) -> dict:
    """train.py runs: one epoch through train_timm.sh, resumed for a second; two epochs in one go."""
    out = tmp_path_factory.mktemp('train')
    first = _train(out, 'first', image_folder, '--epochs', '1')
    resumed = _train(out, 'resumed', image_folder, '--epochs', '2', '--resume', str(first / 'last.pth.tar'))
    straight = _train(out, 'straight', image_folder, '--epochs', '2')
    return dict(out=out, first=first, resumed=resumed, straight=straight, data=image_folder)


def _summary(run: Path):
    with open(run / 'summary.csv') as f:
        return list(csv.DictReader(f))


def _state(path: Path, ema: bool = False) -> dict:
    model = timm.create_model('test_resnet_ssm', num_classes=3)
    load_checkpoint(model, str(path), use_ema=ema)
    return model.state_dict()


def test_resume_continues_where_it_stopped(runs):
    """Epoch 1 resumed from epoch 0's checkpoint ends with the weights, the head's BatchNorm buffers and the EMA of
    two epochs in one run: weights, optimizer momentum, the lr schedule (x0.1 after epoch 0) and EMA were restored."""
    resumed, straight = _summary(runs['resumed']), _summary(runs['straight'])
    assert [r['epoch'] for r in _summary(runs['first'])] == ['0'] and [r['epoch'] for r in resumed] == ['1']
    assert _state(runs['first'] / 'last.pth.tar')['head.norm.num_batches_tracked'] == 1  # one step an epoch
    assert float(resumed[0]['lr']) == pytest.approx(0.005) == float(straight[1]['lr'])
    for ema in (False, True):
        a = _state(runs['resumed'] / 'last.pth.tar', ema=ema)
        b = _state(runs['straight'] / 'last.pth.tar', ema=ema)
        first = _state(runs['first'] / 'last.pth.tar', ema=ema)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        assert a['head.norm.num_batches_tracked'] == 2
        assert not torch.allclose(a['head.weight'], first['head.weight'])
    assert float(resumed[0]['eval_top1']) == pytest.approx(float(straight[1]['eval_top1']))


def test_validate_inference_benchmark_through_launcher(runs, tmp_path):
    """timm's validate.py (EMA weights and not), inference.py and benchmark.py on train.py's checkpoints, with
    3 classes instead of the model's default 1000."""
    run, data = runs['resumed'], runs['data']
    common = ['--model', 'test_resnet_ssm', '--num-classes', '3', '--img-size', '32', '--device', 'cpu',
              '--workers', '0']
    results = tmp_path / 'validate_ema.json'
    _launch('validate.py', *common, '--data-dir', str(data), '--checkpoint', str(run / 'model_best.pth.tar'),
            '--use-ema', '-b', '12', '--results-file', str(results), '--results-format', 'json')
    top1 = json.loads(results.read_text())['top1']
    best = max(_summary(run), key=lambda r: float(r['eval_top1']))
    assert top1 == pytest.approx(float(best['eval_top1']), abs=0.01)  # train.py's eval of the EMA weights

    pytest.importorskip('pandas', reason='timm\'s inference.py needs pandas')
    _launch('inference.py', *common, '--data-dir', str(data), '--checkpoint', str(run / 'last.pth.tar'),
            '--topk', '3', '--results-file', str(tmp_path / 'predictions.json'), '--results-format', 'json',
            '--no-console-results')
    predictions = json.loads((tmp_path / 'predictions.json').read_text())
    assert len(predictions) == len(CLASSES) * IMAGES_PER_CLASS

    bench = tmp_path / 'bench.json'
    _launch('benchmark.py', '--model', 'test_resnet_ssm', '--num-classes', '3', '--img-size', '32', '--device',
            'cpu', '-b', '4', '--bench', 'inference', '--num-warm-iter', '1', '--num-bench-iter', '5',
            '--results-file', str(bench), '--results-format', 'json')
    assert json.loads(bench.read_text())['model'] == 'test_resnet_ssm'


def test_finetune_config_loads_pretrained_trunk(image_folder, tmp_path, hub_cache):
    """-c finetune_ssm (the shipped timm_ssm/configs/finetune_ssm.yaml, by name) with a `<arch>_ssm.<tag>` model:
    train.py builds it with timm's weights of `<arch>.<tag>` in the trunk (from the offline Hub cache) and a fresh
    head for the new classes."""
    name = 'test_resnet.r160_in1k'
    base = timm.create_model(name)
    weights = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(base.state_dict(), weights)
    hub_cache.put(timm.models.get_pretrained_cfg(name).hf_hub_id, {'model.safetensors': weights})

    # lr 0: the trunk's weights stay the pretrained ones, so the checkpoint shows what train.py loaded
    args = ['-c', 'finetune_ssm', '--data-dir', str(image_folder),
            '--model', 'test_resnet_ssm.r160_in1k', '--num-classes', '3', '--img-size', '32', '--device', 'cpu',
            '--workers', '0', '-b', '12', '--epochs', '1', '--lr-base', '0', '--output', str(tmp_path),
            '--experiment', 'finetune']
    assert train_timm.main(args) == 0
    run = tmp_path / 'finetune'
    state = _state(run / 'last.pth.tar')
    for key, value in base.state_dict().items():
        if not key.startswith('fc.') and 'running_' not in key and 'num_batches' not in key:
            torch.testing.assert_close(state['trunk.' + key], value, msg=key)
    assert state['head.weight'].shape == (3, 240)


def test_train_py_trains_the_table_4_controls(image_folder, tmp_path):
    """`--model-kwargs num_splits=2 split=False`: train.py trains two plain classifiers on all C channels, averaged."""
    args = [a for a in TRAIN_ARGS if a not in ('--model-ema', '--model-ema-decay', '0.5')]
    _launch('train.py', '--data-dir', str(image_folder), *args, '--epochs', '1', '--output', str(tmp_path),
            '--experiment', '2fc', '--model-kwargs', 'num_splits=2', 'split=False')
    model = timm.create_model('test_resnet_ssm', num_classes=3, num_splits=2, split=False)
    load_checkpoint(model, str(tmp_path / '2fc' / 'last.pth.tar'), strict=True)
    state = model.state_dict()
    assert sorted(k for k in state if k.startswith('head.')) == ['head.bias', 'head.weight']
    assert state['head.weight'].shape == (3, 2 * model.head_hidden_size) and state['head.bias'].shape == (2 * 3,)
    first, second = state['head.weight'].chunk(2, 1)
    assert not torch.equal(first, second)  # two classifiers, trained


def _args(model: str = 'test_resnet_ssm', lr_zero: bool = False, aug: bool = False) -> list:
    """TRAIN_ARGS for one plain epoch: no EMA; `lr_zero` keeps the weights the ones train.py started from (only
    BatchNorm statistics move), `aug` leaves timm's default augmentation on."""
    drop = ('--model-ema', '--model-ema-decay', '0.5') + (('--no-aug',) if aug else ())
    args = [a for a in TRAIN_ARGS if a not in drop]
    args[args.index('--model') + 1] = model
    if lr_zero:
        i = args.index('--lr')
        args[i:i + 2] = ['--lr-base', '0']  # train.py takes --lr 0 for unset
    return args + ['--epochs', '1']


def _train_py(data: Path, out: Path, experiment: str, *extra, **kwargs) -> dict:
    """One train.py epoch through the launcher; the state dict (not EMA) of its last checkpoint."""
    _launch('train.py', '--data-dir', str(data), *_args(**kwargs), '--output', str(out), '--experiment', experiment,
            *extra)
    return load_state_dict(str(out / experiment / 'last.pth.tar'), use_ema=False)


def _weights(state: dict) -> dict:
    """The tensors of a state dict that training with lr 0 leaves as they were (no BatchNorm statistics)."""
    return {k: v for k, v in state.items() if 'running_' not in k and 'num_batches' not in k}


@pytest.fixture(scope='module')
def plain_checkpoint(image_folder, tmp_path_factory) -> Path:
    """A plain test_resnet trained by train.py on the same classes: the model a user already has."""
    out = tmp_path_factory.mktemp('plain')
    _train_py(image_folder, out, 'plain', model='test_resnet')
    return out / 'plain' / 'last.pth.tar'


def test_train_py_head_init_scale_and_bias(image_folder, tmp_path):
    """--head-init-scale 0.5 --head-init-bias -2: train.py scales get_classifier().weight and .bias, then sets the
    bias to -2, as on a plain model (lr 0 keeps what train.py set)."""
    state = _train_py(image_folder, tmp_path, 'head_init', '--head-init-scale', '0.5', '--head-init-bias', '-2',
                      lr_zero=True)
    random_seed(42, 0)  # train.py's --seed, before it creates the model
    init = timm.create_model('test_resnet_ssm', num_classes=3).state_dict()
    torch.testing.assert_close(state['head.weight'], init['head.weight'] * 0.5)
    assert state['head.bias'].shape == (4 * 3,) and torch.all(state['head.bias'] == -2)
    for k, v in _weights(init).items():
        if not k.startswith('head.'):
            torch.testing.assert_close(state[k], v, msg=k)


def test_train_py_augmix_with_split_bn(image_folder, tmp_path):
    """timm's AugMix recipe, --aug-splits 2 --jsd-loss --split-bn: the head's BatchNorm splits by augmentation like
    the trunk's (its auxiliary BatchNorm saw the augmented half of each batch)."""
    state = _train_py(image_folder, tmp_path, 'augmix', '--aug-splits', '2', '--jsd-loss', '--split-bn', aug=True)
    for prefix in ('head.norm.', 'trunk.bn1.'):
        assert not torch.equal(state[prefix + 'aux_bn.0.running_mean'], state[prefix + 'running_mean'])
    assert state['head.norm.num_batches_tracked'] == 1
    assert [r['epoch'] for r in _summary(tmp_path / 'augmix')] == ['0']
    # the tools read the run as validate.py reads it cleaned (clean_checkpoint.py --clean-aux-bn drops aux_bn)
    cleaned = tmp_path / 'cleaned.pth'
    torch.save({k: v for k, v in state.items() if 'aux_bn' not in k}, cleaned)
    common = ['--model', 'test_resnet_ssm', '--num-classes', '3', '--img-size', '32', '--device', 'cpu', '-j', '0']
    results = tmp_path / 'validate.json'
    _launch('validate.py', *common, '--data-dir', str(image_folder), '--split', 'validation', '--checkpoint',
            str(cleaned), '--results-file', str(results), '--results-format', 'json')
    result = evaluate.main(['--checkpoint', str(tmp_path / 'augmix' / 'last.pth.tar'), '--data-dir',
                            str(image_folder), '--split', 'validation', '--device', 'cpu', '-j', '0', '--no-progress'])
    assert result['models'][0]['top1'] == pytest.approx(json.loads(results.read_text())['top1'], abs=0.01)


def test_train_py_pretrained_path_of_ssm_weights(image_folder, tmp_path):
    """--pretrained --pretrained-path F with an SSM file: the trunk and the head's BatchNorm load; train.py's
    num_classes=-1 starts the classifier fresh, as for a plain model."""
    model = timm.create_model('test_resnet_ssm', num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    safetensors.torch.save_file(model.state_dict(), tmp_path / 'model.safetensors')
    state = _train_py(image_folder, tmp_path, 'ssm_file', '--pretrained', '--pretrained-path',
                      str(tmp_path / 'model.safetensors'), lr_zero=True)
    for k, v in _weights(model.state_dict()).items():
        if k in ('head.weight', 'head.bias'):
            assert not torch.equal(state[k], v), k
        else:
            torch.testing.assert_close(state[k], v, msg=k)


@pytest.mark.parametrize('option', ['--pretrained-path', '--initial-checkpoint'])
def test_train_py_starts_from_a_plain_model(image_folder, tmp_path, plain_checkpoint, option):
    """A plain train.py checkpoint: the trunk loads it; with --initial-checkpoint the head starts as exactly the plain
    classifier (the last sub-classifier is 4 times it, the others zero), with --pretrained-path it starts fresh."""
    plain = _weights(load_state_dict(str(plain_checkpoint), use_ema=False))
    state = _train_py(image_folder, tmp_path, 'plain', *['--pretrained'] * (option == '--pretrained-path'), option,
                      str(plain_checkpoint), lr_zero=True)
    for k, v in plain.items():
        if not k.startswith('fc.'):
            torch.testing.assert_close(state['trunk.' + k], v, msg=k)
    weight, bias = state['head.weight'], state['head.bias'].view(4, -1)
    if option == '--initial-checkpoint':
        torch.testing.assert_close(weight[:, -96:], 4 * plain['fc.weight'])
        torch.testing.assert_close(bias[-1], 4 * plain['fc.bias'])
        assert not weight[:, :-96].any() and not bias[:-1].any()
    else:
        assert not torch.equal(weight[:, -96:], 4 * plain['fc.weight'])
