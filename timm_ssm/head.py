""" Split-and-Share Module (SSM) classifier head

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

The pooled feature of C channels is cut into n equal groups and sub-classifier i sees the first i groups.
The first n - 1 prefixes pass BatchNorm1d + ReLU (paper text, Figure 1 and the 28.63 M parameters of
Table 4; `norm_all=True` normalizes all n as in Algorithm 1), each sub-classifier is one Linear, and the
output is the mean of the n logits. `split=False` gives the paper's Table 4 controls instead: n plain Linear
classifiers, each on all C channels, averaged.

All normalized prefixes go through one BatchNorm1d over their concatenation, and the n sub-classifiers
accumulate into one output, without materializing the n logits.
"""
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from timm.layers import get_device_dtype

__all__ = ['SplitShareHead', 'IndividualLoss']


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
            norm_all: BatchNorm1d + ReLU on all n prefixes (Algorithm 1) instead of the first n - 1.
            split: Split the feature into prefixes. False gives n plain Linear classifiers, each on all C
                channels with no norm, averaged: the 2FC / 3FC controls of the paper's Table 4.
        """
        super().__init__()
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
        self.norm = nn.Identity()
        self.act = nn.ReLU()
        self.fc = nn.ModuleList()
        self.reset(num_classes, device=device, dtype=dtype)

    def reset(self, num_classes: int, device=None, dtype=None):
        """Replace the sub-classifiers. The BatchNorm of the prefixes is kept, also through num_classes=0.

        Args:
            num_classes: Classes of the new sub-classifiers, 0 for a pass-through.
            device: Device of the new layers, that of the head's existing layers if None.
            dtype: Dtype of the new layers, that of the head's existing layers if None.
        """
        if num_classes < 0:
            raise ValueError(f'SplitShareHead needs num_classes >= 0 (0 for pooled features out), got {num_classes}.')
        dd = get_device_dtype(self, device=device, dtype=dtype)  # rebuilt layers follow the existing ones
        self.num_classes = num_classes
        if num_classes > 0 and self.num_norm and not isinstance(self.norm, nn.BatchNorm1d):
            self.norm = nn.BatchNorm1d(sum(self.widths[:self.num_norm]), **dd)
            self.norm.train(self.training)
        fc = [nn.Linear(w, num_classes, **dd) for w in self.widths] if num_classes > 0 else []
        self.fc = nn.ModuleList(fc).train(self.training)

    @torch.no_grad()
    def init_from_classifier(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        """Start from a plain Linear classifier so that the averaged logits equal its logits.

        The last sub-classifier (all C channels, no normalization unless `norm_all`) becomes n times the
        classifier and the others start at zero.
        """
        if self.num_norm == self.num_splits:
            raise ValueError(
                'A plain classifier cannot be converted exactly into a head with norm_all=True: the last '
                'sub-classifier sees normalized features. Convert with norm_all=False.')
        if self.num_classes <= 0 or tuple(weight.shape) != (self.num_classes, self.in_features):
            raise ValueError(
                f'Classifier weight of shape {tuple(weight.shape)} does not fit a head of '
                f'{self.num_classes} classes on {self.in_features} features.')
        for fc in self.fc[:-1]:
            fc.weight.zero_()
            fc.bias.zero_()
        self.fc[-1].weight.copy_(weight * self.num_splits)
        if bias is None:
            self.fc[-1].bias.zero_()
        else:
            self.fc[-1].bias.copy_(bias * self.num_splits)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm1d + ReLU of the normalized prefixes, concatenated (x itself when none is normalized)."""
        torch._assert(
            x.ndim == 2,
            'SplitShareHead takes pooled (batch, channels) features: the trunk\'s pooling is off (global_pool=\'\'); '
            'pass a global_pool such as \'avg\' to reset_classifier().')
        if self.num_norm == 0:
            return x
        if self.training:
            torch._assert(
                x.shape[0] > 1,
                f'SplitShareHead got a training batch of {x.shape[0]} samples: its BatchNorm1d needs more than one '
                f'sample per batch. Use a batch size of 2 or more and drop the last incomplete batch '
                f'(DataLoader(..., drop_last=True)), or call model.eval() for inference.',
            )
        return self.act(self.norm(torch.cat([x[:, :w] for w in self.widths[:self.num_norm]], 1)))

    @torch.jit.export
    def forward_splits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every sub-classifier, shape (B, n, num_classes); their mean is `forward(x)`."""
        if self.num_classes <= 0:
            raise RuntimeError(
                'forward_splits() needs sub-classifiers, but this head has num_classes=0 (pooled features out): '
                'call reset_classifier(num_classes) first.')
        z = self._normalized(x)
        logits = []
        start = 0
        for i, fc in enumerate(self.fc):
            width = self.widths[i]
            if i < self.num_norm:
                logits.append(fc(z[:, start:start + width]))
                start += width
            else:
                logits.append(fc(x))
        return torch.stack(logits, 1)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits or self.num_classes <= 0:
            return x
        z = self._normalized(x)
        # the sub-classifiers accumulate into one output (no n logits to stack); dividing once at the end keeps
        # the backward pass free of per-layer scaling
        out = torch.stack([fc.bias for fc in self.fc]).sum(0)
        start = 0
        for i, fc in enumerate(self.fc):
            width = self.widths[i]
            if i < self.num_norm:
                out = torch.addmm(out, z[:, start:start + width], fc.weight.t())
                start += width
            else:
                out = torch.addmm(out, x, fc.weight.t())
        return out / self.num_splits


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
