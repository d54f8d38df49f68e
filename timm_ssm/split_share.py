""" Split-and-Share Module (SSM) for every timm model

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

`SplitShareNet` wraps any timm model: the trunk keeps everything up to its pooled pre-logits features and a
`SplitShareHead` replaces its classifier. Importing this module registers `<arch>_ssm` for every timm
architecture that has a classifier, and `<arch>_ssm.<tag>` for each of its pretrained tags: those load timm's
weights for `<arch>.<tag>` into the trunk and start the head from the original classifier, so the SSM model's
logits equal the original model's until it is trained.

At one seed, `create_model('<arch>_ssm', num_classes=K)` builds exactly the trunk that `create_model('<arch>',
num_classes=K)` builds and leaves torch's global RNG in the same state (the head draws from its own generator): a
change of head changes the head alone, and train.py gives every head the same data order.
"""
import dataclasses
import logging
import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

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

from .head import SplitShareHead, check_int_arg

__all__ = ['SplitShareNet', 'SUFFIX', 'PAPER_MODELS', 'PAPER_ALIASES', 'base_model_name']

_logger = logging.getLogger(__name__)

SUFFIX = '_ssm'
PAPER_MODELS = ('resnet18', 'resnet50', 'resnet101', 'resnext50', 'resnext101')  # the paper's Table 1
# the paper names its ResNeXts without a width; its baselines (77.19, 78.46 top-1) fit the 32x4d ones
PAPER_ALIASES = {'resnext50': 'resnext50_32x4d', 'resnext101': 'resnext101_32x4d'}


def base_model_name(model_name: str) -> str:
    """The timm architecture of an SSM model: `resnet50_ssm.a1_in1k` -> `resnet50`, `resnext50_ssm` ->
    `resnext50_32x4d`."""
    arch = split_model_name_tag(model_name)[0]
    if not arch.endswith(SUFFIX):
        raise ValueError(f'{model_name} is not an SSM model name: it should end in {SUFFIX} (before any .tag).')
    arch = arch[:-len(SUFFIX)]
    return PAPER_ALIASES.get(arch, arch)


def _check_head_args(num_classes: int, global_pool: Optional[str]):
    num_classes = check_int_arg('num_classes', num_classes)
    if num_classes < 0:
        raise ValueError(f'num_classes must be >= 0 (0 for pooled features out), got {num_classes}.')
    if global_pool == '' and num_classes > 0:
        raise ValueError("global_pool='' leaves the features unpooled, but the Split-and-Share head needs pooled "
                         "features: use global_pool='' only with num_classes=0.")
    return num_classes


def _under_trunk(names: Union[str, Tuple[str, ...], None]):
    if not names:
        return names
    return 'trunk.' + names if isinstance(names, str) else tuple('trunk.' + n for n in names)


def _convert_on_load(module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args):
    module.convert_state_dict(state_dict, prefix)


def _convert_weights(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """timm's `pretrained_filter_fn`: converts before timm adapts the input conv and the classifier to the model."""
    return model.convert_state_dict(state_dict)


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
            bn_momentum: Optional[float] = None,
            bn_eps: Optional[float] = None,
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
            bn_momentum: BatchNorm momentum of the trunk (where it takes one) and of the head.
            bn_eps: BatchNorm eps of the trunk (where it takes one) and of the head.
            pretrained_trunk: Load timm's weights into the trunk; a classifier of num_classes starts the head.
            trunk_kwargs: Other `timm.create_model` arguments of the trunk (drop_path_rate, img_size, ...).
        """
        super().__init__()
        num_classes = _check_head_args(num_classes, global_pool)
        trunk_kwargs = dict(trunk_kwargs or {}, global_pool=global_pool, bn_momentum=bn_momentum, bn_eps=bn_eps)
        # built exactly as create_model(model_name, num_classes=num_classes) builds it, classifier included: the
        # same seed gives the same trunk weights and leaves the global RNG where the plain model leaves it
        trunk = create_model(
            model_name, pretrained=pretrained_trunk, num_classes=num_classes, in_chans=in_chans, device=device,
            dtype=dtype, **{k: v for k, v in trunk_kwargs.items() if v is not None})
        if not hasattr(trunk, 'reset_classifier'):
            raise ValueError(
                f'{model_name} ({type(trunk).__name__}) has no classifier to replace (no reset_classifier()): '
                f'the Split-and-Share head needs a timm classification model.')
        # a pretrained classifier for these classes starts the head, through the road of any plain state dict
        plain_state = trunk.state_dict() if pretrained_trunk and num_classes > 0 and \
            trunk.pretrained_cfg.get('num_classes') == num_classes else None
        with torch.random.fork_rng(devices=[]):  # what follows leaves the global RNG as it was
            trunk.reset_classifier(0)
            self.trunk = trunk
            self.num_classes = num_classes
            self.in_chans = in_chans
            self.num_features = trunk.num_features
            self.head_hidden_size = getattr(trunk, 'head_hidden_size', trunk.num_features)
            if global_pool is not None:
                self.global_pool = global_pool
            self.head = SplitShareHead(
                self.head_hidden_size, num_classes, num_splits=num_splits, norm_all=norm_all, split=split,
                norm_kwargs=dict(momentum=bn_momentum, eps=bn_eps), device=device, dtype=dtype)
            # every load_state_dict (load_checkpoint, checkpoint_path=, resume, train.py) takes the layouts of
            # convert_state_dict
            self.register_load_state_dict_pre_hook(_convert_on_load)
            if plain_state is not None:
                self.load_state_dict(plain_state)

    def convert_state_dict(self, state_dict: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
        """Bring the entries under `prefix` of a state dict into this model's layout, in place; returns it.

        This model's layout loads as it is. A plain timm model of the trunk's architecture is the one road from a
        plain classifier to the head: its tensors go to the trunk and its classifier into the head as
        `SplitShareHead.converted_classifier` makes it (the model predicts as the plain one did), or, where it cannot
        (other classes, a head of more than one Linear, `norm_all`), the head stays as it is, with a warning.
        `--split-bn` runs' `aux_bn` tensors are dropped (as `clean_checkpoint.py --clean-aux-bn` does) when this model
        has none. Anything else is a RuntimeError that says what the state dict holds.
        """
        own = self.state_dict()
        for k in [k for k in state_dict if k.startswith(prefix) and '.aux_bn.' in k]:
            if k[len(prefix):] not in own:
                del state_dict[k]
        keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        trunk_keys = set(self.trunk.state_dict())
        arch = self.trunk.pretrained_cfg.get('architecture') or type(self.trunk).__name__
        if any(k.startswith('trunk.') for k in keys):
            bias = state_dict.get(f'{prefix}head.bias')
            if bias is not None and bias.ndim == 2:  # the n x K bias of earlier releases, flat now
                state_dict[f'{prefix}head.bias'] = bias.flatten()
            missing = [k for k in trunk_keys if f'{prefix}trunk.{k}' not in state_dict]
            if missing:  # said also where the caller loads without strict (train.py --pretrained-path)
                _logger.warning(
                    f'The weights lack {len(missing)} of the {len(trunk_keys)} tensors of the {arch} trunk, such as '
                    f'trunk.{", trunk.".join(missing[:3])}: those keep their fresh values.')
            return state_dict
        missing = [k for k in trunk_keys if k not in keys]
        if not keys or missing:
            held = f'it holds {len(keys)} tensors such as {", ".join(keys[:4])}' if keys else 'it is empty'
            raise RuntimeError(
                f'The weights fit neither a Split-and-Share model (keys trunk.*, head.*) nor a plain {arch} '
                f'({len(missing)} of its {len(trunk_keys)} tensors are missing, such as {", ".join(missing[:3])}): '
                f'{held}. Give the weights of a {arch}_ssm model, or of a plain {arch} saved by timm '
                f'(model.state_dict() or a train.py checkpoint).')

        names = self.trunk.pretrained_cfg.get('classifier')
        names = (names,) if isinstance(names, str) else tuple(names or ())
        others = [k for k in keys if k not in trunk_keys and k.rsplit('.', 1)[0] not in names]
        weight = state_dict.get(f'{prefix}{names[0]}.weight') if len(names) == 1 else None
        converted, reason = None, ''
        if self.num_classes > 0:
            if len(names) != 1:
                reason = f'its classifier is {len(names)} layers ({", ".join(names)}), not one Linear'
            elif weight is None:
                reason = f'it has no classifier {names[0]}.weight (it was saved with num_classes=0)'
            elif weight.shape[0] != self.num_classes:
                reason = f'it has {weight.shape[0]} classes, the model {self.num_classes}'
            elif others:
                reason = f'its head holds more than the classifier {names[0]}, such as {", ".join(others[:3])}'
            else:
                try:
                    converted = self.head.converted_classifier(weight, state_dict.get(f'{prefix}{names[0]}.bias'))
                except ValueError as e:
                    reason = str(e).rstrip('.')
        for k in keys:
            value = state_dict.pop(prefix + k)
            if k in trunk_keys:  # the plain classifier's entries go
                state_dict[f'{prefix}trunk.{k}'] = value
        state_dict.update({prefix + k: v for k, v in own.items() if k.startswith('head.')})  # the head keeps its own
        if converted is not None:
            state_dict[f'{prefix}head.weight'], state_dict[f'{prefix}head.bias'] = converted
        if reason:
            _logger.warning(
                f'The weights are those of a plain {arch}, whose classifier cannot start the Split-and-Share head '
                f'({reason}): the trunk loads them, the head starts fresh.')
        return state_dict

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
        """Replace the sub-classifiers (0: pooled features out) and optionally the trunk's pooling ('' for none).

        New layers take the model's device, dtype and mode. The head's BatchNorm is kept, also through
        `reset_classifier(0)`, unless a `global_pool` changes the pooled width (`'catavgmax'`): then the whole head is
        rebuilt.
        """
        num_classes = _check_head_args(num_classes, global_pool)
        dd = get_device_dtype(self)
        if global_pool is not None:
            width = self._pooled_width(global_pool) if global_pool else self.head.in_features
            self.trunk.reset_classifier(0, global_pool)
            self.global_pool = global_pool
            if width != self.head.in_features:
                head = self.head
                self.head = SplitShareHead(
                    width, 0, num_splits=head.num_splits, norm_all=head.norm_all, split=head.split,
                    norm_kwargs=head.norm_kwargs, **dd)
                self.head.train(head.training)
                self.head_hidden_size = width
        self.num_classes = num_classes
        self.head.reset(num_classes, **dd)

    def _pooled_width(self, global_pool: str) -> int:
        """Width of the trunk's pooled feature under `global_pool`, read off the classifier the trunk builds for it."""
        self.trunk.reset_classifier(1, global_pool)
        classifier = self.trunk.get_classifier()
        return getattr(classifier, 'in_features', getattr(classifier, 'in_channels', self.head.in_features))

    # timm's newer model API, present exactly when the trunk has it: as properties, a trunk without the method
    # leaves hasattr(model, name) False, as timm's tests and downstream libraries check it
    __jit_unused_properties__ = ['feature_info', 'forward_intermediates', 'prune_intermediate_layers', 'set_input_size']

    @property
    def feature_info(self) -> List[Dict[str, Any]]:
        return [dict(info, module=f'trunk.{info["module"]}') if info.get('module') else dict(info)
                for info in self.trunk.feature_info]

    @property
    def forward_intermediates(self) -> Callable:
        return self.trunk.forward_intermediates

    @property
    def set_input_size(self) -> Callable:
        return self.trunk.set_input_size

    @property
    def prune_intermediate_layers(self) -> Callable:
        """The trunk's `prune_intermediate_layers`; `prune_head` also removes the Split-and-Share head."""
        def _prune(indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True):
            take_indices = self.trunk.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
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
        """Logits of every sub-classifier for an image batch, shape (B, n, num_classes); their mean is forward(x)."""
        return self.head.forward_splits(self.forward_head(self.forward_features(x), pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_MODEL_ARGS = ('num_classes', 'num_splits', 'norm_all', 'split', 'in_chans', 'global_pool', 'bn_momentum', 'bn_eps',
               'device', 'dtype')
CLASSIFIER = 'head'  # head.weight and head.bias: every sub-classifier


def _loads_whole_model(cfg: Dict[str, Any]) -> bool:
    """Whether a pretrained cfg names weights of the whole model (hf-hub:, local-dir:, a `file` or `state_dict`), not
    a registry tag's timm weights of the trunk."""
    return cfg.get('source') in ('hf-hub', 'local-dir') or bool(cfg.get('file')) or cfg.get('state_dict') is not None


def _trunk_cfg(cfg: Dict[str, Any], arch: str) -> Dict[str, Any]:
    """The trunk's pretrained cfg from an SSM model's: the trunk's architecture and layer names."""
    base = get_pretrained_cfg(arch)
    return dict(
        cfg,
        state_dict=None,  # loaded into the whole model, not kept twice
        architecture=arch,
        first_conv=base.first_conv if base is not None else None,
        classifier=base.classifier if base is not None else None,
    )


def _create_features(variant: str, arch: str, pretrained: bool, cfg: Dict[str, Any], **kwargs) -> nn.Module:
    """`features_only=True`: the trunk's own feature extraction, with the trunk's weights of the SSM model."""
    head_args = {k: kwargs.pop(k) for k in ('num_splits', 'norm_all', 'split') if k in kwargs}
    trunk_cfg = _trunk_cfg(cfg, arch)
    if pretrained and _loads_whole_model(cfg):
        # weights for the whole model: load them, then hand the trunk's to timm's feature builder
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

    # Weights for the whole model (hf-hub:, local-dir:, a file or state dict) load into it in any layout of
    # convert_state_dict. Registry tags name timm's weights of the trunk architecture: the trunk loads them with its
    # own loader (checkpoint filters, input adaptation) and the head starts from its classifier.
    ssm_weights = _loads_whole_model(cfg)
    kwargs['pretrained_cfg'] = _trunk_cfg(cfg, arch)
    # the head's classifiers replace the trunk's, and any label offset of the trunk's weights is applied there
    cfg = dict(cfg, classifier=CLASSIFIER, label_offset=None)
    model_args = {k: kwargs.pop(k) for k in _MODEL_ARGS if k in kwargs}
    build_args = {k: kwargs.pop(k) for k in ('cache_dir', 'pretrained_model_args') if k in kwargs}
    if build_args.get('cache_dir') is not None:
        kwargs['cache_dir'] = build_args['cache_dir']
    return build_model_with_cfg(
        SplitShareNet,
        variant,
        pretrained=pretrained and ssm_weights,
        pretrained_cfg=cfg,
        pretrained_filter_fn=_convert_weights,
        kwargs_filter=('img_size',),  # a trunk argument, passed on in trunk_kwargs
        model_name=arch,
        pretrained_trunk=pretrained and not ssm_weights,
        trunk_kwargs=kwargs,
        **model_args,
        **build_args,
    )


def _split_share_cfgs(arch: str) -> Optional[DefaultCfg]:
    """Pretrained cfgs of `<arch>_ssm`, one per tag of `<arch>` (the same weights); None without a classifier."""
    cfgs = get_arch_pretrained_cfgs(arch)
    if not cfgs or next(iter(cfgs.values())).classifier is None:
        return None
    default_cfg = DefaultCfg()
    for name, cfg in cfgs.items():
        tag = split_model_name_tag(name)[1]
        default_cfg.tags.append(tag)
        default_cfg.cfgs[tag] = dataclasses.replace(cfg, first_conv=_under_trunk(cfg.first_conv), classifier=CLASSIFIER)
        default_cfg.is_pretrained |= bool(cfg.has_weights)
    return default_cfg


default_cfgs = {f'{arch}{SUFFIX}': _split_share_cfgs(arch) for arch in list_models() if not arch.endswith(SUFFIX)}
default_cfgs = {k: v for k, v in default_cfgs.items() if v is not None}
default_cfgs.update({f'{alias}{SUFFIX}': _split_share_cfgs(arch) for alias, arch in PAPER_ALIASES.items()})


def _register(variant: str):
    def _entrypoint(pretrained: bool = False, **kwargs) -> SplitShareNet:
        return _create_split_share(variant, pretrained, **kwargs)

    arch = variant[:-len(SUFFIX)]
    paper = f' (the paper\'s {arch}, Table 1)' if arch in PAPER_MODELS else ''
    _entrypoint.__name__ = _entrypoint.__qualname__ = variant
    _entrypoint.__doc__ = f'{base_model_name(variant)} with a Split-and-Share head{paper}.'
    register_model(_entrypoint)


for _variant in default_cfgs:
    _register(_variant)
