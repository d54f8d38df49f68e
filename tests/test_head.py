"""SplitShareHead against a plain per-head reference written straight from the paper (section 3, Algorithm 1)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reference import ReferenceSSM
from timm_ssm import IndividualLoss, SplitShareHead


def _matched_pair(in_features=64, num_classes=10, num_splits=4, norm_all=False):
    reference = ReferenceSSM(in_features, num_classes, num_splits, norm_all)
    with torch.no_grad():
        for bn in reference.bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    head = SplitShareHead(in_features, num_classes, num_splits=num_splits, norm_all=norm_all)
    with torch.no_grad():
        head.norm.weight.copy_(torch.cat([bn.weight for bn in reference.bns]))
        head.norm.bias.copy_(torch.cat([bn.bias for bn in reference.bns]))
        head.weight.copy_(torch.cat([fc.weight for fc in reference.fcs], 1))
        head.bias.copy_(torch.cat([fc.bias for fc in reference.fcs]))
    return head, reference


def _head_grads(head):
    """The head's gradients in the reference's layout."""
    num_norm = len(head.widths) if head.norm_all else len(head.widths) - 1
    bn_w = head.norm.weight.grad.split(head.widths[:num_norm])
    bn_b = head.norm.bias.grad.split(head.widths[:num_norm])
    fc = [g for w, b in zip(head.weight.grad.split(head.widths, 1), head.bias.grad.view(len(head.widths), -1))
          for g in (w, b)]
    return list(bn_w) + list(bn_b) + fc


def _sub_classifiers(head):
    """(weight, bias) of each sub-classifier: the blocks of the head's one weight, its rows of biases."""
    return list(zip(head.weight.split(head.widths, 1), head.bias.view(head.num_splits, -1)))


@torch.no_grad()
def _start_from(head, linear):
    weight, bias = head.converted_classifier(linear.weight, linear.bias)
    head.weight.copy_(weight)
    head.bias.copy_(bias)


def _ref_grads(reference):
    return [bn.weight.grad for bn in reference.bns] + [bn.bias.grad for bn in reference.bns] + [
        g for fc in reference.fcs for g in (fc.weight.grad, fc.bias.grad)]


@pytest.mark.parametrize('norm_all', [False, True])
@pytest.mark.parametrize('num_splits', [4, 2, 8])
def test_matches_reference_train_and_eval(norm_all, num_splits):
    head, reference = _matched_pair(num_splits=num_splits, norm_all=norm_all)
    head.train()
    reference.train()
    for step in range(3):
        x = torch.randn(16, 64) * 2 + 1
        x_ref = x.clone().requires_grad_()
        x = x.requires_grad_()
        out, out_ref = head(x), reference(x_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        target = torch.randint(0, 10, (16,))
        F.cross_entropy(out, target).backward()
        F.cross_entropy(out_ref, target).backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-7)
        for g, g_ref in zip(_head_grads(head), _ref_grads(reference)):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
        head.zero_grad()
        reference.zero_grad()

    # running statistics of every prefix, after the same steps
    num_norm = len(reference.bns)
    torch.testing.assert_close(
        head.norm.running_mean, torch.cat([bn.running_mean for bn in reference.bns]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        head.norm.running_var, torch.cat([bn.running_var for bn in reference.bns]), rtol=1e-5, atol=1e-6)
    assert head.norm.num_batches_tracked.item() == reference.bns[num_norm - 1].num_batches_tracked.item() == 3

    head.eval()
    reference.eval()
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(head(x), reference(x), rtol=1e-5, atol=1e-6)
        splits = head.forward_splits(x)
        assert splits.shape == (5, num_splits, 10)
        for i, ref_logits in enumerate(reference.forward_splits(x)):
            torch.testing.assert_close(splits[:, i], ref_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(splits.mean(1), head(x), rtol=1e-5, atol=1e-6)


def test_parameter_layout_matches_paper():
    head = SplitShareHead(2048, 1000)
    assert head.widths == [512, 1024, 1536, 2048]
    assert head.weight.shape == (1000, 512 + 1024 + 1536 + 2048) and head.bias.shape == (4 * 1000,)
    assert head.norm.num_features == 512 + 1024 + 1536  # the first n - 1 prefixes
    assert sum(p.numel() for p in head.parameters()) == 5120 * 1000 + 4 * 1000 + 2 * 3072
    head_all = SplitShareHead(2048, 1000, norm_all=True)
    assert head_all.norm.num_features == 512 + 1024 + 1536 + 2048


def test_indivisible_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r'C=386 .* n=4 .*not divisible'):
        SplitShareHead(386, 10, num_splits=4)


def test_training_batch_of_one_is_a_clear_error():
    head = SplitShareHead(64, 10).train()
    with pytest.raises(AssertionError, match='drop_last=True'):
        head(torch.randn(1, 64))
    head.eval()
    assert head(torch.randn(1, 64)).shape == (1, 10)  # inference is fine


def test_pass_through_and_pre_logits():
    x = torch.randn(3, 64)
    head = SplitShareHead(64, 0)
    assert head(x) is x and head.weight is None and not list(head.parameters())
    head = SplitShareHead(64, 10)
    assert head(x, pre_logits=True) is x


def test_reset_keeps_norm_device_dtype_and_mode():
    head = SplitShareHead(64, 10).to(torch.float64).eval()
    with torch.no_grad():
        head.norm.running_mean.fill_(0.5)
    norm = head.norm
    head.reset(3)
    assert head.norm is norm and head.num_classes == head.out_features == 3
    assert head.weight.dtype == head.bias.dtype == torch.float64 and head.weight.shape[0] == 3 and not head.training
    assert head(torch.randn(2, 64, dtype=torch.float64)).shape == (2, 3)
    # num_classes=0 drops the sub-classifiers only: the BatchNorm, its statistics and dtype survive to the next reset
    head.reset(0)
    assert head.weight is None and head.bias is None and head.norm is norm
    head.reset(4)
    assert head.norm is norm and torch.all(norm.running_mean == 0.5)
    assert head.weight.dtype == torch.float64 and head.weight.shape[0] == 4
    fresh = SplitShareHead(64, 0)
    assert not list(fresh.parameters())  # nothing to keep: a pass-through head has no layers
    fresh.reset(4, dtype=torch.float64)
    assert isinstance(fresh.norm, nn.BatchNorm2d) and fresh.norm.weight.dtype == torch.float64


def test_training_batch_message_gives_the_batch_size():
    head = SplitShareHead(64, 10).train()
    for batch in (0, 1):
        with pytest.raises(AssertionError, match=f'training batch of {batch} samples'):
            head(torch.randn(batch, 64))


def test_bad_sizes_fail_early():
    with pytest.raises(ValueError, match='num_splits >= 1'):
        SplitShareHead(64, 10, num_splits=0)
    with pytest.raises(ValueError, match='num_classes >= 0'):
        SplitShareHead(64, -1)
    with pytest.raises(ValueError, match='num_classes >= 0'):
        SplitShareHead(64, 10).reset(-2)
    with pytest.raises(ValueError, match='norm_all'):
        SplitShareHead(64, 10, split=False, norm_all=True)
    with pytest.raises(RuntimeError, match=r'num_classes=0 .* reset_classifier'):
        SplitShareHead(64, 0).forward_splits(torch.randn(2, 64))
    with pytest.raises(AssertionError, match=r'pooled \(batch, channels\) features: .* global_pool'):
        SplitShareHead(64, 10).eval()(torch.randn(2, 64, 1, 1))


@pytest.mark.parametrize('norm_all', [False, True])
def test_one_split_is_the_plain_classifier(norm_all):
    head = SplitShareHead(64, 10, num_splits=1, norm_all=norm_all).eval()
    assert head.widths == [64] and head.weight.shape == (10, 64)
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = F.linear(F.batch_norm(x, head.norm.running_mean, head.norm.running_var, head.norm.weight,
                                         head.norm.bias).relu() if norm_all else x, head.weight, head.bias)
        torch.testing.assert_close(head(x), expected)
        torch.testing.assert_close(head.forward_splits(x), expected[:, None])
    if not norm_all:
        assert isinstance(head.norm, nn.Identity) and sum(p.numel() for p in head.parameters()) == 64 * 10 + 10
        linear = nn.Linear(64, 10)
        _start_from(head, linear)
        with torch.no_grad():
            torch.testing.assert_close(head(x), linear(x))


@pytest.mark.parametrize('k', [2, 3])
def test_unsplit_controls_are_parallel_plain_classifiers(k):
    """split=False: Table 4's kFC controls, k Linear layers each on all C channels, no norm, averaged."""
    head = SplitShareHead(64, 10, num_splits=k, split=False).train()
    assert head.widths == [64] * k and isinstance(head.norm, nn.Identity)
    assert sum(p.numel() for p in head.parameters()) == k * (64 * 10 + 10)
    x = torch.randn(1, 64)  # no BatchNorm, so a batch of 1 trains
    splits = head.forward_splits(x)
    torch.testing.assert_close(splits, torch.stack([F.linear(x, w, b) for w, b in _sub_classifiers(head)], 1))
    torch.testing.assert_close(head(x), splits.mean(1))
    linear = nn.Linear(64, 10)
    _start_from(head, linear)
    with torch.no_grad():
        torch.testing.assert_close(head(x), linear(x), rtol=1e-5, atol=1e-6)


def test_scripted_head_has_forward_splits():
    head = SplitShareHead(64, 10).eval()
    scripted = torch.jit.script(head)
    x = torch.randn(3, 64)
    torch.testing.assert_close(scripted.forward_splits(x), head.forward_splits(x))
    torch.testing.assert_close(scripted(x), head(x))


def test_converted_classifier_reproduces_it():
    linear = nn.Linear(64, 10)
    head = SplitShareHead(64, 10).eval()
    _start_from(head, linear)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(head(x), linear(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='norm_all'):
        SplitShareHead(64, 10, norm_all=True).converted_classifier(linear.weight, linear.bias)
    with pytest.raises(ValueError, match='does not fit'):
        head.converted_classifier(torch.zeros(10, 32))


def test_individual_loss_is_each_sub_classifier_with_its_own_loss():
    head = SplitShareHead(64, 10).train()
    x, target = torch.randn(8, 64), torch.randint(0, 10, (8,))
    splits = head.forward_splits(x)
    loss = IndividualLoss()(splits, target)
    expected = sum(F.cross_entropy(splits[:, i], target) for i in range(4))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match='forward_splits'):
        IndividualLoss()(head(x), target)


def test_weight_and_bias_act_on_the_averaged_output_as_a_plain_classifiers():
    """train.py's --head-init-scale (weight and bias times s) and --head-init-bias (constant_(bias, v)) on
    `get_classifier()`: the averaged output is scaled by s and gets the bias v, as with a plain Linear."""
    head = SplitShareHead(64, 10).eval()
    x = torch.randn(5, 64)
    with torch.no_grad():
        out = head(x)
        head.weight.mul_(0.5)
        head.bias.mul_(0.5)
        torch.testing.assert_close(head(x), out * 0.5)
        nn.init.constant_(head.bias, -2.0)
        head.weight.zero_()
        torch.testing.assert_close(head(x), torch.full((5, 10), -2.0))


def test_each_sub_classifier_starts_as_its_own_linear():
    torch.manual_seed(0)
    head = SplitShareHead(256, 500)
    for i, (weight, bias) in enumerate(_sub_classifiers(head)):
        bound = 1 / head.widths[i] ** 0.5  # nn.Linear(width, 500)'s uniform bound, weight and bias
        for t in (weight, bias):
            assert t.abs().max() <= bound and t.abs().max() > 0.95 * bound
            torch.testing.assert_close(t.std(), torch.tensor(bound / 3 ** 0.5), rtol=0.1, atol=0)


def test_initial_weights_follow_the_seed_without_drawing_from_the_global_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    head = SplitShareHead(64, 10, norm_kwargs=dict(momentum=0.01, eps=1e-3))
    assert torch.equal(torch.get_rng_state(), state)
    assert (head.norm.momentum, head.norm.eps) == (0.01, 1e-3)
    torch.manual_seed(0)
    assert torch.equal(SplitShareHead(64, 10).weight, head.weight)
    torch.manual_seed(1)
    assert not torch.equal(SplitShareHead(64, 10).weight, head.weight)


def test_head_norm_splits_by_augmentation_with_split_bn():
    """timm's convert_splitbn_model (train.py --split-bn): each augmentation split of the batch is normalized by
    its own BatchNorm in training; the clean split's is the one used in eval."""
    from timm.layers import convert_splitbn_model
    clean, augmented = SplitShareHead(64, 10).train(), SplitShareHead(64, 10).train()
    augmented.load_state_dict(clean.state_dict())
    split = convert_splitbn_model(copy.deepcopy(clean), 2).train()
    x = torch.randn(8, 64)
    out = split(x)
    torch.testing.assert_close(out[:4], clean(x[:4]))
    torch.testing.assert_close(out[4:], augmented(x[4:]))
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x), clean.eval()(x))  # the clean split's statistics
