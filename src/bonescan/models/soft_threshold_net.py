"""Lightweight CNN with soft-threshold attention (Tan et al. 2024).

Stages alternate a depthwise-separable convolution (cheap, downsamples) with an ordinary 3x3
convolution (mixes space and channels jointly), and end in soft-threshold attention (DRSN-CW):
each channel learns a threshold below which responses are set to zero, a learned denoiser for
count-limited (Poisson) images. Stages are residual where shapes allow. The attention is
pluggable by name (`attn_layer`), so the same trunk runs with "se", "ca", "caco" or "none".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from bonescan.models.attention import make_attention
from bonescan.models.base import Classifier
from bonescan.models.pretrained import apply_pretrained
from bonescan.models.registry import register_model

__all__ = ["SoftThresholdNet", "ThresholdStage"]


class ThresholdStage(nn.Module):
    """Depthwise-separable conv (stride s) -> 3x3 conv -> attention, + shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise convolution.
        attn_layer: attention name for `make_attention`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 2, attn_layer: str = "soft_threshold"
    ) -> None:
        super().__init__()
        self.depthwise = Conv2dNormActivation(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = Conv2dNormActivation(in_channels, out_channels, 1)
        self.conv = Conv2dNormActivation(out_channels, out_channels, 3, activation_layer=None)
        self.attn = make_attention(attn_layer, out_channels)
        # Shortcut as in residual shrinkage units: identity, or pooled + 1x1 when the shape changes.
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(
                nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity(),
                Conv2dNormActivation(in_channels, out_channels, 1, activation_layer=None),
            )
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        y = self.attn(self.conv(self.pointwise(self.depthwise(x))))
        return self.act(y + self.shortcut(x))


class SoftThresholdNet(Classifier):
    """Stem conv, `ThresholdStage`s that halve the resolution, global pooling, dropout, linear.

    Args:
        num_classes: number of logits.
        in_chans: input channels.
        widths: output channels of the stem and of each stage.
        attn_layer: attention inside each stage ("soft_threshold" as in Tan et al. 2024).
        drop_rate: dropout before the classifier.
    """

    min_input_size = (1, 1)

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        attn_layer: str = "soft_threshold",
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = Conv2dNormActivation(in_chans, widths[0], 3, stride=2)
        self.stages = nn.Sequential(
            *(
                ThresholdStage(c_in, c_out, 2, attn_layer)
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.classifier_name = "fc"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, widths[-1], H / 2^len(widths), W / 2^len(widths))."""
        self.check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) -> logits (B, num_classes), or pooled features (B, C)."""
        x = self.drop(torch.flatten(self.pool(features), 1))
        return x if pre_logits else self.fc(x)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return {f"stages.{len(self.stages) - 1}": self.stages[-1]}


@register_model
def soft_threshold_net(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None, attn_layer: str = "soft_threshold"
) -> SoftThresholdNet:
    """Tan et al. 2024 lightweight CNN; no ImageNet weights (trained from scratch or from a path)."""
    return apply_pretrained(SoftThresholdNet(num_classes, in_chans, attn_layer=attn_layer), pretrained, None)
