"""The timm model contract for `<arch>_ssm` models, as timm's own tests/test_models.py checks it."""
import copy
import warnings

import pytest
import torch

import timm
import timm_ssm
from timm.optim import param_groups_layer_decay

# tiny timm models covering CNNs, a ViT, NHWC features and a head with a hidden MLP (mambaout)
TINY_MODELS = [
    'test_resnet_ssm',
    'test_convnext_ssm',
    'test_efficientnet_ssm',
    'test_vit_ssm',
    'test_mambaout_ssm',
    'test_byobnet_ssm',
    'test_nfnet_ssm',
]
SIZE = 64


def _input(model, batch_size=2):
    cfg = model.pretrained_cfg
    if cfg.get('fixed_input_size'):
        return torch.randn(batch_size, *cfg['input_size'])
    return torch.randn(batch_size, cfg['input_size'][0], SIZE, SIZE)


def _spatial(model, features):
    fmt = getattr(model.trunk, 'output_fmt', 'NCHW')
    if features.ndim == 3:  # tokens
        return None, -1
    return ((2, 3), 1) if fmt == 'NCHW' else ((1, 2), 3)


def test_registry():
    names = timm.list_models('*_ssm')
    for arch in timm_ssm.PAPER_MODELS:
        assert f'{arch}_ssm' in names
    assert set(TINY_MODELS) <= set(names)
    assert 'convnext_tiny_ssm' in names and 'vit_base_patch16_224_ssm' in names
    assert len(names) > 1000
    assert names == timm.list_models(module='split_share')
    # one pretrained SSM tag for each pretrained tag of the base architecture
    assert [n.replace('_ssm', '') for n in timm.list_pretrained('resnet50_ssm.*')] == timm.list_pretrained('resnet50.*')
    assert timm.is_model_pretrained('convnext_tiny_ssm.in12k_ft_in1k')


@pytest.mark.parametrize('model_name', TINY_MODELS)
def test_model_contract(model_name):
    """timm's test_model_default_cfgs, for the SSM model."""
    model = timm.create_model(model_name).eval()
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and cfg['architecture'] == model_name
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        spatial, channel = _spatial(model, features)
        assert features.shape[channel] == model.num_features
        assert pre_logits.shape == (2, model.head_hidden_size)
        assert model(x).shape == (2, 1000)
        torch.testing.assert_close(model.forward_head(features), model(x))

        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == pre_logits.shape
        if spatial is not None:
            # unpooled, as timm checks it: the spatial size of the features (a head MLP may change channels)
            model.reset_classifier(0, '')
            out = model(x)
            assert out.ndim == 4 and [out.shape[i] for i in spatial] == [features.shape[i] for i in spatial]
            model = timm.create_model(model_name, num_classes=0, global_pool='').eval()
            torch.testing.assert_close(model(x).shape, out.shape)

    state_dict = model.state_dict() if model.num_classes else timm.create_model(model_name).state_dict()
    assert cfg['classifier'] == 'head'  # head.weight and head.bias hold every sub-classifier
    assert state_dict['head.weight'].shape == (1000, sum(model.head.widths))
    assert state_dict['head.bias'].shape == (4 * 1000,)  # 1-D, as a Linear's
    first_conv = (cfg['first_conv'],) if isinstance(cfg['first_conv'], str) else cfg['first_conv']
    for name in first_conv:
        assert name + '.weight' in state_dict


@pytest.mark.parametrize('model_name', TINY_MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(model_name):
    model = timm.create_model(model_name, num_classes=10).train()
    x = _input(model, batch_size=4)
    out = model(x)
    splits = model.forward_splits(x)
    assert splits.shape == (4, 4, 10)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without gradient (DDP would fail): {missing}'
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_splits(x).mean(1), model(x), rtol=1e-5, atol=1e-5)


def test_num_splits_and_norm_all_options():
    model = timm.create_model('test_resnet_ssm', num_splits=8, norm_all=True, num_classes=5)
    assert model.head.num_splits == 8 and model.head.norm_all
    assert model.pretrained_cfg['classifier'] == 'head' and model.head.bias.shape == (8 * 5,)
    assert model.forward_splits(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 8, 5)
    with pytest.raises(ValueError, match=r'C=96 .* n=5'):
        timm.create_model('test_resnet_ssm', num_splits=5)


def test_parameter_counts_match_paper_table_4():
    with torch.device('meta'):
        base = timm.create_model('resnet50')
        ssm = timm.create_model('resnet50_ssm')
        ssm_all = timm.create_model('resnet50_ssm', norm_all=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(base) / 1e6, 2) == 25.56
    assert 28.63e6 <= count(ssm) <= 28.64e6
    assert count(ssm_all) - count(ssm) == 2 * 2048


def test_unknown_kwarg_is_a_type_error():
    with pytest.raises(TypeError, match='not_an_arg'):
        timm.create_model('test_resnet_ssm', not_an_arg=1)


def test_unpooled_with_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="global_pool=''"):
        timm.create_model('test_resnet_ssm', global_pool='')
    model = timm.create_model('test_resnet_ssm')
    with pytest.raises(ValueError, match="global_pool=''"):
        model.reset_classifier(10, '')


def test_trunk_kwargs_pass_through():
    model = timm.create_model('test_resnet_ssm', drop_rate=0.3, in_chans=1, num_classes=3, global_pool='max')
    assert model.trunk.drop_rate == 0.3 and model.in_chans == 1
    assert model(torch.randn(2, 1, SIZE, SIZE)).shape == (2, 3)
    model = timm.create_model('test_vit_ssm', img_size=96)
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 1000)


def test_device_and_dtype_kwargs():
    model = timm.create_model('test_resnet_ssm', device='meta')
    assert all(p.device.type == 'meta' for p in model.parameters())
    model = timm.create_model('test_resnet_ssm', dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)).dtype == torch.float64


def test_reset_classifier_keeps_device_dtype_mode_and_frozen():
    model = timm.create_model('test_convnext_ssm', num_classes=10, dtype=torch.float64).eval()
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    norm = model.head.norm
    model.reset_classifier(4)
    assert model.num_classes == 4 and model.head.norm is norm
    assert model.head.weight.dtype == torch.float64 and not model.head.training
    assert not any(p.requires_grad for p in model.trunk.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert model(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)).shape == (2, 4)
    model.train()
    model.reset_classifier(6, 'max')
    assert model.training and model.head.training and model.head.weight.shape[0] == 6


@pytest.mark.parametrize('arch', ['test_resnet', 'test_efficientnet', 'test_vit'])
@pytest.mark.parametrize('head_args', [{}, dict(num_splits=1, norm_all=True), dict(num_splits=2, split=False),
                                       dict(num_splits=1)], ids=['ssm', 'bn1fc', '2fc', '1fc'])
def test_a_seed_builds_the_plain_trunk_and_leaves_the_rng_where_the_plain_model_does(arch, head_args):
    """Paired seeds: at one seed a change of head changes the head alone (trunk weights, next draws)."""
    torch.manual_seed(7)
    plain = timm.create_model(arch, num_classes=10)
    plain_next = torch.rand(8)
    torch.manual_seed(7)
    model = timm.create_model(f'{arch}_ssm', num_classes=10, **head_args)
    assert torch.equal(torch.rand(8), plain_next)
    plain_state = plain.state_dict()
    trunk_state = model.trunk.state_dict()
    assert trunk_state and all(torch.equal(v, plain_state[k]) for k, v in trunk_state.items())
    torch.manual_seed(7)
    again = timm.create_model(f'{arch}_ssm', num_classes=10, **head_args)
    assert torch.equal(again.head.weight, model.head.weight)  # the head follows the seed too
    torch.manual_seed(8)
    assert not torch.equal(timm.create_model(f'{arch}_ssm', num_classes=10, **head_args).head.weight, model.head.weight)


def test_train_py_loader_gives_every_head_the_same_first_batch(tmp_path):
    """train.py seeds, builds the model, then the loader, whose shuffle draws from the global RNG."""
    from PIL import Image
    from timm.data import create_dataset, create_loader
    from timm.utils import random_seed
    for c in range(2):
        (tmp_path / str(c)).mkdir()
        for i in range(8):
            Image.new('RGB', (8, 8), (c * 100 + i, i, 0)).save(tmp_path / str(c) / f'{i}.png')
    dataset = create_dataset('', root=str(tmp_path))
    first = []
    for name, kwargs in (('test_resnet', {}), ('test_resnet_ssm', {}), ('test_resnet_ssm', dict(split=False))):
        random_seed(0)
        timm.create_model(name, num_classes=2, **kwargs)
        loader = create_loader(
            dataset, (3, 8, 8), batch_size=4, is_training=True, no_aug=True, num_workers=0, device=torch.device('cpu'))
        first.append(next(iter(loader))[1])
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])


@pytest.mark.parametrize('layer_decay', [None, 0.7])
def test_weight_decay_groups_as_for_a_plain_classifier(layer_decay):
    from timm.optim import create_optimizer_v2
    model = timm.create_model('test_vit_ssm', num_classes=5)
    assert model.get_classifier() is model.head
    assert model.no_weight_decay() == {'trunk.' + n for n in timm.create_model('test_vit').no_weight_decay()}
    for filter_bias_and_bn in (True, False):
        optimizer = create_optimizer_v2(
            model, 'adamw', weight_decay=0.05, layer_decay=layer_decay, filter_bias_and_bn=filter_bias_and_bn)
        names = {id(p): n for n, p in model.named_parameters()}
        decay = {names[id(p)]: g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
        assert decay['head.weight'] == 0.05
        bias_decay = 0 if filter_bias_and_bn else 0.05  # as a plain Linear's bias, 1-D
        assert decay['head.bias'] == decay['head.norm.weight'] == decay['head.norm.bias'] == bias_decay


def test_bn_momentum_and_eps_reach_the_heads_batchnorm():
    model = timm.create_model('test_efficientnet_ssm', bn_momentum=0.01, bn_eps=1e-3, num_classes=0)
    model.reset_classifier(5)
    for width in (None, 'catavgmax'):  # the norm made by reset, then rebuilt for another pooled width
        model.reset_classifier(5, width)
        assert (model.head.norm.momentum, model.head.norm.eps) == (0.01, 1e-3)
    assert model.trunk.bn1.eps == 1e-3


def _lr_scales(model):
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.7)
    return {names[id(p)]: g['lr_scale'] for g in groups for p in g['params']}


@pytest.mark.parametrize('model_name', ['test_resnet_ssm', 'test_vit_ssm', 'test_convnext_ssm'])
def test_group_matcher_for_layer_decay(model_name):
    model = timm.create_model(model_name)
    scale = _lr_scales(model)
    assert set(scale) == {n for n, p in model.named_parameters()}
    head = [scale[n] for n in scale if n.startswith('head.')]
    trunk = [scale[n] for n in scale if n.startswith('trunk.')]
    assert head and set(head) == {1.0}  # the head is the last layer group
    assert len(set(trunk)) > 2 and min(trunk) < 1.0  # trunk layers decay as in the plain model
    base_scale = _lr_scales(timm.create_model(model_name.replace('_ssm', '')))
    for n, s in base_scale.items():
        if 'trunk.' + n in scale:
            assert scale['trunk.' + n] == pytest.approx(s), n


def test_grad_checkpointing_gives_the_same_gradients():
    model = timm.create_model('test_resnet_ssm', num_classes=5).train()
    x = _input(model, 4)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5, msg=n)


def test_torch_compile_train_step():
    # aot_eager: dynamo's graph capture and AOTAutograd as with the default backend, without minutes of C++
    # compilation on CPU (inductor itself runs in benchmarks/throughput.py --compile)
    model = timm.create_model('test_resnet_ssm', num_classes=5).train()
    compiled = torch.compile(model, backend='aot_eager')
    x = _input(model, 4)
    out = compiled(x)
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_channels_last_and_autocast():
    model = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    x = _input(model, 4)
    with torch.no_grad():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast('cpu', dtype=dtype):
                out = model(x)
            assert out.dtype == dtype
            torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(x).float().sum().backward()


def test_features_only_is_the_trunks_feature_extraction():
    features = timm.create_model('test_resnet_ssm', features_only=True, out_indices=(1, 2))
    reference = timm.create_model('test_resnet', features_only=True, out_indices=(1, 2))
    assert type(features) is type(reference)
    assert features.feature_info.channels() == reference.feature_info.channels()
    outs = features(torch.randn(2, 3, SIZE, SIZE))
    assert [o.shape[1] for o in outs] == reference.feature_info.channels()


def test_training_batch_of_one_says_what_to_do():
    model = timm.create_model('test_resnet_ssm', num_classes=5).train()
    with pytest.raises(AssertionError, match='drop_last=True'):
        model(_input(model, 1))


def test_trunk_without_classifier_is_a_clear_error():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError, match='no classifier to replace'):
            timm.create_model('mobilenetv5_300m_enc_ssm', device='meta')


def test_reset_classifier_after_zero_keeps_norm_and_the_models_device_dtype_mode():
    """timm's `_assert_reset_classifier_preserves_parent_device_dtype`, and the BatchNorm kept through num_classes=0."""
    model = timm.create_model('test_resnet_ssm', num_classes=5).to(torch.float64).eval()
    with torch.no_grad():
        model.head.norm.running_var.fill_(3.0)
    norm = model.head.norm
    model.reset_classifier(0)
    model.reset_classifier(7)
    assert model.head.norm is norm and torch.all(norm.running_var == 3.0)
    assert all(p.dtype == torch.float64 for p in model.head.parameters())
    assert not any(m.training for m in model.modules())
    assert model(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)).shape == (2, 7)
    # a head built with num_classes=0 has no layer to read from: the new layers follow the trunk
    model = timm.create_model('test_resnet_ssm', num_classes=0).to(device='meta', dtype=torch.float16)
    model.reset_classifier(0)
    model.reset_classifier(2)
    assert all(p.device.type == 'meta' and p.dtype == torch.float16 for p in model.head.parameters())


@pytest.mark.parametrize('model_name', ['test_resnet_ssm', 'test_efficientnet_ssm'])
def test_reset_classifier_with_a_pooling_of_another_width_rebuilds_the_head(model_name):
    model = timm.create_model(model_name, num_classes=4).eval()
    x = _input(model)
    width = model.head.in_features
    norm = model.head.norm
    model.reset_classifier(10, 'catavgmax')
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert model(x).shape == (2, 10)
    assert model.head.in_features == pooled.shape[1] == model.head_hidden_size
    if pooled.shape[1] != width:  # a new width: a new head, in the model's mode
        assert model.head.norm is not norm and not model.head.training
    model.reset_classifier(3, 'avg')
    assert model.head.in_features == width and model(x).shape == (2, 3)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_splits=0), 'num_splits >= 1'),
    (dict(num_splits=-2), 'num_splits >= 1'),
    (dict(num_classes=-1), 'num_classes must be >= 0'),
    (dict(split=False, norm_all=True), 'norm_all'),
])
def test_bad_head_arguments_fail_when_the_model_is_created(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('test_resnet_ssm', **kwargs)


def test_forward_splits_of_a_zero_class_model_is_a_clear_error():
    model = timm.create_model('test_resnet_ssm', num_classes=0)
    with pytest.raises(RuntimeError, match=r'num_classes=0 .* reset_classifier\(num_classes\)'):
        model.forward_splits(torch.randn(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match='num_classes must be >= 0'):
        model.reset_classifier(-3)


@pytest.mark.parametrize('norm_all', [False, True])
def test_one_split(norm_all):
    model = timm.create_model('test_resnet_ssm', num_splits=1, norm_all=norm_all, num_classes=5).train()
    x = _input(model)
    out = model(x)
    assert out.shape == (2, 5) and model.forward_splits(x).shape == (2, 1, 5)
    out.sum().backward()
    assert model.head.weight.shape == (5, model.head_hidden_size) and model.head.bias.shape == (5,)


def test_scripted_model_has_forward_splits():
    model = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated, still supported
        scripted = torch.jit.script(model)
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted.forward_splits(x), model.forward_splits(x))
        torch.testing.assert_close(scripted(x), model(x))


def test_paper_names_of_the_resnexts():
    for alias, trunk in (('resnext50', 'resnext50_32x4d'), ('resnext101', 'resnext101_32x4d')):
        assert timm_ssm.base_model_name(f'{alias}_ssm.tv_in1k') == trunk
        assert [n.replace(f'{alias}_ssm', trunk) for n in timm.list_pretrained(f'{alias}_ssm.*')] == \
            timm.list_pretrained(f'{trunk}.*')
        with torch.device('meta'):
            model = timm.create_model(f'{alias}_ssm')
            same = timm.create_model(f'{trunk}_ssm')
        assert model.pretrained_cfg['architecture'] == f'{alias}_ssm'
        assert model.trunk.pretrained_cfg['architecture'] == trunk
        assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in same.named_parameters()]


def test_table_4_controls():
    """split=False: k plain Linear classifiers on all C channels, no norm, averaged (Table 4's 2FC and 3FC)."""
    with torch.device('meta'):
        counts = {k: sum(p.numel() for p in timm.create_model('resnet50_ssm', num_splits=k, split=False).parameters())
                  for k in (2, 3)}
    assert round(counts[2] / 1e6, 2) == 27.61 and round(counts[3] / 1e6, 2) == 29.66  # paper: 27.60 M, 29.65 M
    model = timm.create_model('test_resnet_ssm', num_splits=3, split=False, num_classes=10).train()
    assert isinstance(model.head.norm, torch.nn.Identity)
    assert model.head.widths == [model.head_hidden_size] * 3 and model.head.weight.shape == (10, 3 * 96)
    x = _input(model)
    splits = model.forward_splits(x)
    assert splits.shape == (2, 3, 10)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        blocks = zip(model.head.weight.split(model.head.widths, 1), model.head.bias.view(model.head.num_splits, -1))
        expected = torch.stack([torch.nn.functional.linear(pooled, w, b) for w, b in blocks], 1)
        torch.testing.assert_close(splits, expected)
        torch.testing.assert_close(model(x), splits.mean(1))


def test_forward_intermediates_and_pruning_go_to_the_trunk():
    model = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    base = timm.create_model('test_resnet', num_classes=0).eval()
    base.load_state_dict(model.trunk.state_dict())
    x = _input(model)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, indices=2)
        base_final, base_intermediates = base.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(intermediates) == 2
        for a, b in zip(intermediates, base_intermediates):
            torch.testing.assert_close(a, b)
    assert model.prune_intermediate_layers(2) == base.prune_intermediate_layers(2)
    assert model.num_classes == 0 and model.head.weight is None
    with torch.no_grad():
        assert model.forward_intermediates(x, indices=2, intermediates_only=True)[-1].ndim == 4


def test_set_input_size_exists_where_the_trunk_has_it():
    vit = timm.create_model('test_vit_ssm', num_classes=3).eval()
    vit.set_input_size(img_size=(96, 96))
    assert vit(torch.randn(1, 3, 96, 96)).shape == (1, 3)
    resnet = timm.create_model('test_resnet_ssm')
    assert not hasattr(resnet, 'set_input_size') and not hasattr(resnet.trunk, 'set_input_size')
    assert hasattr(resnet, 'forward_intermediates')


@pytest.mark.parametrize('model_name', ['test_resnet_ssm', 'test_vit_ssm'])
def test_quantize_dynamic_matches_eager(model_name):
    """torch.ao's dynamic int8 quantization of the Linear layers: the trunk's quantize as in the plain model (same
    features), the head's one weight stays float; the logits stay within int8 error of eager."""
    model = timm.create_model(model_name, num_classes=10).eval()
    plain = timm.create_model(model_name.replace('_ssm', ''), num_classes=0).eval()
    plain.load_state_dict(model.trunk.state_dict())

    def _quantize(m):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch.ao.quantization is deprecated in favour of torchao, still works
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {torch.nn.Linear}, dtype=torch.qint8)

    quantized = _quantize(model)
    x = _input(model)
    with torch.no_grad():
        expected, out = model(x), quantized(x)
        torch.testing.assert_close(out, model.head(_quantize(plain)(x)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0.1 * expected.abs().max().item())


def test_split_bn_splits_every_batchnorm_by_augmentation():
    """train.py --aug-splits 2 --split-bn: timm's convert_splitbn_model on the whole model, head included; each
    half of a training batch is normalized on its own, and eval uses the clean half's statistics."""
    from timm.layers import SplitBatchNorm2d, convert_splitbn_model
    model = timm.create_model('test_resnet_ssm', num_classes=5).train()
    clean = copy.deepcopy(model)
    split = convert_splitbn_model(copy.deepcopy(model), 2).train()
    assert isinstance(split.head.norm, SplitBatchNorm2d)
    x = _input(model, 8)
    out = split(x)
    torch.testing.assert_close(out[:4], clean(x[:4]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[4:], model(x[4:]), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert split.head.norm.aux_bn[0].weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x), clean.eval()(x), rtol=1e-4, atol=1e-5)


def test_checkpoint_of_a_split_bn_run_loads_as_the_cleaned_one(tmp_path):
    """A train.py --split-bn checkpoint holds aux_bn tensors: they load as clean_checkpoint.py --clean-aux-bn drops
    them, and the model predicts with the main BatchNorms."""
    from timm.layers import convert_splitbn_model
    from timm.models import load_checkpoint
    split = convert_splitbn_model(timm.create_model('test_resnet_ssm', num_classes=5), 2).train()
    for _ in range(2):
        split(_input(split, 8))
    state = split.state_dict()
    assert any('.aux_bn.' in k for k in state) and any(k.startswith('head.norm.aux_bn') for k in state)
    torch.save({'state_dict': state, 'epoch': 1}, tmp_path / 'last.pth.tar')
    model = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    load_checkpoint(model, str(tmp_path / 'last.pth.tar'))
    cleaned = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    cleaned.load_state_dict({k: v for k, v in state.items() if 'aux_bn' not in k})
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), cleaned(x))
        torch.testing.assert_close(model(x), split.eval()(x))


def test_feature_info_is_the_trunks_under_trunk():
    model = timm.create_model('test_resnet_ssm', num_classes=5)
    trunk_info = model.trunk.feature_info
    assert [f['num_chs'] for f in model.feature_info] == [f['num_chs'] for f in trunk_info]
    assert [f['reduction'] for f in model.feature_info] == [f['reduction'] for f in trunk_info]
    modules = dict(model.named_modules())
    assert all(f['module'] in modules for f in model.feature_info)
    # timm's hook-based feature extractor reads it off the model
    hooked = timm.models.FeatureHookNet(model, out_indices=(1, 2)).eval()
    outs = hooked(_input(model))
    assert [o.shape[1] for o in outs] == [trunk_info[i]['num_chs'] for i in (1, 2)]
    del model.trunk.feature_info
    assert not hasattr(model, 'feature_info')  # present exactly when the trunk has it


@pytest.mark.parametrize('kwargs, expected', [
    (dict(split='false', norm_all='False'), dict(split=False, norm_all=False)),
    (dict(split='TRUE', norm_all='true'), dict(split=True, norm_all=True)),
])
def test_boolean_arguments_take_the_strings_of_model_kwargs(kwargs, expected):
    model = timm.create_model('test_resnet_ssm', num_splits=2, device='meta', **kwargs)
    assert dict(split=model.head.split, norm_all=model.head.norm_all) == expected


@pytest.mark.parametrize('kwargs, name', [
    (dict(split='no'), 'split'),
    (dict(norm_all=1), 'norm_all'),
    (dict(norm_all='yes'), 'norm_all'),
    (dict(num_splits=2.5), 'num_splits'),
    (dict(num_splits='2'), 'num_splits'),
    (dict(num_splits=True), 'num_splits'),
    (dict(num_classes=10.0), 'num_classes'),
    (dict(num_classes='10'), 'num_classes'),
])
def test_bad_argument_types_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf'^{name} must be'):
        timm.create_model('test_resnet_ssm', device='meta', **kwargs)


def test_torch_export():
    model = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    x = _input(model)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
