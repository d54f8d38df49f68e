""" SSM-individual (the paper's Table 2): a loss per sub-classifier, in a short loop of timm's own parts

timm's `train.py` computes one loss on the model's output, the average of the sub-classifiers' logits (the
paper's "shared" scheme). The individual scheme puts `timm_ssm.IndividualLoss` on the (B, n, classes) logits of
`model.forward_splits`, which `train.py` cannot express, so this does NOT run through `train.py`. It takes
`train.py`'s arguments, parsed by `train.py`'s own argument parser (so every default is `train.py`'s), and
builds what `train.py` builds from them with the same public timm functions: `timm.utils.random_seed`,
`create_model`, `resolve_data_config`, `create_dataset`, `create_loader`, `create_optimizer_v2(**optimizer_kwargs)`,
`create_scheduler_v2(**scheduler_kwargs)`, the same per-update and per-epoch scheduler steps, and
`update_summary`. It writes `OUTPUT/EXPERIMENT/summary.csv` and `last.pth.tar` (with `state_dict` and `args`,
as `train.py`'s checkpoints), so `python -m timm_ssm.evaluate --checkpoint` reads the run like a `train.py` run.

Only single-process training without mixup/cutmix, augmentation splits, EMA, gradient accumulation, resuming
or per-epoch evaluation is supported; other settings are refused with an error rather than ignored.

    TIMM_ROOT=/path/to/pytorch-image-models python benchmarks/train_individual.py --model lcnet_050_ssm \
        --model-kwargs num_splits=4 --data-dir DIR --dataset torch/fashion_mnist --num-classes 10 ...
"""
import importlib.util
import logging
import os
import sys
import time
from collections import OrderedDict
from contextlib import suppress
from typing import List, Optional

import torch
import torch.nn as nn

from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import create_model
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import random_seed, setup_default_logging, update_summary

from timm_ssm import IndividualLoss
from timm_ssm.timm_source import find_timm_root

_logger = logging.getLogger('train_individual')


def train_parser():
    """The argument parser of timm's `train.py` (TIMM_ROOT, else the cached copy of timm's source)."""
    path = os.path.join(find_timm_root(), 'train.py')
    spec = importlib.util.spec_from_file_location('timm_train_script', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the parsers; main() runs only as __main__
    return module.parser


def _refuse_unsupported(args):
    unsupported = {
        '--mixup/--cutmix': args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None,
        '--aug-splits': args.aug_splits > 0,
        '--model-ema': args.model_ema,
        '--grad-accum-steps': args.grad_accum_steps != 1,
        '--resume/--start-epoch': bool(args.resume) or args.start_epoch is not None,
        '--val-split (no per-epoch evaluation here; pass --val-split "")': bool(args.val_split),
        '--pretrained': args.pretrained,
        '--bce-loss/--jsd-loss': args.bce_loss or args.jsd_loss,
        'no --lr (the lr from --lr-base and the batch size)': args.lr is None,
    }
    wrong = [name for name, used in unsupported.items() if used]
    if wrong:
        sys.exit(f'train_individual.py does not support {", ".join(wrong)}; use train.py settings without them.')


def main(argv: Optional[List[str]] = None):
    setup_default_logging()
    args = train_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _refuse_unsupported(args)
    args.prefetcher = not args.no_prefetcher  # as train.py sets it
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    random_seed(args.seed, 0)

    in_chans = args.in_chans or (args.input_size[0] if args.input_size is not None else 3)
    model = create_model(
        args.model,
        in_chans=in_chans,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        drop_block_rate=args.drop_block,
        global_pool=args.gp,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
        **args.model_kwargs,
    )
    if not hasattr(model, 'forward_splits'):
        sys.exit(f'{args.model} has no Split-and-Share head (forward_splits); pass an <arch>_ssm model.')
    if args.num_classes is None:
        args.num_classes = model.num_classes
    data_config = resolve_data_config(vars(args), model=model, verbose=True)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    amp_autocast, loss_scaler = suppress, None
    if args.amp:
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)  # noqa: E731
        if amp_dtype == torch.float16 and device.type == 'cuda':
            loss_scaler = torch.amp.GradScaler('cuda')

    dataset = create_dataset(
        args.dataset,
        root=args.data_dir or args.data,
        split=args.train_split,
        is_training=True,
        class_map=args.class_map,
        download=args.dataset_download,
        batch_size=args.batch_size,
        seed=args.seed,
        repeats=args.epoch_repeats,
        input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L'),
    )
    loader = create_loader(
        dataset,
        input_size=data_config['input_size'],
        batch_size=args.batch_size,
        is_training=True,
        no_aug=args.no_aug,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        re_split=args.resplit,
        train_crop_mode=args.train_crop_mode,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob,
        auto_augment=args.aa,
        interpolation=args.train_interpolation if args.train_interpolation and not args.no_aug
        else data_config['interpolation'],
        mean=data_config['mean'],
        std=data_config['std'],
        num_workers=args.workers,
        pin_memory=args.pin_mem,
        device=device,
        use_prefetcher=args.prefetcher,
        worker_seeding=args.worker_seeding,
    )

    if len(loader) == 0:
        sys.exit(f'The {args.train_split} split holds fewer than one batch of {args.batch_size} images.')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    updates_per_epoch = len(loader)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=True), updates_per_epoch=updates_per_epoch)
    criterion = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else nn.CrossEntropyLoss()
    loss_fn = IndividualLoss(criterion).to(device)

    output_dir = os.path.join(args.output or './output/train', args.experiment or f'{args.model}-individual')
    os.makedirs(output_dir, exist_ok=True)
    _logger.info(f'SSM-individual (IndividualLoss on forward_splits, not train.py): {args.model} '
                 f'{args.model_kwargs}, {num_epochs} epochs of {updates_per_epoch} updates, output {output_dir}')
    num_updates = 0
    for epoch in range(num_epochs):
        model.train()
        loss_sum, seen, start = 0., 0, time.perf_counter()
        for batch_idx, (images, target) in enumerate(loader):
            if not args.prefetcher:
                images, target = images.to(device), target.to(device)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                loss = loss_fn(model.forward_splits(images), target)
            optimizer.zero_grad()
            if loss_scaler is not None:
                loss_scaler.scale(loss).backward()
                loss_scaler.step(optimizer)
                loss_scaler.update()
            else:
                loss.backward()
                optimizer.step()
            num_updates += 1
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
            lr_scheduler.step_update(num_updates=num_updates, metric=loss_sum / seen)
            if batch_idx % args.log_interval == 0 or batch_idx == updates_per_epoch - 1:
                rate = seen / (time.perf_counter() - start)
                _logger.info(f'Train: {epoch} [{batch_idx:>4d}/{updates_per_epoch}] loss {loss_sum / seen:.4f} '
                             f'lr {optimizer.param_groups[0]["lr"]:.3e} {rate:.0f} img/s')
        train_loss = loss_sum / seen
        lrs = [group['lr'] for group in optimizer.param_groups]
        update_summary(epoch, OrderedDict(loss=train_loss), None, filename=os.path.join(output_dir, 'summary.csv'),
                       lr=sum(lrs) / len(lrs), write_header=epoch == 0)
        lr_scheduler.step(epoch + 1, train_loss)
        checkpoint = dict(epoch=epoch, arch=args.model, state_dict=model.state_dict(),
                          optimizer=optimizer.state_dict(), version=2, args=args, metric=train_loss)
        tmp = os.path.join(output_dir, 'last.pth.tar.tmp')
        torch.save(checkpoint, tmp)
        os.replace(tmp, os.path.join(output_dir, 'last.pth.tar'))


if __name__ == '__main__':
    main()
