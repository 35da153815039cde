"""ACGAN losses (Yu et al. 2023, Eqs. 2-5) on raw logits."""

import math

import pytest
import torch

from bonescan.gan.losses import discriminator_loss, generator_loss, mode_seeking_loss


def _bce(logit: float, target: int) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -math.log(p) if target == 1 else -math.log(1 - p)


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_discriminator_loss_matches_hand_computed_bce_and_ce():
    real_rf, fake_rf = torch.tensor([[2.0], [-0.5]]), torch.tensor([[-1.0], [0.3]])
    real_cls = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 0.1]])
    fake_cls = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 3.0]])
    y_real, y_fake = torch.tensor([0, 2]), torch.tensor([1, 0])
    loss, stats = discriminator_loss(real_rf, real_cls, fake_rf, fake_cls, y_real, y_fake)
    expected_adv = (_bce(2.0, 1) + _bce(-0.5, 1)) / 2 + (_bce(-1.0, 0) + _bce(0.3, 0)) / 2
    expected_cls = (_ce([1.0, 0.0, -1.0], 0) + _ce([0.2, 0.4, 0.1], 2)) / 2 + (
        _ce([0.0, 2.0, 0.0], 1) + _ce([1.0, 1.0, 3.0], 0)
    ) / 2
    assert loss.item() == pytest.approx(expected_adv + expected_cls, rel=1e-6)
    assert stats["d_adv"].item() == pytest.approx(expected_adv, rel=1e-6)
    assert stats["d_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    assert stats["d_real_acc"].item() == 0.5  # 2.0 scored real, -0.5 not
    assert stats["d_fake_acc"].item() == 0.5  # -1.0 scored fake, 0.3 not
    assert stats["d_cls_acc_real"].item() == 0.5  # first correct (0), second predicts 1 not 2
    assert stats["d_cls_acc_fake"].item() == 0.5


def test_generator_loss_matches_hand_computed_bce_and_ce():
    fake_rf = torch.tensor([[0.7], [-2.0]])
    fake_cls = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    y = torch.tensor([1, 1])
    loss, stats = generator_loss(fake_rf, fake_cls, y)
    expected = (_bce(0.7, 1) + _bce(-2.0, 1)) / 2 + (_ce([0.0, 1.0], 1) + _ce([2.0, -1.0], 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["g_fool_rate"].item() == 0.5
    assert stats["g_cls_acc"].item() == 0.5


def test_discriminator_loss_is_lower_when_the_discriminator_is_right():
    y = torch.tensor([0, 1])
    confident = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    right, _ = discriminator_loss(
        torch.full((2, 1), 3.0), confident, torch.full((2, 1), -3.0), confident, y, y
    )
    wrong, _ = discriminator_loss(
        torch.full((2, 1), -3.0), confident.flip(1), torch.full((2, 1), 3.0), confident.flip(1), y, y
    )
    assert right < wrong


def test_generator_loss_is_lower_when_the_discriminator_is_fooled():
    y = torch.tensor([0, 1])
    cls = torch.tensor([[2.0, -2.0], [-2.0, 2.0]])
    fooled, _ = generator_loss(torch.full((2, 1), 3.0), cls, y)
    caught, _ = generator_loss(torch.full((2, 1), -3.0), cls, y)
    assert fooled < caught


def test_losses_take_logits_so_confident_mistakes_stay_finite():
    big = torch.tensor([[100.0]])
    loss, _ = discriminator_loss(
        -big,
        torch.tensor([[-100.0, 100.0]]),
        big,
        torch.tensor([[100.0, -100.0]]),
        torch.tensor([0]),
        torch.tensor([1]),
    )
    assert torch.isfinite(loss) and loss.item() == pytest.approx(600.0, rel=1e-4)


def test_stats_are_detached_and_the_loss_is_differentiable():
    rf = torch.zeros(2, 1, requires_grad=True)
    cls = torch.zeros(2, 3, requires_grad=True)
    loss, stats = generator_loss(rf, cls, torch.tensor([0, 2]), cls_weight=0.5)
    loss.backward()
    assert rf.grad is not None and cls.grad is not None
    assert all(not v.requires_grad for v in stats.values())
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * math.log(3), rel=1e-6)


def test_discriminator_class_head_can_be_trained_on_real_images_only():
    real_rf, fake_rf = torch.zeros(2, 1), torch.zeros(2, 1)
    real_cls = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 0.1]], requires_grad=True)
    fake_cls = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 3.0]], requires_grad=True)
    y_real, y_fake = torch.tensor([0, 2]), torch.tensor([1, 0])
    loss, stats = discriminator_loss(
        real_rf, real_cls, fake_rf, fake_cls, y_real, y_fake, fake_class_loss=False
    )
    expected_cls = (_ce([1.0, 0.0, -1.0], 0) + _ce([0.2, 0.4, 0.1], 2)) / 2
    assert stats["d_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    loss.backward()
    assert real_cls.grad is not None
    assert fake_cls.grad is None  # fakes never teach the class head


def test_mode_seeking_loss_penalises_noise_that_changes_nothing():
    z_a, z_b = torch.zeros(2, 4), torch.ones(2, 4)
    same = torch.zeros(2, 1, 8, 8)
    different = torch.ones(2, 1, 8, 8)
    assert mode_seeking_loss(same, same, z_a, z_b) > 1e4  # collapsed: ratio 0
    assert mode_seeking_loss(same, different, z_a, z_b).item() == pytest.approx(1.0, rel=1e-4)

