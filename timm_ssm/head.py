""" Split-and-Share Module (SSM) classifier head

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

The pooled feature of C channels is cut into n equal groups and sub-classifier i sees the first i groups.
The first n - 1 prefixes pass BatchNorm + ReLU (paper text, Figure 1 and the 28.63 M parameters of
Table 4; `norm_all=True` normalizes all n as in Algorithm 1), each sub-classifier is one Linear, and the
output is the mean of the n logits. `split=False` gives the paper's Table 4 controls instead: n plain Linear
classifiers, each on all C channels, averaged.

All normalized prefixes go through one BatchNorm over their concatenation, and the n sub-classifiers are the blocks
of one weight on the concatenated prefixes (`weight`, K x the sum of the prefix widths, with one bias per
sub-classifier in `bias`, n x K): the averaged output is one matmul, and `weight` and `bias` scale and shift it as
those of a plain Linear classifier do.
"""
import math
import numbers
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from timm.layers import get_device_dtype

__all__ = ['SplitShareHead', 'IndividualLoss', 'check_bool_arg', 'check_int_arg']


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


def _convert_legacy_on_load(module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args):
    module.convert_legacy_state_dict(state_dict, prefix)


class SplitShareHead(nn.Module):
    """Split-and-Share classifier head on pooled (pre-logits) features."""

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            num_splits: int = 4,
            norm_all: bool = False,
            split: bool = True,
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
        """
        super().__init__()
        in_features = check_int_arg('in_features', in_features)
        num_classes = check_int_arg('num_classes', num_classes)
        num_splits = check_int_arg('num_splits', num_splits)
        norm_all = check_bool_arg('norm_all', norm_all)
        split = check_bool_arg('split', split)
        if num_splits < 1:
            raise ValueError(f'SplitShareHead needs num_splits >= 1, got {num_splits}.')
        if num_classes < 0:
            raise ValueError(f'SplitShareHead needs num_classes >= 0 (0 for pooled features out), got {num_classes}.')
        if not split and norm_all:
            raise ValueError(
                'split=False gives plain parallel classifiers without norm (Table 4\'s controls): '
                'it cannot be combined with norm_all=True.')
        if split and in_features % num_splits:
            divisors = [d for d in range(2, min(in_features, 16) + 1) if in_features % d == 0]
            raise ValueError(
                f'SplitShareHead cannot split C={in_features} channels into n={num_splits} equal groups: '
                f'{in_features} is not divisible by {num_splits}.'
                + (f' Use a num_splits that divides {in_features} (for example {divisors}).' if divisors else '')
            )
        self.in_features = in_features
        self.num_features = in_features
        self.num_splits = num_splits
        self.norm_all = norm_all
        self.split = split
        group = in_features // num_splits if split else 0
        self.widths: List[int] = [group * (i + 1) if split else in_features for i in range(num_splits)]
        self.num_norm = (num_splits if norm_all else num_splits - 1) if split else 0
        self.num_classes = 0
        self.register_parameter('weight', None)
        self.register_parameter('bias', None)
        self.norm = nn.Identity()
        self.act = nn.ReLU()
        self.reset(num_classes, device=device, dtype=dtype)
        # checkpoints of the earlier layout, one Linear per sub-classifier (fc.{i}.weight / .bias), load converted
        self.register_load_state_dict_pre_hook(_convert_legacy_on_load)

    @property
    def out_features(self) -> int:
        return self.num_classes

    def reset(self, num_classes: int, device=None, dtype=None):
        """Replace the sub-classifiers. The BatchNorm of the prefixes is kept, also through num_classes=0.

        Args:
            num_classes: Classes of the new sub-classifiers, 0 for a pass-through.
            device: Device of the new layers, that of the head's existing layers if None.
            dtype: Dtype of the new layers, that of the head's existing layers if None.
        """
        num_classes = check_int_arg('num_classes', num_classes)
        if num_classes < 0:
            raise ValueError(f'SplitShareHead needs num_classes >= 0 (0 for pooled features out), got {num_classes}.')
        dd = get_device_dtype(self, device=device, dtype=dtype)  # rebuilt layers follow the existing ones
        self.num_classes = num_classes
        if num_classes > 0 and self.num_norm and isinstance(self.norm, nn.Identity):
            # a BatchNorm2d over the (B, C, 1, 1) view of the pooled prefixes: BatchNorm1d's statistics, and the
            # layer timm's convert_splitbn_model and freeze_batch_norm_2d convert like the trunk's
            self.norm = nn.BatchNorm2d(sum(self.widths[:self.num_norm]), **dd)
            self.norm.train(self.training)
        if num_classes > 0:
            self.weight = nn.Parameter(torch.empty(num_classes, sum(self.widths), **dd))
            self.bias = nn.Parameter(torch.empty(self.num_splits, num_classes, **dd))
            self.reset_parameters()
        else:
            self.weight = None
            self.bias = None

    @torch.no_grad()
    def reset_parameters(self):
        """Initialise each sub-classifier's block of `weight` and its bias as its own `nn.Linear` would be."""
        if self.weight is None or self.bias is None:
            return
        start = 0
        for i, width in enumerate(self.widths):
            bound = 1 / math.sqrt(width)  # nn.Linear's default: kaiming_uniform_(a=sqrt(5)), bias U(-1/sqrt(fan_in))
            self.weight[:, start:start + width].uniform_(-bound, bound)
            self.bias[i].uniform_(-bound, bound)
            start += width

    def converted_classifier(
            self,
            weight: torch.Tensor,
            bias: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`weight` and `bias` of this head that give exactly the logits of a plain Linear classifier.

        The last sub-classifier (all C channels, no normalization unless `norm_all`) becomes n times the
        classifier and the others start at zero.

        Args:
            weight: The classifier's weight, (num_classes, C); a 1x1 convolution's (num_classes, C, 1, 1) too.
            bias: Its bias, none for a classifier without.
        """
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
        new_bias = weight.new_zeros(self.num_splits, self.num_classes)
        if bias is not None:
            new_bias[-1] = bias.detach() * self.num_splits
        return new_weight, new_bias

    @torch.no_grad()
    def init_from_classifier(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        """Start from a plain Linear classifier so that the averaged logits equal its logits."""
        new_weight, new_bias = self.converted_classifier(weight, bias)
        self.weight.copy_(new_weight)
        self.bias.copy_(new_bias)

    def convert_legacy_state_dict(self, state_dict: Dict[str, Any], prefix: str = ''):
        """Convert, in place, the entries of this head in the earlier layout of one Linear per sub-classifier
        (`fc.{i}.weight`, `fc.{i}.bias`) into `weight` and `bias`; other entries are left as they are."""
        pattern = re.compile(re.escape(prefix) + r'fc\.(\d+)\.(weight|bias)$')
        found = {}
        for key in list(state_dict):
            match = pattern.match(key)
            if match:
                found[(int(match.group(1)), match.group(2))] = state_dict.pop(key)
        if not found:
            return
        count = 1 + max(i for i, _ in found)
        missing = [f'{prefix}fc.{i}.{p}' for i in range(count) for p in ('weight', 'bias') if (i, p) not in found]
        if missing:
            raise RuntimeError(
                f'The state dict holds the earlier per-sub-classifier layout of the head ({prefix}fc.i.weight/.bias) '
                f'but lacks {", ".join(missing)}: it is incomplete.')
        state_dict[prefix + 'weight'] = torch.cat([found[(i, 'weight')] for i in range(count)], 1)
        state_dict[prefix + 'bias'] = torch.stack([found[(i, 'bias')] for i in range(count)])

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated inputs of the n sub-classifiers: the normalized prefixes (BatchNorm + ReLU), then x for
        each sub-classifier without norm."""
        torch._assert(
            x.ndim == 2,
            'SplitShareHead takes pooled (batch, channels) features: the trunk\'s pooling is off (global_pool=\'\'); '
            'pass a global_pool such as \'avg\' to reset_classifier().')
        parts: List[torch.Tensor] = []
        if self.num_norm > 0:
            if self.training:
                torch._assert(
                    x.shape[0] > 1,
                    f'SplitShareHead got a training batch of {x.shape[0]} samples: its BatchNorm needs more than one '
                    f'sample per batch. Use a batch size of 2 or more and drop the last incomplete batch '
                    f'(DataLoader(..., drop_last=True)), or call model.eval() for inference.',
                )
            z = torch.cat([x[:, :w] for w in self.widths[:self.num_norm]], 1)
            parts.append(self.act(self.norm(z[:, :, None, None]).flatten(1)))
        for _ in range(self.num_splits - self.num_norm):
            parts.append(x)
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
        return torch.addmm(bias.mean(0), self._inputs(x), weight.t(), alpha=1.0 / self.num_splits)


class IndividualLoss(nn.Module):
    """The individual training scheme of the paper's Table 2: each sub-classifier gets its own loss.

    Takes the (B, n, num_classes) logits of `forward_splits` and returns the sum of the n losses.
    """

    def __init__(self, criterion: Optional[Callable] = None):
        """
        Args:
            criterion: Loss of one sub-classifier's logits and the target, cross-entropy by default.
        """
        super().__init__()
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()

    def forward(self, split_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if split_logits.ndim != 3:
            raise ValueError(
                f'IndividualLoss expects (batch, num_splits, num_classes) logits from forward_splits(), '
                f'got shape {tuple(split_logits.shape)}.')
        return sum(self.criterion(split_logits[:, i], target) for i in range(split_logits.shape[1]))
