"""ACGAN objectives (Odena et al. 2017; Yu et al. 2023, Eqs. 2-5), written on raw logits.

The source loss L_S (real vs. fake) uses BCE-with-logits and the class loss L_C cross-entropy on
logits, never sigmoid/softmax followed by log, which is numerically unstable. D maximises
L_S + L_C, i.e. minimises

    BCE(s(x_real), 1) + BCE(s(G(z, c).detach()), 0) + CE(c(x_real), y_real) + CE(c(G(z, c)), c);

the last term (D's class head trained on fakes) is optional: with it, D and G can agree on a class
code of G's own invention that no real image carries, while D's class head never learns the real
classes (short runs on few images: class accuracy on fakes near 1, on reals at chance).

G maximises L_C - L_S in its non-saturating form, i.e. minimises BCE(s(G(z, c)), 1) + CE(c(G(z, c)), c).

Both functions return the loss and named statistics (detached 0-d tensors, so logging them costs
no device sync until the caller asks for `.item()`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["discriminator_loss", "generator_loss", "mode_seeking_loss"]

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
    fake_class_loss: bool = True,
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
        fake_class_loss: train the class head on generated images too (Eq. 2-4, the paper); False
            trains it on real images only, so G's class signal is what real images of a class share.

    Returns:
        The scalar loss and stats: d_loss, d_adv, d_cls, d_real_acc (real scored real), d_fake_acc
        (fake scored fake), d_cls_acc_real, d_cls_acc_fake.
    """
    adv_real = F.binary_cross_entropy_with_logits(real_rf, torch.ones_like(real_rf))
    adv_fake = F.binary_cross_entropy_with_logits(fake_rf, torch.zeros_like(fake_rf))
    cls_real = F.cross_entropy(real_cls, y_real)
    cls_fake = F.cross_entropy(fake_cls, y_fake)
    adv = adv_real + adv_fake
    cls = cls_real + cls_fake if fake_class_loss else cls_real
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


def mode_seeking_loss(
    fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Mode-seeking term of MSGAN (Mao et al. 2019, Eq. 3), to be minimised by G.

    The inverse of mean |G(z_a, c) - G(z_b, c)| / mean |z_a - z_b| over pairs generated for the same
    labels: G is penalised when different noise gives the same image, which the class term of a
    short ACGAN run otherwise drives it to (one image per class).

    Args:
        fake_a, fake_b: generated images (P, C, H, W), pair i generated for the same label.
        z_a, z_b: their noise (P, z_dim).
    """
    ratio = (fake_a - fake_b).abs().mean() / (z_a - z_b).abs().mean()
    return 1.0 / (ratio + eps)
