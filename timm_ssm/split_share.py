""" Split-and-Share Module (SSM) for every timm model

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

`SplitShareNet` wraps any timm model: the trunk keeps everything up to its pooled pre-logits features and a
`SplitShareHead` replaces its classifier. Importing this module registers `<arch>_ssm` for every timm
architecture that has a classifier, and `<arch>_ssm.<tag>` for each of its pretrained tags: those load timm's
weights for `<arch>.<tag>` into the trunk and start the head from the original classifier, so the SSM model's
logits equal the original model's until it is trained.
"""
import dataclasses
import logging
import re
from typing import Any, Callable, Dict, List, Optional, Set, Union

import torch
import torch.nn as nn

from timm.layers import get_device_dtype
from timm.models import (
    DefaultCfg,
    build_model_with_cfg,
    create_model,
    get_arch_pretrained_cfgs,
    get_pretrained_cfg,
    list_models,
    register_model,
    resolve_pretrained_cfg,
    split_model_name_tag,
)

from .head import SplitShareHead

__all__ = ['SplitShareNet', 'SUFFIX', 'PAPER_MODELS', 'PAPER_ALIASES', 'base_model_name']

_logger = logging.getLogger(__name__)

SUFFIX = '_ssm'
PAPER_MODELS = ('resnet18', 'resnet50', 'resnet101', 'resnext50', 'resnext101')  # the paper's Table 1
# the paper names its ResNeXts without a width; its baselines (77.19, 78.46 top-1) fit the 32x4d ones
PAPER_ALIASES = {'resnext50': 'resnext50_32x4d', 'resnext101': 'resnext101_32x4d'}


def base_model_name(model_name: str) -> str:
    """Name of the timm architecture under an SSM model name: `resnet50_ssm.a1_in1k` -> `resnet50`.

    The paper's names `resnext50_ssm` and `resnext101_ssm` give the ResNeXt 32x4d trunks.
    """
    arch = split_model_name_tag(model_name)[0]
    if not arch.endswith(SUFFIX):
        raise ValueError(f'{model_name} is not an SSM model name: it should end in {SUFFIX} (before any .tag).')
    arch = arch[:-len(SUFFIX)]
    return PAPER_ALIASES.get(arch, arch)


def _prefix(names: Union[str, tuple, list, None], prefix: str):
    if not names:
        return names
    if isinstance(names, str):
        return prefix + names
    return tuple(prefix + n for n in names)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _classifier_as_linear(classifier: Any, in_features: int, num_classes: int):
    """Weight and bias of a classifier that is one affine map of the pooled feature, else None."""
    if isinstance(classifier, nn.Linear):
        weight = classifier.weight
    elif isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1) and classifier.groups == 1:
        weight = classifier.weight.flatten(1)
    else:
        return None
    if tuple(weight.shape) != (num_classes, in_features):
        return None
    return weight, classifier.bias


class SplitShareNet(nn.Module):
    """A timm model with its classifier replaced by a Split-and-Share head."""

    def __init__(
            self,
            model_name: str,
            num_classes: int = 1000,
            num_splits: int = 4,
            norm_all: bool = False,
            split: bool = True,
            in_chans: int = 3,
            global_pool: Optional[str] = None,
            pretrained_trunk: bool = False,
            trunk_kwargs: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            model_name: timm model of the trunk, with an optional pretrained tag (`resnet50.a1_in1k`).
            num_classes: Classes of the head, 0 for the pooled features.
            num_splits: Channel groups and sub-classifiers n of the head.
            norm_all: BatchNorm1d + ReLU on all n prefixes (Algorithm 1) instead of the first n - 1.
            split: False for n plain Linear classifiers on all C channels, averaged (Table 4's controls).
            in_chans: Input image channels.
            global_pool: Pooling of the trunk, its default if None, '' for none (only with num_classes=0).
            pretrained_trunk: Load timm's pretrained weights into the trunk and, when its classifier has
                num_classes outputs, start the head from that classifier.
            trunk_kwargs: Other arguments of `timm.create_model` for the trunk (drop_path_rate, img_size,
                pretrained_cfg, ...).
        """
        super().__init__()
        if num_classes < 0 or num_splits < 1:
            raise ValueError(
                f'A Split-and-Share model needs num_classes >= 0 (0 for pooled features out) and num_splits >= 1, '
                f'got num_classes={num_classes}, num_splits={num_splits}.')
        if global_pool == '' and num_classes > 0:
            raise ValueError(
                "global_pool='' leaves the features unpooled, but the Split-and-Share head needs pooled "
                "features: use global_pool='' only with num_classes=0.")
        trunk_kwargs = dict(trunk_kwargs or {})
        if global_pool is not None:
            trunk_kwargs['global_pool'] = global_pool
        if not pretrained_trunk:
            trunk_kwargs['num_classes'] = 0  # no classifier to build, the head replaces it
        trunk = create_model(
            model_name,
            pretrained=pretrained_trunk,
            in_chans=in_chans,
            device=device,
            dtype=dtype,
            **trunk_kwargs,
        )
        if not hasattr(trunk, 'reset_classifier'):
            raise ValueError(
                f'{model_name} ({type(trunk).__name__}) has no classifier to replace (no reset_classifier()): '
                f'the Split-and-Share head needs a timm classification model.')
        classifier = trunk.get_classifier() if pretrained_trunk else None
        pretrained_classes = trunk.pretrained_cfg.get('num_classes') if pretrained_trunk else None
        num_params = _num_params(trunk)
        trunk.reset_classifier(0)
        # a head that held more than its classifier (a norm before it, an MLP) loses pretrained layers here
        classifier_only = isinstance(classifier, nn.Module) and (
            num_params - _num_params(trunk) == _num_params(classifier))

        self.trunk = trunk
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = trunk.num_features
        self.head_hidden_size = getattr(trunk, 'head_hidden_size', trunk.num_features)
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = SplitShareHead(
            self.head_hidden_size,
            num_classes,
            num_splits=num_splits,
            norm_all=norm_all,
            split=split,
            device=device,
            dtype=dtype,
        )
        if classifier is not None and num_classes > 0 and pretrained_classes == num_classes:
            self._init_head_from(classifier, classifier_only, model_name)

    def _init_head_from(self, classifier: Any, classifier_only: bool, model_name: str):
        linear = None
        if self.head.norm_all:
            reason = 'norm_all=True normalizes the features of the last sub-classifier'
        else:
            linear = _classifier_as_linear(classifier, self.head.in_features, self.num_classes)
            reason = f'its classifier is {type(classifier).__name__}, not one Linear on the pooled features'
            if linear is not None and not classifier_only:
                linear = None
                reason = f'its head holds more than the {type(classifier).__name__} classifier, such as a norm'
        if linear is None:
            _logger.warning(
                f'The pretrained classifier of {model_name} cannot start the Split-and-Share head ({reason}): '
                f'the trunk is pretrained, the head starts fresh.')
            return
        self.head.init_from_classifier(*linear)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Union[Dict[str, Any], Callable]:
        """The trunk's layer groups under `trunk.`; the head is the last group (for `--layer-decay`)."""
        matcher = self.trunk.group_matcher(coarse=coarse)
        if callable(matcher):
            return lambda name: matcher(name[len('trunk.'):]) if name.startswith('trunk.') else (float('inf'),)

        def _prefixed(pattern: str) -> str:
            # re.match anchors at the start, so '^' at the start of each alternative moves behind the prefix
            return r'^trunk\.(?:' + re.sub(r'(^|\|)\^', r'\1', pattern) + ')'

        out = {}
        for group, spec in matcher.items():
            if spec is None:
                out[group] = None
            elif isinstance(spec, (tuple, list)):
                out[group] = [(_prefixed(s[0]), s[1]) for s in spec]
            else:
                out[group] = _prefixed(spec)
        return out

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.trunk.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        no_wd = self.trunk.no_weight_decay() if hasattr(self.trunk, 'no_weight_decay') else set()
        return {'trunk.' + n for n in no_wd}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """Replace the sub-classifiers and optionally the trunk's pooling.

        The new layers take the model's device, dtype and train/eval mode. While the pooled width stays the same,
        the head's BatchNorm (weights and running statistics) is kept, also through `reset_classifier(0)`; a
        `global_pool` that changes the pooled width (`'catavgmax'`) rebuilds the whole head for the new width.

        Args:
            num_classes: Classes of the new head, 0 for the pooled features.
            global_pool: Pooling type of the trunk, unchanged if None, '' for none (only with num_classes=0).
        """
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0 (0 for pooled features out), got {num_classes}.')
        if global_pool == '' and num_classes > 0:
            raise ValueError(
                "global_pool='' leaves the features unpooled, but the Split-and-Share head needs pooled "
                "features: use global_pool='' only with num_classes=0.")
        dd = get_device_dtype(self)
        if global_pool is not None:
            width = self._pooled_width(global_pool) if global_pool else self.head.in_features
            self.trunk.reset_classifier(0, global_pool)
            self.global_pool = global_pool
            if width != self.head.in_features:
                head = self.head
                self.head = SplitShareHead(
                    width, 0, num_splits=head.num_splits, norm_all=head.norm_all, split=head.split, **dd)
                self.head.train(head.training)
                self.head_hidden_size = width
        self.num_classes = num_classes
        self.head.reset(num_classes, **dd)

    def _pooled_width(self, global_pool: str) -> int:
        """Width of the trunk's pooled feature under `global_pool`, read off the classifier the trunk builds for it
        (the caller removes that classifier again)."""
        self.trunk.reset_classifier(1, global_pool)
        classifier = self.trunk.get_classifier()
        return getattr(classifier, 'in_features', getattr(classifier, 'in_channels', self.head.in_features))

    # timm's newer model API, present exactly when the trunk has it: as properties, a trunk without the method
    # leaves hasattr(model, name) False, as timm's tests and downstream libraries check it
    __jit_unused_properties__ = ['forward_intermediates', 'prune_intermediate_layers', 'set_input_size']

    @property
    def forward_intermediates(self) -> Callable:
        """The trunk's `forward_intermediates(x, indices=None, ...)`: features of several stages."""
        return self.trunk.forward_intermediates

    @property
    def set_input_size(self) -> Callable:
        """The trunk's `set_input_size(img_size=None, ...)`."""
        return self.trunk.set_input_size

    @property
    def prune_intermediate_layers(self) -> Callable:
        """The trunk's `prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)`; `prune_head` also
        removes the Split-and-Share head."""
        prune = self.trunk.prune_intermediate_layers

        def _prune(indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True):
            take_indices = prune(indices, prune_norm=prune_norm, prune_head=prune_head)
            if prune_head:
                self.reset_classifier(0, '')
            return take_indices
        return _prune

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.trunk.forward_head(x, pre_logits=True)
        return x if pre_logits else self.head(x)

    @torch.jit.export
    def forward_splits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every sub-classifier for an image batch, shape (B, n, num_classes).

        Their mean over dim 1 is `forward(x)`.
        """
        return self.head.forward_splits(self.forward_head(self.forward_features(x), pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


_MODEL_ARGS = ('num_classes', 'num_splits', 'norm_all', 'split', 'in_chans', 'global_pool', 'device', 'dtype')


def _classifier_names(num_splits: int) -> tuple:
    return tuple(f'head.fc.{i}' for i in range(num_splits))


def _trunk_cfg(cfg: Dict[str, Any], arch: str) -> Dict[str, Any]:
    """The trunk's pretrained cfg from an SSM model's: the trunk's architecture and layer names."""
    base = get_pretrained_cfg(arch)
    return dict(
        cfg,
        architecture=arch,
        first_conv=base.first_conv if base is not None else None,
        classifier=base.classifier if base is not None else None,
    )


def _create_features(variant: str, arch: str, pretrained: bool, cfg: Dict[str, Any], **kwargs) -> nn.Module:
    """`features_only=True`: the trunk's own feature extraction, with the trunk's weights of the SSM model."""
    head_args = {k: kwargs.pop(k) for k in ('num_splits', 'norm_all', 'split') if k in kwargs}
    trunk_cfg = _trunk_cfg(cfg, arch)
    if pretrained and cfg.get('source') in ('hf-hub', 'local-dir'):
        # weights published as a whole SSM model: load them, then hand the trunk's to timm's feature builder
        model_args = {k: kwargs[k] for k in ('in_chans', 'img_size', 'cache_dir') if k in kwargs}
        model = _create_split_share(variant, True, pretrained_cfg=cfg, num_classes=0, **head_args, **model_args)
        trunk_cfg = dict(trunk_cfg, source=None, state_dict=model.trunk.state_dict())
    return create_model(arch, pretrained=pretrained, pretrained_cfg=trunk_cfg, features_only=True, **kwargs)


def _create_split_share(variant: str, pretrained: bool = False, **kwargs) -> SplitShareNet:
    arch = base_model_name(variant)
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.pop('pretrained_cfg', None),
        pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None),
    ).to_dict()
    if kwargs.pop('features_only', False):
        return _create_features(variant, arch, pretrained, cfg, **kwargs)

    # Weights published as an SSM model (hf-hub:, local-dir:) load into the whole model. Registry tags name
    # timm's weights of the trunk architecture: the trunk loads them with its own loader (checkpoint filters,
    # input adaptation) and the head starts from its classifier.
    ssm_weights = cfg.get('source') in ('hf-hub', 'local-dir')
    kwargs['pretrained_cfg'] = _trunk_cfg(cfg, arch)
    # the head's classifiers replace the trunk's, and any label offset of the trunk's weights is applied there
    cfg = dict(cfg, classifier=_classifier_names(kwargs.get('num_splits', 4)), label_offset=None)
    model_args = {k: kwargs.pop(k) for k in _MODEL_ARGS if k in kwargs}
    build_args = {k: kwargs.pop(k) for k in ('cache_dir', 'pretrained_model_args') if k in kwargs}
    if build_args.get('cache_dir') is not None:
        kwargs['cache_dir'] = build_args['cache_dir']
    return build_model_with_cfg(
        SplitShareNet,
        variant,
        pretrained=pretrained and ssm_weights,
        pretrained_cfg=cfg,
        kwargs_filter=('img_size',),  # a trunk argument, passed on in trunk_kwargs
        model_name=arch,
        pretrained_trunk=pretrained and not ssm_weights,
        trunk_kwargs=kwargs,
        **model_args,
        **build_args,
    )


def _split_share_cfgs(arch: str) -> Optional[DefaultCfg]:
    """Pretrained cfgs of `<arch>_ssm`, one per tag of `<arch>`, pointing at the same weights.

    None for an architecture without a classifier to replace.
    """
    cfgs = get_arch_pretrained_cfgs(arch)
    if not cfgs or next(iter(cfgs.values())).classifier is None:
        return None
    default_cfg = DefaultCfg()
    for name, cfg in cfgs.items():
        tag = split_model_name_tag(name)[1]
        default_cfg.tags.append(tag)
        default_cfg.cfgs[tag] = dataclasses.replace(
            cfg,
            first_conv=_prefix(cfg.first_conv, 'trunk.'),
            classifier=_classifier_names(4),
        )
        default_cfg.is_pretrained |= bool(cfg.has_weights)
    return default_cfg


default_cfgs = {f'{arch}{SUFFIX}': _split_share_cfgs(arch) for arch in list_models() if not arch.endswith(SUFFIX)}
default_cfgs = {k: v for k, v in default_cfgs.items() if v is not None}
default_cfgs.update({f'{alias}{SUFFIX}': _split_share_cfgs(arch) for alias, arch in PAPER_ALIASES.items()})


@register_model
def resnet18_ssm(pretrained: bool = False, **kwargs) -> SplitShareNet:
    """ResNet-18 with a Split-and-Share head (paper Table 1)."""
    model_args = dict(num_splits=4)
    return _create_split_share('resnet18_ssm', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_ssm(pretrained: bool = False, **kwargs) -> SplitShareNet:
    """ResNet-50 with a Split-and-Share head (paper Tables 1-4)."""
    model_args = dict(num_splits=4)
    return _create_split_share('resnet50_ssm', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_ssm(pretrained: bool = False, **kwargs) -> SplitShareNet:
    """ResNet-101 with a Split-and-Share head (paper Table 1)."""
    model_args = dict(num_splits=4)
    return _create_split_share('resnet101_ssm', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext50_ssm(pretrained: bool = False, **kwargs) -> SplitShareNet:
    """ResNeXt50 of the paper's Table 1: the ResNeXt-50 32x4d trunk (`resnext50_32x4d`) with a Split-and-Share head."""
    model_args = dict(num_splits=4)
    return _create_split_share('resnext50_ssm', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext101_ssm(pretrained: bool = False, **kwargs) -> SplitShareNet:
    """ResNeXt101 of the paper's Table 1: the ResNeXt-101 32x4d trunk (`resnext101_32x4d`) with a Split-and-Share
    head."""
    model_args = dict(num_splits=4)
    return _create_split_share('resnext101_ssm', pretrained, **dict(model_args, **kwargs))


def _register(variant: str):
    def _entrypoint(pretrained: bool = False, **kwargs) -> SplitShareNet:
        return _create_split_share(variant, pretrained, **kwargs)

    _entrypoint.__name__ = _entrypoint.__qualname__ = variant
    _entrypoint.__doc__ = f'{base_model_name(variant)} with a Split-and-Share head.'
    register_model(_entrypoint)


for _variant in default_cfgs:
    if _variant[:-len(SUFFIX)] not in PAPER_MODELS:
        _register(_variant)
