"""Class-conditional GANs for minority-class oversampling: MU-ACGAN (Yu et al. 2023) and ACGAN.

`build(arch, num_classes, image_size)` returns a (generator, discriminator) pair with one interface:
`generator(z, labels) -> (B, C, H, W)` in [-1, 1] and `discriminator(x) -> (real_fake (B, 1),
class_logits (B, num_classes))`, both raw logits. Both networks have `reset_classes(num_classes)` and
name their class-dependent submodules, so stage-1 (source-domain) weights fine-tune on the target.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bonescan.ema import EMA  # shared with the classifier's weight averaging
from bonescan.gan.acgan import build_acgan
from bonescan.gan.blocks import class_dependent_keys
from bonescan.gan.diffaugment import DiffAugment
from bonescan.gan.losses import discriminator_loss, generator_loss, mode_seeking_loss
from bonescan.gan.mu_acgan import build_mu_acgan
from bonescan.models.registry import count_parameters  # one implementation, shared with the classifiers

__all__ = [
    "EMA",
    "DiffAugment",
    "available",
    "build",
    "class_dependent_keys",
    "count_parameters",
    "discriminator_loss",
    "generator_loss",
    "mode_seeking_loss",
]

Builder = Callable[..., tuple[nn.Module, nn.Module]]

_ARCHS: dict[str, Builder] = {
    "mu_acgan": build_mu_acgan,
    "acgan": build_acgan,
}


def available() -> list[str]:
    """Names accepted by `build`."""
    return sorted(_ARCHS)


def build(
    arch: str,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    in_chans: int = 1,
    z_dim: int = 128,
    base_channels: int | None = None,
    **kwargs,
) -> tuple[nn.Module, nn.Module]:
    """Build a generator and a discriminator.

    Args:
        arch: one of `available()`.
        num_classes: number of class labels the pair is conditioned on.
        image_size: (H, W); both sides divisible by 16 (tall whole-body views are fine).
        in_chans: image channels.
        z_dim: noise dimension, exposed as `generator.z_dim`.
        base_channels: width of the first level; None keeps the architecture's default.
        **kwargs: architecture options (e.g. `spectral_norm`, `d_base_channels`, `dropout`); None
            values are dropped so config defaults never override model defaults.

    Raises:
        ValueError: unknown `arch`, or an image size the architecture cannot produce.
    """
    try:
        builder = _ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown GAN architecture {arch!r}; available: {available()}") from None
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    options = {k: v for k, v in {"base_channels": base_channels, **kwargs}.items() if v is not None}
    return builder(num_classes, tuple(image_size), in_chans=in_chans, z_dim=z_dim, **options)
