"""timm_ssm/configs/*.yaml: recipes as train.py reads them, checked through train.py's parser and timm's factories."""
import os

import pytest
import torch
import yaml
from torchvision import transforms

import timm
from timm.data import create_transform, resolve_data_config
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_ssm
from timm_ssm.timm_source import parse_train_args
from timm_ssm.train_timm import CONFIG_DIR, config_names

pytestmark = pytest.mark.skipif(not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py: set TIMM_ROOT to a '
                                                                        'pytorch-image-models checkout')
IMAGENET = [n for n in config_names() if n != 'fashion_mnist']


def _args(name: str, *argv: str):
    return parse_train_args(['-c', str(CONFIG_DIR / f'{name}.yaml'), '--data-dir', '/data', *argv])


@pytest.mark.parametrize('name', config_names())
def test_keys_are_train_py_options(name):
    """Every key is an option of train.py, whose parsing applies the file under the command line; the model and the
    baseline one flag apart (`--model <trunk>`) are registered."""
    cfg = yaml.safe_load((CONFIG_DIR / f'{name}.yaml').read_text())
    assert not set(cfg) - set(vars(parse_train_args([])))
    args = _args(name, '--model', 'resnet50')
    assert args.model == 'resnet50' and all(getattr(args, k) == v for k, v in cfg.items() if k != 'model')
    assert timm.is_model(cfg['model']) and timm.is_model(timm_ssm.base_model_name(cfg['model']))


@pytest.mark.parametrize('name', IMAGENET)
def test_transforms_through_timm(name):
    """The paper's augmentation: random-resized crop 224 + flip (no colour jitter); eval resizes to 256, crops 224."""
    args = _args(name)
    data_config = resolve_data_config(vars(args), pretrained_cfg=timm.models.get_pretrained_cfg(
        timm.models.split_model_name_tag(args.model)[0]).to_dict())
    train = create_transform(
        **{k: data_config[k] for k in ('input_size', 'mean', 'std')}, is_training=True, scale=args.scale,
        ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        re_prob=args.reprob, interpolation=args.train_interpolation, train_crop_mode=args.train_crop_mode)
    steps = [t for t in train.transforms if not (  # timm keeps a ColorJitter of 0, which changes nothing
        isinstance(t, transforms.ColorJitter) and t.brightness is t.contrast is t.saturation is t.hue is None)]
    assert [type(t).__name__ for t in steps] == [
        'RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'MaybeToTensor', 'Normalize']
    assert train.transforms[0].size == (224, 224) and train.transforms[0].scale == (0.08, 1.0)
    assert (args.smoothing, args.mixup, args.cutmix, args.model_ema) == (0, 0, 0, False)
    resize, crop = create_transform(**data_config, is_training=False).transforms[:2]
    assert isinstance(resize, transforms.Resize) and resize.size == 256
    assert resize.interpolation == transforms.InterpolationMode.BILINEAR
    assert isinstance(crop, transforms.CenterCrop) and tuple(crop.size) == (224, 224)


def test_optimizer_and_schedule_through_timm():
    """Plain SGD, weight decay 1e-4 on every parameter; lr 0.1 per 256 images, x0.1 from epoch 30 and from 60."""
    args = _args('resnet50_ssm')
    args.lr = args.lr_base * 512 / args.lr_base_size  # train.py's linear rule, e.g. 2 processes x 256
    model = timm.create_model('test_resnet_ssm', num_classes=10, **args.model_kwargs)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    assert isinstance(optimizer, torch.optim.SGD)
    for group in optimizer.param_groups:
        assert (group['nesterov'], group['momentum'], group['weight_decay']) == (False, 0.9, 1e-4)
    assert sum(len(g['params']) for g in optimizer.param_groups) == len(list(model.parameters()))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=10)
    lrs = []
    for epoch in range(num_epochs):  # train.py calls step(epoch) before epoch (0-based) `epoch` starts
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs == pytest.approx([0.2] * 30 + [0.02] * 30 + [0.002] * 30)
