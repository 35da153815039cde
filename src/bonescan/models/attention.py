"""Attention blocks, pluggable by name through `make_attention(name, channels)`.

- "se": squeeze-and-excitation (Hu et al. 2018), torchvision's implementation.
- "ca": coordinate attention (Hou et al. 2021, "Coordinate Attention for Efficient Mobile Network
  Design"): channel attention factorised into a height and a width direction, so the weights keep
  where along each axis a feature is (a lesion's position on a tall whole-body scan).
- "caco": channel attention followed by coordinate attention (Shi et al. 2023), the block that
  replaces SE in `mobilenet_v3_caco`.
- "soft_threshold": channel-wise soft thresholding (Zhao et al. 2020, deep residual shrinkage
  networks, DRSN-CW), used by Tan et al. 2024 to suppress low-amplitude noise.
- "none": identity.

Every class takes `channels` first and maps (B, C, H, W) to (B, C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import SqueezeExcitation

__all__ = [
    "ATTENTION_LAYERS",
    "CaCo",
    "ChannelAttention",
    "CoordinateAttention",
    "SoftThreshold",
    "SqueezeExcite",
    "make_attention",
    "make_divisible",
]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, at most 10 % below `value` (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(SqueezeExcitation):
    """SE with the squeeze width derived from a reduction ratio (torchvision's fc1/fc2 parameter names).

    Args:
        channels: C.
        reduction: squeeze width is C / reduction, rounded to a multiple of 8.
        gate: activation producing the (0, 1) channel weights.
    """

    def __init__(
        self, channels: int, reduction: int = 4, gate: Callable[..., nn.Module] = nn.Sigmoid
    ) -> None:
        super().__init__(channels, make_divisible(channels // reduction, 8), scale_activation=gate)


class ChannelAttention(nn.Module):
    """Channel attention of CBAM (Woo et al. 2018): sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) * x.

    Average and max pooling through one shared bottleneck MLP; max pooling keeps the response of
    small hot spots that averaging over a whole-body view would wash out.

    Args:
        channels: C.
        reduction: hidden width is C / reduction, rounded to a multiple of 8.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = make_divisible(channels // reduction, 8)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def attention(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> channel weights (B, C, 1, 1) in (0, 1)."""
        avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return torch.sigmoid(avg + mx)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CoordinateAttention(nn.Module):
    """Coordinate attention: out = x * a_h * a_w with a_h (B, C, H, 1) and a_w (B, C, 1, W).

    Pool along W and along H, concatenate the two strips, 1x1 conv to `mip` channels, BN,
    h-swish, split back, and one 1x1 conv + sigmoid per direction (Hou et al. 2021, Fig. 2c).

    Args:
        channels: C.
        reduction: mip = max(min_mip, C // reduction).
        min_mip: lower bound of the bottleneck width.
    """

    def __init__(self, channels: int, reduction: int = 32, min_mip: int = 8) -> None:
        super().__init__()
        mip = max(min_mip, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def attention_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (a_h (B, C, H, 1), a_w (B, C, 1, W)), both in (0, 1)."""
        h, w = x.shape[2:]
        x_h = x.mean(3, keepdim=True)  # (B, C, H, 1)
        x_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))  # (B, mip, H + W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)
        return torch.sigmoid(self.conv_h(y_h)), torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        a_h, a_w = self.attention_maps(x)
        return x * a_h * a_w


class CaCo(nn.Module):
    """Channel attention, then coordinate attention (Shi et al. 2023): which channels, then where.

    Args:
        channels: C.
        reduction: channel-attention bottleneck ratio (4, the SE ratio of MobileNetV3 it replaces).
        ca_reduction: coordinate-attention ratio (32 as in Hou et al.).
    """

    def __init__(self, channels: int, reduction: int = 4, ca_reduction: int = 32) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.coord = CoordinateAttention(channels, ca_reduction)

    def forward(self, x: Tensor) -> Tensor:
        return self.coord(self.channel(x))


class SoftThreshold(nn.Module):
    """Channel-wise soft thresholding with learned thresholds (DRSN-CW, Zhao et al. 2020).

    tau_c = mean(|x_c|) * sigmoid(fc(gap(|x|)))_c, then y = sign(x) * max(|x| - tau, 0):
    responses weaker than a channel's noise floor become exactly zero. Unlike DRSN the small
    MLP has no BatchNorm, so batches of one image still train.

    Args:
        channels: C.
        reduction: MLP hidden width is C / reduction, rounded to a multiple of 8.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = make_divisible(channels // reduction, 8)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def thresholds(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> tau (B, C, 1, 1), 0 <= tau < mean(|x|) per channel."""
        gap = x.abs().mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return gap * torch.sigmoid(self.fc2(self.act(self.fc1(gap))))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sign(x) * torch.relu(x.abs() - self.thresholds(x))


ATTENTION_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "se": SqueezeExcite,
    "ca": CoordinateAttention,
    "caco": CaCo,
    "soft_threshold": SoftThreshold,
    "none": nn.Identity,  # accepts and ignores `channels`
}


def make_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Attention block by name (see `ATTENTION_LAYERS`), (B, C, H, W) -> (B, C, H, W).

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    try:
        layer = ATTENTION_LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; available: {sorted(ATTENTION_LAYERS)}") from None
    return layer(channels, **kwargs)
