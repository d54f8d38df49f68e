"""timm_ssm/configs/*.yaml: the paper's ImageNet recipe as timm train.py configs, checked through timm's factories."""
import argparse
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torchvision import transforms

import timm
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_ssm
from timm_ssm import PAPER_MODELS

CONFIGS = Path(__file__).resolve().parent.parent / 'timm_ssm' / 'configs'
PAPER_CONFIGS = [CONFIGS / f'{arch}_ssm.yaml' for arch in PAPER_MODELS]
ALL_CONFIGS = PAPER_CONFIGS + [CONFIGS / 'finetune_ssm.yaml']


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _train_args(cfg: dict) -> argparse.Namespace:
    """train.py's defaults (timm 1.0) overridden by the config, as `train.py -c FILE` does."""
    defaults = dict(
        opt='sgd', momentum=0.9, weight_decay=2e-5, sched='cosine', epochs=300, warmup_epochs=5, warmup_lr=1e-5,
        min_lr=0, decay_milestones=[90, 180, 270], decay_epochs=90, decay_rate=0.1, cooldown_epochs=0,
        smoothing=0.1, color_jitter=0.4, hflip=0.5, vflip=0., scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], aa=None,
        reprob=0., mixup=0., cutmix=0., model_ema=False, opt_kwargs={}, lr=None, lr_base=0.1, lr_base_size=256,
        lr_base_scale='', train_interpolation='random', crop_pct=None, interpolation='', input_size=None,
        mean=None, std=None, sched_on_updates=False,
    )
    return argparse.Namespace(**dict(defaults, **cfg))


def test_one_config_per_paper_model():
    assert sorted(p.name for p in CONFIGS.glob('*.yaml')) == sorted(p.name for p in ALL_CONFIGS)
    for path, arch in zip(PAPER_CONFIGS, PAPER_MODELS):
        cfg = _load(path)
        assert cfg['model'] == f'{arch}_ssm' and timm.is_model(cfg['model'])
        assert timm.is_model(timm_ssm.base_model_name(cfg['model']))  # the baseline: --model <its trunk>


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_recipe_values(path):
    cfg = _load(path)
    assert cfg['num_classes'] == 1000
    assert (cfg['opt'], cfg['momentum'], cfg['weight_decay']) == ('momentum', 0.9, 1e-4)
    assert cfg['opt_kwargs'] == {'filter_bias_and_bn': False}
    assert cfg['lr'] is None
    assert (cfg['lr_base'], cfg['lr_base_size'], cfg['lr_base_scale']) == (0.1, 256, 'linear')
    assert (cfg['epochs'], cfg['sched'], cfg['decay_epochs'], cfg['decay_rate']) == (90, 'step', 30, 0.1)
    assert (cfg['warmup_epochs'], cfg['cooldown_epochs']) == (0, 0)
    # augmentation: random-resized crop 224 + flip only, every timm default that adds more switched off
    assert cfg['input_size'] == [3, 224, 224] and cfg['hflip'] == 0.5 and cfg['vflip'] == 0
    assert cfg['scale'] == [0.08, 1.0]
    assert cfg['color_jitter'] == 0 and cfg['smoothing'] == 0 and cfg['aa'] is None and cfg['reprob'] == 0
    assert cfg['mixup'] == 0 and cfg['cutmix'] == 0 and cfg['cutmix_minmax'] is None
    assert cfg['model_ema'] is False and cfg['aug_splits'] == 0 and cfg['aug_repeats'] == 0
    assert round(224 / cfg['crop_pct']) == 256


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=lambda p: p.stem)
def test_transforms_through_timm(path):
    """The train transform is random-resized crop 224 + flip (no colour jitter); eval resizes to 256, crops 224."""
    args = _train_args(_load(path))
    data_config = resolve_data_config(vars(args), pretrained_cfg=timm.models.get_pretrained_cfg(
        timm.models.split_model_name_tag(args.model)[0]).to_dict())
    train = create_transform(
        **{k: data_config[k] for k in ('input_size', 'mean', 'std')}, is_training=True, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        re_prob=args.reprob, interpolation=args.train_interpolation, train_crop_mode=args.train_crop_mode)
    steps = [t for t in train.transforms if not (  # timm keeps a ColorJitter of 0, which changes nothing
        isinstance(t, transforms.ColorJitter) and t.brightness is t.contrast is t.saturation is t.hue is None)]
    names = [type(t).__name__ for t in steps]
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'MaybeToTensor', 'Normalize']
    rrc = train.transforms[0]
    assert rrc.size == (224, 224) and rrc.scale == (0.08, 1.0)

    evaluation = create_transform(**data_config, is_training=False)
    resize, crop = evaluation.transforms[:2]
    assert isinstance(resize, transforms.Resize) and resize.size == 256
    assert resize.interpolation == transforms.InterpolationMode.BILINEAR
    assert isinstance(crop, transforms.CenterCrop) and tuple(crop.size) == (224, 224)


@pytest.mark.parametrize('path', PAPER_CONFIGS[:1], ids=lambda p: p.stem)
def test_optimizer_and_schedule_through_timm(path):
    """Plain SGD, weight decay on every parameter; lr x0.1 from epoch 30 and from epoch 60, as train.py steps it."""
    args = _train_args(_load(path))
    args.lr = args.lr_base * 512 / args.lr_base_size  # train.py's linear rule, e.g. 2 processes x 256
    assert args.lr == pytest.approx(0.2)
    model = timm.create_model('test_resnet_ssm', num_classes=10, **args.model_kwargs)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    assert isinstance(optimizer, torch.optim.SGD)
    for group in optimizer.param_groups:
        assert (group['nesterov'], group['momentum'], group['weight_decay']) == (False, 0.9, 1e-4)
    assert sum(len(g['params']) for g in optimizer.param_groups) == len(list(model.parameters()))

    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=10)
    assert num_epochs == 90
    lrs = []
    for epoch in range(num_epochs):  # train.py calls step(epoch) before epoch (0-based) `epoch` starts
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs == pytest.approx([0.2] * 30 + [0.02] * 30 + [0.002] * 30)


def test_finetune_config():
    cfg = _load(CONFIGS / 'finetune_ssm.yaml')
    arch, tag = timm.models.split_model_name_tag(cfg['model'])
    assert arch.endswith('_ssm') and tag and cfg['model'] in timm.list_pretrained(arch + '*')
    assert cfg['pretrained'] is True and 'num_classes' not in cfg  # the new data set's, on the command line
    assert (cfg['opt'], cfg['lr_base'], cfg['lr_base_scale'], cfg['smoothing'], cfg['color_jitter']) == (
        'momentum', 0.01, 'linear', 0, 0)


@pytest.mark.skipif(not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py: set TIMM_ROOT to a '
                                                            'pytorch-image-models checkout')
@pytest.mark.parametrize('path', ALL_CONFIGS, ids=lambda p: p.stem)
def test_keys_are_train_py_options(path, monkeypatch):
    """Every key is a dest of train.py's parser, and train.py's own parsing applies the file under the command line."""
    train = runpy.run_path(os.path.join(os.environ['TIMM_ROOT'], 'train.py'), run_name='train_config_check')
    dests = {action.dest for action in train['parser']._actions}
    cfg = _load(path)
    assert not set(cfg) - dests, f'not train.py options: {sorted(set(cfg) - dests)}'
    monkeypatch.setattr(sys, 'argv', ['train.py', '-c', str(path), '--model', 'resnet50', '--data-dir', '/data'])
    args, _ = train['_parse_args']()
    assert args.model == 'resnet50'  # the baseline, one flag apart
    for key, value in cfg.items():
        if key != 'model':
            assert getattr(args, key) == value, key
