""" Split-and-Share Module (SSM) classifier head

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

The pooled feature of C channels is cut into n equal groups and sub-classifier i sees the first i groups.
The first n - 1 prefixes pass BatchNorm + ReLU (paper text, Figure 1 and the 28.63 M parameters of
Table 4; `norm_all=True` normalizes all n as in Algorithm 1), each sub-classifier is one Linear, and the
output is the mean of the n logits. `split=False` gives the paper's Table 4 controls instead: n plain Linear
classifiers, each on all C channels, averaged.

All normalized prefixes go through one BatchNorm over their concatenation, and the n sub-classifiers are the blocks
of one weight on the concatenated prefixes (`weight`, K x the sum of the prefix widths) with one bias each (`bias`,
n x K stored flat, 1-D as a Linear's bias, so timm's optimizer exempts it from weight decay as it does a Linear's):
the averaged output is one matmul, and `weight` and `bias` scale and shift it as those of a plain Linear do.
"""
import hashlib
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from timm.layers import get_device_dtype

__all__ = ['SplitShareHead', 'IndividualLoss', 'head_generator', 'check_bool_arg', 'check_int_arg']


def check_bool_arg(name: str, value: Any) -> bool:
    """A boolean model argument: a bool, or the strings true/false in any case (as `--model-kwargs` passes them)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ('true', 'false'):
        return value.strip().lower() == 'true'
    raise ValueError(f'{name} must be True or False (or the string true/false), got {value!r}.')


def check_int_arg(name: str, value: Any) -> int:
    """An integer model argument; a bool, float or string is refused rather than read as a number."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f'{name} must be an integer, got {value!r} ({type(value).__name__}).')


def head_generator() -> torch.Generator:
    """A CPU generator seeded from torch's global RNG state without drawing from it: the head's initial weights
    follow the seed (`torch.manual_seed`) but leave the global stream, which the trunk and train.py's data loader
    draw from, where a plain classifier's would leave it."""
    state = bytes(torch.get_rng_state().tolist())
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(state).digest()[:8], 'little') >> 1)


class SplitShareHead(nn.Module):
    """Split-and-Share classifier head on pooled (pre-logits) features."""

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            num_splits: int = 4,
            norm_all: bool = False,
            split: bool = True,
            norm_kwargs: Optional[Dict[str, float]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: Channels C of the pooled feature, must be divisible by num_splits.
            num_classes: Classes of every sub-classifier, 0 for a pass-through (pooled features out).
            num_splits: Number of channel groups and sub-classifiers n.
            norm_all: BatchNorm + ReLU on all n prefixes (Algorithm 1) instead of the first n - 1.
            split: Split the feature into prefixes. False gives n plain Linear classifiers, each on all C
                channels with no norm, averaged: the 2FC / 3FC controls of the paper's Table 4.
            norm_kwargs: `eps` and `momentum` of the BatchNorm (train.py's --bn-eps, --bn-momentum).
        """
        super().__init__()
        in_features = check_int_arg('in_features', in_features)
        num_splits = check_int_arg('num_splits', num_splits)
        norm_all = check_bool_arg('norm_all', norm_all)
        split = check_bool_arg('split', split)
        if num_splits < 1:
            raise ValueError(f'SplitShareHead needs num_splits >= 1, got {num_splits}.')
        if not split and norm_all:
            raise ValueError(
                'split=False (plain parallel classifiers without norm) cannot be combined with norm_all=True.')
        if split and in_features % num_splits:
            divisors = [d for d in range(2, min(in_features, 16) + 1) if in_features % d == 0]
            raise ValueError(
                f'SplitShareHead cannot split C={in_features} channels into n={num_splits} equal groups: {in_features} '
                f'is not divisible by {num_splits}.' + (f' Use a num_splits such as {divisors}.' if divisors else ''))
        self.in_features = in_features
        self.num_features = in_features
        self.num_splits = num_splits
        self.norm_all = norm_all
        self.split = split
        group = in_features // num_splits if split else 0
        self.widths: List[int] = [group * (i + 1) if split else in_features for i in range(num_splits)]
        self.num_norm = (num_splits if norm_all else num_splits - 1) if split else 0
        self.norm_kwargs = {k: v for k, v in (norm_kwargs or {}).items() if v is not None}
        self.num_classes = 0
        self.register_parameter('weight', None)
        self.register_parameter('bias', None)
        self.norm = nn.Identity()
        self.act = nn.ReLU()
        self.reset(num_classes, device=device, dtype=dtype)

    @property
    def out_features(self) -> int:
        return self.num_classes

    def reset(self, num_classes: int, device=None, dtype=None):
        """Replace the sub-classifiers (0: a pass-through), on the device and dtype of the head's existing layers
        unless given. The BatchNorm of the prefixes is kept, also through num_classes=0."""
        num_classes = check_int_arg('num_classes', num_classes)
        if num_classes < 0:
            raise ValueError(f'SplitShareHead needs num_classes >= 0 (0 for pooled features out), got {num_classes}.')
        dd = get_device_dtype(self, device=device, dtype=dtype)  # rebuilt layers follow the existing ones
        self.num_classes = num_classes
        if num_classes > 0 and self.num_norm and isinstance(self.norm, nn.Identity):
            # a BatchNorm2d over the (B, C, 1, 1) view of the pooled prefixes: BatchNorm1d's statistics, and the
            # layer timm's convert_splitbn_model and freeze_batch_norm_2d convert like the trunk's
            self.norm = nn.BatchNorm2d(sum(self.widths[:self.num_norm]), **self.norm_kwargs, **dd)
            self.norm.train(self.training)
        self.weight = nn.Parameter(torch.empty(num_classes, sum(self.widths), **dd)) if num_classes else None
        self.bias = nn.Parameter(torch.empty(self.num_splits * num_classes, **dd)) if num_classes else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None):
        """Initialise each sub-classifier's block of `weight` and its bias as its own `nn.Linear` would be, from
        `generator` (a CPU generator, `head_generator()` if None: the global RNG is not drawn from)."""
        if self.weight is None or self.bias is None or self.weight.is_meta:
            return
        generator = generator or head_generator()
        weight = torch.empty(self.weight.shape, device='cpu')
        bias = torch.empty(self.bias.shape, device='cpu')
        start = 0
        for i, width in enumerate(self.widths):
            bound = 1 / math.sqrt(width)  # nn.Linear's default: kaiming_uniform_(a=sqrt(5)), bias U(-1/sqrt(fan_in))
            weight[:, start:start + width].uniform_(-bound, bound, generator=generator)
            bias[i * self.num_classes:(i + 1) * self.num_classes].uniform_(-bound, bound, generator=generator)
            start += width
        self.weight.copy_(weight)  # drawn on the CPU: the same values on every device
        self.bias.copy_(bias)

    def converted_classifier(
            self,
            weight: torch.Tensor,
            bias: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`weight` and `bias` of this head that give exactly the logits of a plain Linear classifier (`weight` of
        (K, C), or a 1x1 convolution's (K, C, 1, 1)): the last sub-classifier, on all C channels without norm,
        becomes n times the classifier and the others start at zero."""
        if self.num_norm == self.num_splits:
            raise ValueError(
                'A plain classifier cannot be converted exactly into a head with norm_all=True: the last '
                'sub-classifier sees normalized features. Convert with norm_all=False.')
        if weight.ndim == 4 and weight.shape[2:] == (1, 1):
            weight = weight.flatten(1)
        if self.num_classes <= 0 or tuple(weight.shape) != (self.num_classes, self.in_features):
            raise ValueError(
                f'Classifier weight of shape {tuple(weight.shape)} does not fit a head of '
                f'{self.num_classes} classes on {self.in_features} features.')
        new_weight = weight.new_zeros(self.num_classes, sum(self.widths))
        new_weight[:, -self.in_features:] = weight.detach() * self.num_splits  # the last block: all C channels
        new_bias = weight.new_zeros(self.num_splits * self.num_classes)
        if bias is not None:
            new_bias[-self.num_classes:] = bias.detach() * self.num_splits
        return new_weight, new_bias

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated inputs of the n sub-classifiers: the normalized prefixes (BatchNorm + ReLU), then x for
        each sub-classifier without norm."""
        torch._assert(
            x.ndim == 2,
            'SplitShareHead takes pooled (batch, channels) features: the trunk\'s pooling is off (global_pool=\'\'); '
            'pass a global_pool such as \'avg\' to reset_classifier().')
        parts: List[torch.Tensor] = []
        if self.num_norm > 0:
            torch._assert(
                not self.training or x.shape[0] > 1,
                f'SplitShareHead got a training batch of {x.shape[0]} samples: its BatchNorm needs more than one. Use '
                f'a batch size of 2 or more with drop_last=True, or model.eval() for inference.')
            z = torch.cat([x[:, :w] for w in self.widths[:self.num_norm]], 1)
            parts.append(self.act(self.norm(z[:, :, None, None]).flatten(1)))
        parts += [x] * (self.num_splits - self.num_norm)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    @torch.jit.export
    def forward_splits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every sub-classifier, shape (B, n, num_classes); their mean is `forward(x)`."""
        weight, bias = self.weight, self.bias
        if weight is None or bias is None:
            raise RuntimeError(
                'forward_splits() needs sub-classifiers, but this head has num_classes=0 (pooled features out): '
                'call reset_classifier(num_classes) first.')
        u = self._inputs(x)
        bias = bias.view(self.num_splits, -1)
        logits = []
        start = 0
        for i, width in enumerate(self.widths):
            logits.append(torch.addmm(bias[i], u[:, start:start + width], weight[:, start:start + width].t()))
            start += width
        return torch.stack(logits, 1)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if pre_logits or weight is None or bias is None:
            return x
        # the mean of the n sub-classifiers' logits: one matmul over the concatenated prefixes
        bias = bias.view(self.num_splits, -1).mean(0)
        return torch.addmm(bias, self._inputs(x), weight.t(), alpha=1.0 / self.num_splits)


class IndividualLoss(nn.Module):
    """The individual training scheme of the paper's Table 2: the sum of each sub-classifier's loss (`criterion`,
    cross-entropy by default) on the (B, n, num_classes) logits of `forward_splits`."""

    def __init__(self, criterion: Optional[Callable] = None):
        super().__init__()
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()

    def forward(self, split_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if split_logits.ndim != 3:
            raise ValueError(
                f'IndividualLoss expects (batch, num_splits, num_classes) logits from forward_splits(), '
                f'got shape {tuple(split_logits.shape)}.')
        return sum(self.criterion(split_logits[:, i], target) for i in range(split_logits.shape[1]))
