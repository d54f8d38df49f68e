""" Parameters and multiply-adds of SSM models and their baselines (the paper's Table 4)

`python -m timm_ssm.complexity` prints the README's table for the paper's models; pass model names to profile
others, e.g. `python -m timm_ssm.complexity convnext_tiny vit_base_patch16_224`.

Models are built on the meta device, so profiling ResNeXt-101 takes no memory and about a second.
"""
import argparse
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import timm

from .head import SplitShareHead
from .runs import number_in
from .split_share import PAPER_MODELS, SUFFIX, base_model_name

__all__ = ['count_params', 'head_macs', 'model_macs', 'model_complexity', 'profile', 'markdown_table']

# the paper's Table 4 (ResNet-50 only)
PAPER_PARAMS = {'resnet50': (25.55e6, 28.63e6)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def head_macs(head: nn.Module) -> int:
    """Multiply-adds of a classifier per image: its Linear layers and the one weight of a Split-and-Share head (every
    sub-classifier's block; BatchNorm and ReLU are element-wise)."""
    linear = sum(m.in_features * m.out_features for m in head.modules() if isinstance(m, nn.Linear))
    return linear + sum(m.weight.numel() for m in head.modules() if isinstance(m, SplitShareHead) and m.num_classes)


def model_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-adds of one forward pass per image, counted by PyTorch's FLOP counter (FLOPs / 2)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return counter.get_total_flops() // 2


def model_complexity(model: nn.Module, input_size: Sequence[int]) -> Dict[str, Optional[int]]:
    """`param_count`, `head_param_count`, `macs` (one forward pass of a (C, H, W) `input_size` image, counted by
    torch's FLOP counter) and `head_macs` (exact) of a timm model, with or without a Split-and-Share head."""
    classifier = model.get_classifier() if hasattr(model, 'get_classifier') else None
    classifier = classifier if isinstance(classifier, nn.Module) else None
    return dict(
        param_count=count_params(model),
        head_param_count=count_params(classifier) if classifier is not None else None,
        macs=model_macs(model, input_size),
        head_macs=head_macs(classifier) if classifier is not None else None,
    )


def profile(arch: str, num_classes: int = 1000, input_size: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Parameters and multiply-adds of timm model `arch` and of `<arch>_ssm` (`resnext50`: the paper's name)."""
    with torch.device('meta'):
        base = timm.create_model(base_model_name(arch + SUFFIX), num_classes=num_classes)
        ssm = timm.create_model(arch + SUFFIX, num_classes=num_classes)
    input_size = input_size or base.pretrained_cfg['input_size']
    return dict(
        model=arch,
        params=count_params(base),
        ssm_params=count_params(ssm),
        head_macs=head_macs(base.get_classifier()),
        ssm_head_macs=head_macs(ssm.head),
        macs=model_macs(base, input_size),
        ssm_macs=model_macs(ssm, input_size),
    )


def markdown_table(rows: List[Dict[str, float]]) -> str:
    lines = ['| Model | Params | SSM params | Paper (Table 4) | Head MACs | SSM head MACs | MACs | SSM MACs |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        paper = PAPER_PARAMS.get(r['model'])
        paper = f'{paper[0] / 1e6:.2f} M / {paper[1] / 1e6:.2f} M' if paper else ''
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['ssm_params'] / 1e6:.2f} M | {paper} "
            f"| {r['head_macs'] / 1e6:.2f} M | {r['ssm_head_macs'] / 1e6:.2f} M "
            f"| {r['macs'] / 1e9:.2f} G | {r['ssm_macs'] / 1e9:.2f} G |")
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(prog='python -m timm_ssm.complexity', description=__doc__.split('\n')[0])
    parser.add_argument('models', nargs='*', default=list(PAPER_MODELS), help='timm architectures (no _ssm)')
    parser.add_argument('--num-classes', type=number_in(int, 1), default=1000, help='classes (default: 1000)')
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if not timm.is_model(m.removesuffix(SUFFIX) + SUFFIX)]
    if unknown:
        parser.error(f'{", ".join(unknown)}: no timm architecture of that name (see timm.list_models(), e.g. '
                     f'resnet50, convnext_tiny; without the _ssm suffix)')
    rows = [profile(m.removesuffix(SUFFIX), num_classes=args.num_classes) for m in args.models]
    print(markdown_table(rows))


if __name__ == '__main__':
    main()
