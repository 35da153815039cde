"""ACGAN objectives (Odena et al. 2017; Yu et al. 2023, Eqs. 2-5), written on raw logits.

The source loss L_S (real vs. fake) uses BCE-with-logits and the class loss L_C cross-entropy on
logits, never sigmoid/softmax followed by log, which is numerically unstable. D maximises
L_S + L_C, i.e. minimises

    BCE(s(x_real), 1) + BCE(s(G(z, c).detach()), 0) + CE(c(x_real), y_real) + CE(c(G(z, c)), c);

G maximises L_C - L_S in its non-saturating form, i.e. minimises BCE(s(G(z, c)), 1) + CE(c(G(z, c)), c).

Both functions return the loss and named statistics (detached 0-d tensors, so logging them costs
no device sync until the caller asks for `.item()`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["discriminator_loss", "generator_loss"]

Stats = dict[str, torch.Tensor]


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == labels).float().mean()


def discriminator_loss(
    real_rf: torch.Tensor,
    real_cls: torch.Tensor,
    fake_rf: torch.Tensor,
    fake_cls: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    *,
    cls_weight: float = 1.0,
) -> tuple[torch.Tensor, Stats]:
    """Discriminator loss of ACGAN (Eqs. 2-4).

    Compute the fake logits on detached generator output so this loss trains D only.

    Args:
        real_rf: real/fake logits of real images (B, 1).
        real_cls: class logits of real images (B, K).
        fake_rf: real/fake logits of generated images (B', 1).
        fake_cls: class logits of generated images (B', K).
        y_real: labels of the real images (B,).
        y_fake: labels the images were generated for (B',).
        cls_weight: weight of the class terms (1 in the paper).

    Returns:
        The scalar loss and stats: d_loss, d_adv, d_cls, d_real_acc (real scored real), d_fake_acc
        (fake scored fake), d_cls_acc_real, d_cls_acc_fake.
    """
    adv_real = F.binary_cross_entropy_with_logits(real_rf, torch.ones_like(real_rf))
    adv_fake = F.binary_cross_entropy_with_logits(fake_rf, torch.zeros_like(fake_rf))
    cls_real = F.cross_entropy(real_cls, y_real)
    cls_fake = F.cross_entropy(fake_cls, y_fake)
    adv = adv_real + adv_fake
    cls = cls_real + cls_fake
    loss = adv + cls_weight * cls
    with torch.no_grad():
        stats = {
            "d_loss": loss.detach(),
            "d_adv": adv.detach(),
            "d_cls": cls.detach(),
            "d_real_acc": (real_rf > 0).float().mean(),
            "d_fake_acc": (fake_rf < 0).float().mean(),
            "d_cls_acc_real": _accuracy(real_cls, y_real),
            "d_cls_acc_fake": _accuracy(fake_cls, y_fake),
        }
    return loss, stats


def generator_loss(
    fake_rf: torch.Tensor,
    fake_cls: torch.Tensor,
    y_fake: torch.Tensor,
    *,
    cls_weight: float = 1.0,
) -> tuple[torch.Tensor, Stats]:
    """Non-saturating generator loss of ACGAN (Eq. 5).

    Args:
        fake_rf: real/fake logits of generated images, not detached (B, 1).
        fake_cls: class logits of generated images (B, K).
        y_fake: labels the images were generated for (B,).
        cls_weight: weight of the class term (1 in the paper).

    Returns:
        The scalar loss and stats: g_loss, g_adv, g_cls, g_fool_rate (fakes D scored real),
        g_cls_acc (fakes D classified as their intended label).
    """
    adv = F.binary_cross_entropy_with_logits(fake_rf, torch.ones_like(fake_rf))
    cls = F.cross_entropy(fake_cls, y_fake)
    loss = adv + cls_weight * cls
    with torch.no_grad():
        stats = {
            "g_loss": loss.detach(),
            "g_adv": adv.detach(),
            "g_cls": cls.detach(),
            "g_fool_rate": (fake_rf > 0).float().mean(),
            "g_cls_acc": _accuracy(fake_cls, y_fake),
        }
    return loss, stats
