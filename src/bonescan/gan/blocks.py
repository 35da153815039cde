"""Building blocks of MU-ACGAN (Yu et al. 2023, Figs. 4-6) and helpers shared by the GAN models.

The residual dense attention block (RDA, Fig. 6) and the residual coordinate-attention gate (RCAG,
Fig. 5) both rely on coordinate attention (Hou et al. 2021), which lives with the classifiers'
attention modules in `bonescan.models.attention` so there is one implementation of it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from bonescan.models.attention import CoordinateAttention

__all__ = [
    "RDABlock",
    "RCAGate",
    "apply_spectral_norm",
    "check_image_size",
    "class_dependent_keys",
    "conv_bn_prelu",
]


def conv_bn_prelu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias: BN follows) -> BN -> PReLU, spatial size kept."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


class RDABlock(nn.Module):
    """Residual dense attention block (Yu et al. 2023, Fig. 6).

    Three 3x3 conv-BN-PReLU layers are densely connected: the i-th conv sees a 1x1 compression of the
    concatenation of the block input and all earlier conv outputs. The third concatenation is
    compressed to `out_channels`, passed through coordinate attention and added to the (1x1-projected
    when the widths differ) block input.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of the block output.
        growth: channels each 3x3 conv produces; defaults to `out_channels`.

    Shape:
        (B, in_channels, H, W) -> (B, out_channels, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int, growth: int | None = None) -> None:
        super().__init__()
        g = growth or out_channels
        self.convs = nn.ModuleList([conv_bn_prelu(in_channels, g), conv_bn_prelu(g, g), conv_bn_prelu(g, g)])
        # compress[i] squeezes concat(input, y_1..y_{i+1}); the last one sets the output width
        self.compress = nn.ModuleList(
            [
                nn.Conv2d(in_channels + g, g, 1),
                nn.Conv2d(in_channels + 2 * g, g, 1),
                nn.Conv2d(in_channels + 3 * g, out_channels, 1),
            ]
        )
        self.attn = CoordinateAttention(out_channels)
        self.shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        h = x
        for conv, compress in zip(self.convs, self.compress, strict=True):
            features.append(conv(h))
            h = compress(torch.cat(features, dim=1))
        return self.attn(h) + self.shortcut(x)


class RCAGate(nn.Module):
    """Dual-input residual coordinate-attention gate (Yu et al. 2023, Fig. 5).

    Concatenates two same-sized feature maps into xc, re-weights it with coordinate attention,
    fuses xc + CA(xc) and maps the result to `out_channels` with 1x1 conv-BN-PReLU. The generator
    uses it wherever two streams meet: noise/label maps with encoder features, skips with decoder
    features.

    Shape:
        (B, in1, H, W), (B, in2, H, W) -> (B, out_channels, H, W)
    """

    def __init__(self, in1: int, in2: int, out_channels: int) -> None:
        super().__init__()
        self.attn = CoordinateAttention(in1 + in2)
        self.fuse = conv_bn_prelu(in1 + in2, out_channels, kernel_size=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        xc = torch.cat([x1, x2], dim=1)
        return self.fuse(xc + self.attn(xc))


def check_image_size(image_size: tuple[int, int], multiple: int, arch: str) -> tuple[int, int]:
    """Return (H, W) as ints, or raise ValueError when a side is not a positive multiple of `multiple`."""
    if len(image_size) != 2:
        raise ValueError(f"{arch}: image_size must be (height, width), got {tuple(image_size)}")
    h, w = (int(s) for s in image_size)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(
            f"{arch}: image_size (H, W) = ({h}, {w}) must have both sides divisible by {multiple} "
            f"(the network halves the resolution {multiple.bit_length() - 1} times); "
            f"e.g. ({max(multiple, h // multiple * multiple)}, {max(multiple, w // multiple * multiple)})"
        )
    return h, w


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every conv and linear weight in `module`, in place (Miyato et al. 2018)."""
    for child in list(module.modules()):
        if isinstance(child, nn.Conv2d | nn.Linear):
            spectral_norm(child)
    return module


def class_dependent_keys(module: nn.Module) -> list[str]:
    """State-dict keys whose tensors depend on the class count (re-initialised when fine-tuning).

    A model names its class-dependent submodules in a `class_dependent` tuple attribute; everything
    else transfers unchanged from stage-1 (source domain) weights.
    """
    prefixes = tuple(f"{name}." for name in getattr(module, "class_dependent", ()))
    if not prefixes:
        raise TypeError(f"{type(module).__name__} names no class-dependent submodules")
    return [k for k in module.state_dict() if k.startswith(prefixes)]
