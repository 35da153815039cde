"""Imbalance losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bonescan.losses import (
    FocalLoss,
    JointLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    NormedLinear,
    available_losses,
    build_loss,
    drw_schedule,
    drw_weights,
    inverse_frequency_weights,
    ldam_margins,
)


def _batch(seed: int = 0, n: int = 16, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 2, torch.randint(0, k, (n,), generator=g)


# --- focal ---------------------------------------------------------------------------------------------


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = _batch()
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))


def test_focal_with_gamma_zero_and_class_weights_is_weighted_cross_entropy():
    logits, target = _batch()
    w = torch.tensor([0.2, 1.0, 3.0])
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, weight=w)(logits, target), F.cross_entropy(logits, target, weight=w)
    )


def test_focal_value_for_a_two_class_example_by_hand():
    # logits (2, 0), target 0: p_t = 1 / (1 + e^-2); loss = -(1 - p_t)^2 * log p_t.
    p_t = 1.0 / (1.0 + math.exp(-2.0))
    expected = -((1.0 - p_t) ** 2) * math.log(p_t)
    loss = FocalLoss(gamma=2.0)(torch.tensor([[2.0, 0.0]], dtype=torch.float64), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.0018035, abs=1e-6)


def test_focal_down_weights_easy_examples_relative_to_cross_entropy():
    easy, hard = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    target = torch.tensor([0])
    focal = FocalLoss(gamma=2.0)
    assert focal(easy, target) / F.cross_entropy(easy, target) < focal(hard, target) / F.cross_entropy(
        hard, target
    )


# --- LDAM ----------------------------------------------------------------------------------------------


def test_ldam_margins_are_largest_for_the_rarest_class():
    m = ldam_margins([100, 10], max_m=0.5)
    # m_j proportional to n_j^(-1/4); the rare class (10 samples) gets max_m.
    assert m.tolist() == pytest.approx([0.5 * (10 / 100) ** 0.25, 0.5], rel=1e-6)
    assert m[0].item() == pytest.approx(0.28117, abs=1e-5)


def test_ldam_value_for_the_rare_class_by_hand():
    # counts (100, 10), target 1 (margin 0.5), s = 30: z = 30 * (0.2, 0.9 - 0.5) = (6, 12).
    loss = LDAMLoss([100, 10], max_m=0.5, s=30.0)(
        torch.tensor([[0.2, 0.9]], dtype=torch.float64), torch.tensor([1])
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(6.0 - 12.0)), rel=1e-5)


def test_ldam_subtracts_the_margin_from_the_target_logit_only():
    # target 0 (margin 0.5 * 0.1^(1/4)), s = 30: z = 30 * (0.5 - m0, 0.4).
    m0 = 0.5 * 0.1**0.25
    z0, z1 = 30 * (0.5 - m0), 30 * 0.4
    loss = LDAMLoss([100, 10])(torch.tensor([[0.5, 0.4]], dtype=torch.float64), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(z1 - z0)), rel=1e-5)


def test_ldam_with_zero_margin_and_unit_scale_is_cross_entropy():
    logits, target = _batch()
    loss = LDAMLoss([50, 20, 5], max_m=0.0, s=1.0)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_ldam_rejects_a_class_without_samples_and_a_wrong_class_count():
    with pytest.raises(ValueError, match="positive"):
        LDAMLoss([10, 0, 3])
    with pytest.raises(ValueError, match="2 classes"):
        LDAMLoss([10, 3, 1])(torch.zeros(1, 2), torch.tensor([0]))


def test_ldam_statistics_are_buffers_that_follow_the_module():
    loss = LDAMLoss([100, 10], weight=[1.0, 2.0]).double()
    assert dict(loss.named_buffers()).keys() == {"margins", "weight"}
    assert loss.margins.dtype == torch.float64 and loss.weight.dtype == torch.float64


# --- joint, DRW, weights -------------------------------------------------------------------------------


def test_joint_loss_is_the_weighted_sum_of_focal_and_ldam():
    logits, target = _batch(k=2)
    counts = [100, 10]
    joint = JointLoss(counts, alpha=0.3, gamma=2.0, max_m=0.5, s=30.0)
    expected = 0.3 * FocalLoss(2.0)(logits, target) + 0.7 * LDAMLoss(counts, 0.5, 30.0)(logits, target)
    torch.testing.assert_close(joint(logits, target), expected)


def test_drw_weights_follow_the_effective_number_formula():
    counts, beta = [100, 10], 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w / sum(raw) * 2 for w in raw]
    assert drw_weights(counts, beta).tolist() == pytest.approx(expected, rel=1e-6)
    assert drw_weights(counts, beta).sum().item() == pytest.approx(2.0)


def test_drw_schedule_is_unweighted_before_the_start_epoch():
    assert drw_schedule(9, [100, 10], start_epoch=10) is None
    torch.testing.assert_close(drw_schedule(10, [100, 10], start_epoch=10), drw_weights([100, 10]))


def test_drw_weights_switch_on_inside_the_loss():
    logits, target = _batch(k=2)
    loss = JointLoss([100, 10])
    unweighted = loss(logits, target)
    loss.set_class_weight(drw_schedule(5, [100, 10], start_epoch=5, beta=0.99))
    assert not torch.allclose(loss(logits, target), unweighted)
    loss.set_class_weight(None)
    torch.testing.assert_close(loss(logits, target), unweighted)


def test_inverse_frequency_weights_sum_to_the_class_count():
    w = inverse_frequency_weights([100, 50, 10])
    assert w.sum().item() == pytest.approx(3.0)
    assert (w[1] / w[0]).item() == pytest.approx(2.0) and (w[2] / w[0]).item() == pytest.approx(10.0)


# --- cosine head ---------------------------------------------------------------------------------------


def test_normed_linear_outputs_cosine_similarities():
    torch.manual_seed(0)
    head = NormedLinear(8, 3)
    x = torch.randn(4, 8)
    out = head(x)
    assert out.shape == (4, 3) and out.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(out, F.cosine_similarity(x[:, None], head.weight[None], dim=2))
    torch.testing.assert_close(head(5.0 * x), out)


def test_ldam_on_a_cosine_head_trains():
    torch.manual_seed(0)
    head, loss = NormedLinear(4, 2), LDAMLoss([30, 3])
    x, y = torch.randn(8, 4), torch.tensor([0] * 6 + [1] * 2)
    loss(head(x), y).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


# --- factory -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ce", nn.CrossEntropyLoss),
        ("weighted_ce", nn.CrossEntropyLoss),
        ("focal", FocalLoss),
        ("ldam", LDAMLoss),
        ("joint", JointLoss),
        ("logit_adjusted", LogitAdjustedLoss),
    ],
)
def test_build_loss_by_name(name, kind):
    loss = build_loss(name, [60, 30, 10])
    assert isinstance(loss, kind)
    logits, target = _batch()
    assert torch.isfinite(loss(logits, target))


def test_weighted_ce_uses_inverse_frequency_weights():
    torch.testing.assert_close(
        build_loss("weighted_ce", [60, 30, 10]).weight, inverse_frequency_weights([60, 30, 10])
    )


def test_build_loss_passes_options_and_drops_none():
    assert build_loss("focal", [5, 5], gamma=None).gamma == 2.0
    assert build_loss("joint", [5, 5], alpha=0.8, s=None).ldam.s == 30.0


def test_unknown_loss_raises_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        build_loss("dice", [1, 2])
    assert available_losses() == ["ce", "focal", "joint", "ldam", "logit_adjusted", "weighted_ce"]


# --- logit adjustment ----------------------------------------------------------------------------------


def test_logit_adjusted_loss_is_cross_entropy_of_logits_plus_tau_log_prior():
    logits, target = _batch()
    counts = torch.tensor([60.0, 30.0, 10.0])
    expected = F.cross_entropy(logits + 0.5 * torch.log(counts / counts.sum()), target)
    torch.testing.assert_close(LogitAdjustedLoss(counts, tau=0.5)(logits, target), expected)


def test_logit_adjusted_loss_with_tau_zero_is_cross_entropy_with_its_smoothing():
    logits, target = _batch(seed=3)
    torch.testing.assert_close(
        LogitAdjustedLoss([60, 30, 10], tau=0.0, label_smoothing=0.1)(logits, target),
        F.cross_entropy(logits, target, label_smoothing=0.1),
    )


def test_logit_adjustment_penalises_a_rare_class_error_more_than_plain_ce():
    """A rare-class sample scored as the common class: the prior term widens the common class's lead."""
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    adjusted = LogitAdjustedLoss([90, 10])(logits, target)
    assert adjusted > F.cross_entropy(logits, target)


def test_logit_adjusted_loss_rejects_a_wrong_class_count_and_a_negative_tau():
    with pytest.raises(ValueError, match="class_counts has 2"):
        LogitAdjustedLoss([5, 5])(*_batch(k=3))
    with pytest.raises(ValueError, match="tau"):
        LogitAdjustedLoss([5, 5], tau=-1.0)


def test_a_class_without_training_images_counts_as_one_image_in_the_logit_adjusted_prior():
    loss = LogitAdjustedLoss([8, 0, 2])
    assert torch.allclose(loss.log_prior.exp(), torch.tensor([8, 1, 2], dtype=torch.float64) / 11)
    logits, target = torch.zeros(4, 3), torch.tensor([0, 0, 2, 2])
    assert torch.isfinite(loss(logits, target))
    with pytest.raises(ValueError, match="positive"):
        LogitAdjustedLoss([8, -1, 2])
