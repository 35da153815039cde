"""DI-MobileNet (Du & Yan 2025): MobileNetV2 with a dilated early depthwise convolution and a
residual Inception-x block.

- Dilation: the depthwise 3x3 convolution of the first inverted residual (features[1], the
  stride-1 block at 1/2 resolution) gets dilation 2, a 5x5 receptive field at no parameter cost,
  so the earliest features already see past a single hot spot.
- Inception-x: after the 32-channel stage (1/8 resolution) a block of four parallel branches
  (1x1; 1x1->3x3; 1x1->3x3->3x3, two stacked 3x3 in place of a 5x5; 3x3 max-pool->1x1) is
  concatenated, projected back by a 1x1 convolution and added to its input, mixing receptive
  fields of 1, 3, 5 and 3(pool) pixels at a few thousand parameters.

The MobileNetV2 layers keep torchvision's names, so its ImageNet weights load into everything
but the Inception-x block (the dilated filter keeps its 3x3 shape and loads too).
"""

from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from bonescan.models.base import Classifier
from bonescan.models.pretrained import apply_pretrained
from bonescan.models.registry import register_model
from bonescan.models.torchvision_zoo import replace_input_conv

__all__ = ["DIMobileNet", "InceptionX"]


def _cba(in_channels: int, out_channels: int, kernel_size: int = 1) -> Conv2dNormActivation:
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, activation_layer=nn.ReLU6)


class InceptionX(nn.Module):
    """Residual Inception-x block: x + proj(cat(b1(x), b3(x), b5(x), bpool(x))), shape kept.

    Args:
        channels: C, input and output channels.
        branch_channels: width of each of the four branches (default C / 4, so the concatenation
            has C channels before the projection).
    """

    def __init__(self, channels: int, branch_channels: int | None = None) -> None:
        super().__init__()
        b = branch_channels or max(channels // 4, 8)
        self.branch1 = _cba(channels, b)
        self.branch3 = nn.Sequential(_cba(channels, b), _cba(b, b, 3))
        self.branch5 = nn.Sequential(
            _cba(channels, b), _cba(b, b, 3), _cba(b, b, 3)
        )  # two 3x3 = one 5x5 field
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _cba(channels, b))
        # Linear projection (no activation) before the residual add, as in MobileNetV2's bottlenecks.
        self.project = nn.Sequential(nn.Conv2d(4 * b, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        return x + self.project(torch.cat(branches, dim=1))


class DIMobileNet(Classifier):
    """MobileNetV2 + dilated depthwise convolution in features[1] + residual Inception-x.

    Args:
        num_classes: number of logits.
        in_chans: input channels.
        dilation: dilation of features[1]'s depthwise 3x3 convolution.
        inception_after: index of the `features` block after which Inception-x runs (6 = end of
            the 32-channel, 1/8-resolution stage).
        dropout: dropout before the classifier (torchvision's 0.2).
    """

    min_input_size = (1, 1)
    pretrained_optional = ("inception.",)

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 1,
        dilation: int = 2,
        inception_after: int = 6,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        base = tvm.mobilenet_v2(weights=None, num_classes=num_classes, dropout=dropout)
        replace_input_conv(base, in_chans)
        self.features = base.features
        self.classifier = base.classifier
        self._dilate_first_depthwise(dilation)
        if not 0 <= inception_after < len(self.features) - 1:
            raise ValueError(f"inception_after must index a block of features[0..{len(self.features) - 2}]")
        self.inception_after = inception_after
        channels = self._out_channels(self.features[inception_after])
        self.inception = InceptionX(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.classifier_name = "classifier.1"
        self.num_features = self.classifier[1].in_features

    def _dilate_first_depthwise(self, dilation: int) -> None:
        dw = self.features[1].conv[0][0]  # InvertedResidual(t=1): [0] = depthwise Conv2dNormActivation
        if not (isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels and dw.stride == (1, 1)):
            raise RuntimeError(
                f"features[1] of torchvision's MobileNetV2 is no longer a stride-1 depthwise conv: {dw}"
            )
        dilated = nn.Conv2d(
            dw.in_channels,
            dw.out_channels,
            dw.kernel_size,
            stride=1,
            padding=dilation,
            dilation=dilation,
            groups=dw.groups,
            bias=False,
        )
        nn.init.kaiming_normal_(dilated.weight, mode="fan_out")
        self.features[1].conv[0][0] = dilated

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return next(m.num_features for m in reversed(list(block.modules())) if isinstance(m, nn.BatchNorm2d))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> last feature map (B, 1280, H/32, W/32)."""
        self.check_input(x)
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.inception_after:
                x = self.inception(x)
        return x

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, 1280, h, w) -> logits (B, num_classes), or pooled features (B, 1280)."""
        x = torch.flatten(self.pool(features), 1)
        x = self.classifier[0](x)  # dropout
        return x if pre_logits else self.classifier[1](x)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return {"features.18": self.features[18]}


@register_model
def di_mobilenet(
    num_classes: int,
    in_chans: int = 1,
    pretrained: str | None = None,
    dilation: int = 2,
    inception_after: int = 6,
) -> DIMobileNet:
    """Du & Yan 2025 DI-MobileNet; "imagenet" fills the MobileNetV2 layers from torchvision's weights."""
    return apply_pretrained(
        DIMobileNet(num_classes, in_chans, dilation, inception_after),
        pretrained,
        {"": tvm.MobileNet_V2_Weights.IMAGENET1K_V2},
    )
