"""Pretrained weights: timm's weights converted for `<arch>_ssm.<tag>`, and SSM weights through hf-hub:/local-dir:."""
import argparse
import json
import logging

import pytest
import safetensors.torch
import torch

import timm
import timm_ssm  # noqa: F401
from timm.models import get_pretrained_cfg, load_checkpoint, save_for_hf

# tiny architectures with a timm pretrained tag, and their input sizes
CONVERT_MODELS = [
    'test_resnet.r160_in1k',
    'test_convnext.r160_in1k',
    'test_efficientnet.r160_in1k',
    'test_vit.r160_in1k',
    'test_byobnet.r160_in1k',
    'test_nfnet.r160_in1k',
    'dla46_c.in1k',  # 1x1 Conv2d classifier
]


def _random_base_weights(hub_cache, name, tmp_path):
    """A random checkpoint of timm model `name` placed in the Hub cache where timm downloads its weights from."""
    base = timm.create_model(name).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.2)  # distinct from a fresh init, so loading is visible
    path = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(base.state_dict(), path)
    hub_cache.put(get_pretrained_cfg(name).hf_hub_id, {'model.safetensors': path})
    return base


def _input(model, batch_size=2, size=64):
    in_chans = model.pretrained_cfg['input_size'][0]
    if model.pretrained_cfg.get('fixed_input_size'):
        return torch.randn(batch_size, *model.pretrained_cfg['input_size'])
    return torch.randn(batch_size, in_chans, size, size)


@pytest.mark.parametrize('name', CONVERT_MODELS)
def test_converted_logits_equal_original(name, hub_cache, tmp_path):
    base = _random_base_weights(hub_cache, name, tmp_path)
    arch, tag = name.split('.')
    model = timm.create_model(f'{arch}_ssm.{tag}', pretrained=True).eval()
    x = _input(model)
    with torch.no_grad():
        expected = base(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
        # the last sub-classifier carries the original classifier, n times
        splits = model.forward_splits(x)
        torch.testing.assert_close(splits[:, -1], expected * model.head.num_splits, rtol=1e-4, atol=1e-3)
    assert model.pretrained_cfg['architecture'] == f'{arch}_ssm'
    assert model.pretrained_cfg['hf_hub_id'] == get_pretrained_cfg(name).hf_hub_id


def test_default_tag_is_the_base_default(hub_cache, tmp_path):
    base = _random_base_weights(hub_cache, 'test_resnet.r160_in1k', tmp_path)
    model = timm.create_model('test_resnet_ssm', pretrained=True).eval()
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-4, atol=1e-4)


def test_other_num_classes_loads_trunk_and_starts_head_fresh(hub_cache, tmp_path):
    base = _random_base_weights(hub_cache, 'test_resnet.r160_in1k', tmp_path)
    model = timm.create_model('test_resnet_ssm.r160_in1k', pretrained=True, num_classes=7).eval()
    base_sd = base.state_dict()
    for k, v in model.trunk.state_dict().items():
        torch.testing.assert_close(v, base_sd[k])
    assert model.num_classes == 7 and model.head.weight.shape[0] == 7
    assert model.head.weight[:, 0].abs().sum() > 0  # a fresh init, not the zeros of a conversion


def test_bn_momentum_and_eps_reach_the_head_of_a_pretrained_model(hub_cache, tmp_path):
    _random_base_weights(hub_cache, 'test_efficientnet.r160_in1k', tmp_path)
    for num_classes in (7, 1000):  # a fresh head, and one started from the pretrained classifier
        model = timm.create_model(
            'test_efficientnet_ssm.r160_in1k', pretrained=True, num_classes=num_classes, bn_eps=1e-3, bn_momentum=0.2)
        assert (model.head.norm.eps, model.head.norm.momentum) == (model.trunk.bn1.eps, model.trunk.bn1.momentum)
        assert (model.head.norm.eps, model.head.norm.momentum) == (1e-3, 0.2)


@pytest.mark.parametrize('name, reason', [
    # DeiT distilled has two classifiers on two tokens: no single Linear on the pooled feature
    ('deit_tiny_distilled_patch16_224.fb_in1k', 'its classifier is 2 layers'),
    # EfficientViT (MSRA) has a BatchNorm before its Linear, which reset_classifier removes with it
    ('efficientvit_m0.r224_in1k', 'holds more than the classifier'),
])
def test_unconvertible_classifier_warns_and_starts_fresh(name, reason, hub_cache, tmp_path, caplog):
    base = _random_base_weights(hub_cache, name, tmp_path)
    arch, tag = name.split('.')
    with caplog.at_level(logging.WARNING):
        model = timm.create_model(f'{arch}_ssm.{tag}', pretrained=True)
    assert 'cannot start the Split-and-Share head' in caplog.text and reason in caplog.text
    base_sd = base.state_dict()
    for k, v in model.trunk.state_dict().items():
        torch.testing.assert_close(v, base_sd[k])


def test_pretrained_in_chans_adapts_the_trunk_stem(hub_cache, tmp_path):
    base = _random_base_weights(hub_cache, 'test_resnet.r160_in1k', tmp_path)
    model = timm.create_model('test_resnet_ssm.r160_in1k', pretrained=True, in_chans=1).eval()
    first_conv = base.pretrained_cfg['first_conv']
    expected = base.state_dict()[first_conv + '.weight'].sum(1, keepdim=True)
    torch.testing.assert_close(model.state_dict()['trunk.' + first_conv + '.weight'], expected)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)


def _trained_ssm(name='test_resnet_ssm', **kwargs):
    model = timm.create_model(name, num_classes=5, **kwargs)
    model.train()
    for _ in range(2):
        model(torch.randn(4, 3, 64, 64)).sum().backward()  # moves the head's BatchNorm statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_hf_hub_ssm_weights_round_trip(hub_cache, tmp_path):
    model = _trained_ssm(num_splits=8)
    save_for_hf(model, tmp_path / 'export', safe_serialization=True)
    hub_cache.put('someone/test-resnet-ssm', tmp_path / 'export')

    loaded = timm.create_model('hf-hub:someone/test-resnet-ssm', pretrained=True).eval()
    assert isinstance(loaded, timm_ssm.SplitShareNet) and loaded.head.num_splits == 8
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)

    local = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(local(x), model(x), rtol=1e-5, atol=1e-5)


def test_hf_hub_fine_tune_drops_only_final_linears(hub_cache, tmp_path):
    model = _trained_ssm()
    save_for_hf(model, tmp_path / 'export', safe_serialization=True)
    hub_cache.put('someone/test-resnet-ssm-ft', tmp_path / 'export')

    tuned = timm.create_model('hf-hub:someone/test-resnet-ssm-ft', pretrained=True, num_classes=3)
    source = model.state_dict()
    for k, v in tuned.state_dict().items():
        if k in ('head.weight', 'head.bias'):
            assert v.shape[0] == (4 * 3 if k == 'head.bias' else 3)
        else:
            torch.testing.assert_close(v, source[k], msg=k)  # trunk and the head's BatchNorm


def test_features_only_from_ssm_weights(hub_cache, tmp_path):
    model = _trained_ssm()
    save_for_hf(model, tmp_path / 'export', safe_serialization=True)
    hub_cache.put('someone/test-resnet-ssm-feat', tmp_path / 'export')

    features = timm.create_model('hf-hub:someone/test-resnet-ssm-feat', pretrained=True, features_only=True).eval()
    reference = timm.create_model('test_resnet', features_only=True).eval()
    reference.load_state_dict(
        {k: v for k, v in model.trunk.state_dict().items() if k in reference.state_dict()}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(features(x), reference(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('kwargs', [dict(num_splits=1), dict(num_splits=2, split=False)], ids=['n1', '2fc'])
def test_one_split_and_the_controls_convert_exactly(kwargs, hub_cache, tmp_path):
    base = _random_base_weights(hub_cache, 'test_resnet.r160_in1k', tmp_path)
    model = timm.create_model('test_resnet_ssm.r160_in1k', pretrained=True, **kwargs).eval()
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-4, atol=1e-4)
    if kwargs['num_splits'] == 1:  # one Linear on all C channels is the plain classifier itself
        torch.testing.assert_close(model.head.weight, base.fc.weight)


def _plain(name='test_resnet', num_classes=5):
    """A plain timm model, as a user fine-tuned it: random weights away from a fresh init."""
    base = timm.create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.2)
    return base


@pytest.mark.parametrize('name', ['test_resnet', 'test_vit', 'test_convnext'])
def test_plain_checkpoint_path_predicts_as_the_plain_model(name, tmp_path):
    """checkpoint_path= with a plain timm model's state dict: the trunk loads it and the head is converted from
    its classifier (test_vit's is `head`, test_convnext's `head.fc`): the logits are the plain model's."""
    base = _plain(name)
    torch.save(base.state_dict(), tmp_path / 'plain.pth')
    model = timm.create_model(f'{name}_ssm', num_classes=5, checkpoint_path=str(tmp_path / 'plain.pth')).eval()
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-4, atol=1e-4)


def test_plain_train_py_checkpoint_through_load_checkpoint(tmp_path):
    base = _plain()
    args = argparse.Namespace(model='test_resnet', num_classes=5)
    torch.save({'epoch': 3, 'arch': 'test_resnet', 'state_dict': base.state_dict(), 'args': args},
               tmp_path / 'last.pth.tar')
    model = timm.create_model('test_resnet_ssm', num_classes=5)
    load_checkpoint(model, str(tmp_path / 'last.pth.tar'))
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), base(x), rtol=1e-4, atol=1e-4)


def test_plain_checkpoint_of_other_classes_loads_the_trunk_with_one_warning(tmp_path, caplog):
    base = _plain(num_classes=5)
    torch.save(base.state_dict(), tmp_path / 'plain.pth')
    with caplog.at_level(logging.WARNING):
        model = timm.create_model('test_resnet_ssm', num_classes=3, checkpoint_path=str(tmp_path / 'plain.pth'))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'it has 5 classes, the model 3' in warnings[0].getMessage()
    assert 'the trunk loads them, the head starts fresh' in warnings[0].getMessage()
    base_sd = base.state_dict()
    for k, v in model.trunk.state_dict().items():
        torch.testing.assert_close(v, base_sd[k], msg=k)
    assert model.head.weight.shape == (3, 240) and model.head.weight[:, 0].abs().sum() > 0  # fresh, not converted


@pytest.mark.parametrize('file_name', ['model.safetensors', 'last.pth.tar'])
def test_pretrained_file_of_ssm_weights_loads_the_whole_model(file_name, tmp_path):
    """pretrained_cfg_overlay=dict(file=F), what train.py --pretrained-path F does, with SSM weights."""
    model = _trained_ssm()
    path = tmp_path / file_name
    if file_name.endswith('.safetensors'):
        safetensors.torch.save_file(model.state_dict(), path)
    else:
        torch.save({'epoch': 0, 'state_dict': model.state_dict()}, path)
    loaded = timm.create_model('test_resnet_ssm', pretrained=True, num_classes=5,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=5)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # as for a plain timm model, a file whose classes the cfg does not give (train.py's num_classes=-1) loads
    # all but the classifier
    tuned = timm.create_model('test_resnet_ssm', pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))
    for k, v in model.state_dict().items():
        if k not in ('head.weight', 'head.bias'):
            torch.testing.assert_close(tuned.state_dict()[k], v, msg=k)
    assert not torch.equal(tuned.head.weight, model.head.weight)


def test_pretrained_file_of_a_plain_model_converts_and_adapts_the_stem(tmp_path, caplog):
    base = _plain()
    safetensors.torch.save_file(base.state_dict(), tmp_path / 'plain.safetensors')
    overlay = dict(file=str(tmp_path / 'plain.safetensors'), num_classes=5)
    model = timm.create_model('test_resnet_ssm', pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay).eval()
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-4, atol=1e-4)
    with caplog.at_level(logging.WARNING):  # other classes: the trunk loads, the head starts fresh, with a word
        timm.create_model('test_resnet_ssm', pretrained=True, num_classes=3, pretrained_cfg_overlay=overlay)
    assert [r.getMessage().count('it has 5 classes, the model 3') for r in caplog.records] == [1]
    # timm's input conv adaptation runs on the converted weights
    gray = timm.create_model('test_resnet_ssm', pretrained=True, num_classes=5, in_chans=1,
                             pretrained_cfg_overlay=overlay)
    first_conv = base.pretrained_cfg['first_conv'] + '.weight'
    torch.testing.assert_close(gray.trunk.state_dict()[first_conv], base.state_dict()[first_conv].sum(1, keepdim=True))
    features = timm.create_model('test_resnet_ssm', pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    reference = timm.create_model('test_resnet', features_only=True)
    reference.load_state_dict({k: v for k, v in base.state_dict().items() if k in reference.state_dict()})
    with torch.no_grad():
        for a, b in zip(features.eval()(x), reference.eval()(x)):
            torch.testing.assert_close(a, b)


def test_weights_of_neither_layout_are_an_error_that_says_what_they_hold(tmp_path):
    other = timm.create_model('test_convnext', num_classes=5)
    torch.save(other.state_dict(), tmp_path / 'other.pth')
    safetensors.torch.save_file(other.state_dict(), tmp_path / 'other.safetensors')
    first_key = next(iter(other.state_dict()))
    with pytest.raises(RuntimeError, match=rf'fit neither .* nor a plain test_resnet .* such as {first_key}'):
        timm.create_model('test_resnet_ssm', num_classes=5, checkpoint_path=str(tmp_path / 'other.pth'))
    with pytest.raises(RuntimeError, match=r'fit neither'):  # also where timm loads without strict (num_classes=-1)
        timm.create_model('test_resnet_ssm', pretrained=True, pretrained_cfg_overlay=dict(
            file=str(tmp_path / 'other.safetensors'), num_classes=-1))


def test_ssm_weights_without_some_trunk_tensors_say_so_without_strict(caplog):
    model = timm.create_model('test_resnet_ssm', num_classes=5)
    state = model.state_dict()
    del state['trunk.conv1.0.weight']
    with caplog.at_level(logging.WARNING):
        timm.create_model('test_resnet_ssm', num_classes=5).load_state_dict(state, strict=False)
    assert 'lack 1 of the 90 tensors of the test_resnet trunk, such as trunk.conv1.0.weight' in caplog.text


def test_checkpoints_with_the_n_by_k_bias_of_earlier_releases_load(tmp_path):
    model = _trained_ssm()
    state = model.state_dict()
    state['head.bias'] = state['head.bias'].view(4, -1).clone()
    torch.save({'state_dict': state}, tmp_path / 'last.pth.tar')
    loaded = timm.create_model('test_resnet_ssm', num_classes=5).eval()
    load_checkpoint(loaded, str(tmp_path / 'last.pth.tar'))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
