"""SplitShareHead against a plain per-head reference written straight from the paper (section 3, Algorithm 1)."""
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
        for fc, ref_fc in zip(head.fc, reference.fcs):
            fc.load_state_dict(ref_fc.state_dict())
    return head, reference


def _head_grads(head):
    """The head's gradients in the reference's layout."""
    num_norm = len(head.widths) if head.norm_all else len(head.widths) - 1
    bn_w = head.norm.weight.grad.split(head.widths[:num_norm])
    bn_b = head.norm.bias.grad.split(head.widths[:num_norm])
    return list(bn_w) + list(bn_b) + [g for fc in head.fc for g in (fc.weight.grad, fc.bias.grad)]


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
    assert [fc.in_features for fc in head.fc] == head.widths
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
    assert head(x) is x and len(head.fc) == 0 and not list(head.parameters())
    head = SplitShareHead(64, 10)
    assert head(x, pre_logits=True) is x


def test_reset_keeps_norm_device_dtype_and_mode():
    head = SplitShareHead(64, 10).to(torch.float64).eval()
    with torch.no_grad():
        head.norm.running_mean.fill_(0.5)
    norm = head.norm
    head.reset(3)
    assert head.norm is norm and head.num_classes == 3
    assert all(fc.weight.dtype == torch.float64 and fc.out_features == 3 and not fc.training for fc in head.fc)
    assert head(torch.randn(2, 64, dtype=torch.float64)).shape == (2, 3)
    # num_classes=0 drops the sub-classifiers only: the BatchNorm, its statistics and dtype survive to the next reset
    head.reset(0)
    assert len(head.fc) == 0 and head.norm is norm
    head.reset(4)
    assert head.norm is norm and torch.all(norm.running_mean == 0.5)
    assert all(fc.weight.dtype == torch.float64 and not fc.training for fc in head.fc)
    fresh = SplitShareHead(64, 0)
    assert not list(fresh.parameters())  # nothing to keep: a pass-through head has no layers
    fresh.reset(4, dtype=torch.float64)
    assert isinstance(fresh.norm, nn.BatchNorm1d) and fresh.norm.weight.dtype == torch.float64


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
    assert head.widths == [64] and len(head.fc) == 1
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = head.fc[0](head.act(head.norm(x)) if norm_all else x)
        torch.testing.assert_close(head(x), expected)
        torch.testing.assert_close(head.forward_splits(x), expected[:, None])
    if not norm_all:
        assert isinstance(head.norm, nn.Identity) and sum(p.numel() for p in head.parameters()) == 64 * 10 + 10
        linear = nn.Linear(64, 10)
        head.init_from_classifier(linear.weight, linear.bias)
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
    torch.testing.assert_close(splits, torch.stack([fc(x) for fc in head.fc], 1))
    torch.testing.assert_close(head(x), splits.mean(1))
    linear = nn.Linear(64, 10)
    head.init_from_classifier(linear.weight, linear.bias)
    with torch.no_grad():
        torch.testing.assert_close(head(x), linear(x), rtol=1e-5, atol=1e-6)


def test_scripted_head_has_forward_splits():
    head = SplitShareHead(64, 10).eval()
    scripted = torch.jit.script(head)
    x = torch.randn(3, 64)
    torch.testing.assert_close(scripted.forward_splits(x), head.forward_splits(x))
    torch.testing.assert_close(scripted(x), head(x))


def test_init_from_classifier_reproduces_it():
    linear = nn.Linear(64, 10)
    head = SplitShareHead(64, 10).eval()
    head.init_from_classifier(linear.weight, linear.bias)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(head(x), linear(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='norm_all'):
        SplitShareHead(64, 10, norm_all=True).init_from_classifier(linear.weight, linear.bias)
    with pytest.raises(ValueError, match='does not fit'):
        head.init_from_classifier(torch.zeros(10, 32))


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
