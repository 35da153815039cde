"""MobileNetV3-Small with CaCo attention (Shi et al. 2023).

Every squeeze-and-excitation module of MobileNetV3-Small (features[1].block[1] and
features[4..11].block[2]) is replaced by CaCo: channel attention followed by coordinate attention,
so a block re-weights channels and also keeps where along the height and width a response lies.
Everything else, head included, is torchvision's MobileNetV3-Small, so its ImageNet weights load
into all layers but the new attention blocks.
"""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn
from torchvision.ops import SqueezeExcitation

from bonescan.models.attention import make_attention
from bonescan.models.pretrained import apply_pretrained
from bonescan.models.registry import register_model
from bonescan.models.torchvision_zoo import TorchvisionClassifier, mobile_layout, replace_input_conv

__all__ = ["MobileNetV3Attention", "replace_squeeze_excitation"]


def replace_squeeze_excitation(model: nn.Module, attn_layer: str, **attn_kwargs) -> list[str]:
    """Swap every torchvision SE module in `model` for `make_attention(attn_layer, channels)`.

    Returns:
        Dotted names of the replaced modules.
    """
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, SqueezeExcitation)]
    for name, se in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name),
            child,
            make_attention(attn_layer, se.fc1.in_channels, **attn_kwargs),
        )
    return [name for name, _ in targets]


class MobileNetV3Attention(TorchvisionClassifier):
    """MobileNetV3-Small whose SE blocks are replaced by a named attention block.

    Args:
        num_classes: number of logits.
        in_chans: input channels.
        attn_layer: attention replacing SE ("caco" in Shi et al. 2023; any `make_attention` name).
    """

    def __init__(self, num_classes: int, in_chans: int = 1, attn_layer: str = "caco") -> None:
        model = tvm.mobilenet_v3_small(weights=None, num_classes=num_classes)
        replace_input_conv(model, in_chans)
        replaced = replace_squeeze_excitation(model, attn_layer)
        super().__init__(model, mobile_layout(12, "classifier.3"), in_chans, num_classes)
        self.attention_blocks = tuple(replaced)  # features.1.block.1, features.{4..11}.block.2
        self.pretrained_optional = tuple(f"{name}." for name in replaced)


@register_model
def mobilenet_v3_caco(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None, attn_layer: str = "caco"
) -> MobileNetV3Attention:
    """Shi et al. 2023: MobileNetV3-Small with CaCo in place of SE; "imagenet" fills all other layers."""
    return apply_pretrained(
        MobileNetV3Attention(num_classes, in_chans, attn_layer),
        pretrained,
        {"": tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1},
    )
