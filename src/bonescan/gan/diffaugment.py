"""Differentiable augmentation for data-efficient GAN training (Zhao et al. 2020, "DiffAugment").

With a few hundred images the discriminator memorises the real set and ACGAN collapses onto easily
classified samples. DiffAugment applies the same random, differentiable transforms to every image D
sees — real and fake, in the D step and in the G step — so D cannot tell the sets apart by the
augmentation and gradients still reach G through it.

Policies (names joined by commas, applied in the given order):
    color        brightness shift in [-0.5, 0.5], saturation (multi-channel only), contrast in [0.5, 1.5]
    translation  integer shift of up to `translation_ratio` of each side, filled with `fill`
    cutout       one rectangle of `cutout_ratio` of each side set to `fill`

Images are expected in [-1, 1]; `fill` defaults to -1, the black background of a normalised scan,
so translation and cutout never paint grey borders that exist in no real image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

__all__ = ["POLICIES", "DiffAugment", "parse_policy"]


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn from `generator` (on its device) or the global RNG, on x's device."""
    device = generator.device if generator is not None else x.device
    return torch.rand(shape, generator=generator, device=device).to(device=x.device, dtype=x.dtype)


def _randint(low: int, high: int, n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n integers in [low, high) drawn like `_rand`, as int64 on x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randint(low, high, (n,), generator=generator, device=device).to(x.device)


def brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add one offset in [-0.5, 0.5) per image.  (B, C, H, W) -> same."""
    return x + (_rand((x.shape[0], 1, 1, 1), x, generator) - 0.5)


def saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale the deviation from the channel mean by [0, 2); identity for one channel."""
    if x.shape[1] == 1:
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, generator) * 2) + mean


def contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale the deviation from the image mean by [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, generator) + 0.5) + mean


def translation(
    x: torch.Tensor, generator: torch.Generator | None = None, *, ratio: float = 0.125, fill: float = -1.0
) -> torch.Tensor:
    """Shift each image by up to `ratio` of its height and width; uncovered pixels become `fill`."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(-max_dy, max_dy + 1, b, x, generator).view(b, 1, 1)
    dx = _randint(-max_dx, max_dx + 1, b, x, generator).view(b, 1, 1)
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy), value=fill)  # (B, C, H + 2dy, W + 2dx)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + max_dy - dy  # (B, H, 1) source rows
    cols = torch.arange(w, device=x.device).view(1, 1, w) + max_dx - dx  # (B, 1, W) source cols
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # advanced indexing gathers (B, H, W, C); gather is differentiable w.r.t. x
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def cutout(
    x: torch.Tensor, generator: torch.Generator | None = None, *, ratio: float = 0.5, fill: float = -1.0
) -> torch.Tensor:
    """Set one `ratio`-sized rectangle per image (centre uniform over the image, clipped) to `fill`."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = _randint(0, h, b, x, generator).view(b, 1, 1) - ch // 2
    left = _randint(0, w, b, x, generator).view(b, 1, 1) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, fill), x)


POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """Split "translation,cutout,color" into names; raise ValueError on an unknown one."""
    names = policy.split(",") if isinstance(policy, str) else list(policy)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; choose from {sorted(POLICIES)}")
    return tuple(names)


class DiffAugment:
    """A validated policy, callable on a batch; one instance serves the D and the G step alike.

    Args:
        policy: comma-separated names from `POLICIES` ("" disables augmentation).
        translation_ratio: largest shift as a fraction of each side (1/8 in Zhao et al.).
        cutout_ratio: cutout side as a fraction of each side (1/2 in Zhao et al.).
        fill: value of uncovered/cut-out pixels.

    Usage:
        augment = DiffAugment("translation,cutout,color")
        real_rf, real_cls = discriminator(augment(real))  # D step
        fake_rf, fake_cls = discriminator(augment(generator(z, y)))  # D step (detached) and G step
    """

    def __init__(
        self,
        policy: str | Sequence[str] = "translation,cutout,color",
        *,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.5,
        fill: float = -1.0,
    ) -> None:
        self.policy = parse_policy(policy)
        ops: dict[str, tuple[Callable[..., torch.Tensor], ...]] = {
            "color": (brightness, saturation, contrast),
            "translation": (partial(translation, ratio=translation_ratio, fill=fill),),
            "cutout": (partial(cutout, ratio=cutout_ratio, fill=fill),),
        }
        self._ops = tuple(op for name in self.policy for op in ops[name])

    def __repr__(self) -> str:
        return f"DiffAugment(policy={','.join(self.policy)!r})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (B, C, H, W); random draws come from `generator` or the global RNG."""
        for op in self._ops:
            x = op(x, generator)
        return x
