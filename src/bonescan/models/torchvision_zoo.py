"""torchvision baselines (ResNet, ResNeXt, VGG, DenseNet, MobileNet V2/V3, EfficientNet, Inception v3)
behind the bonescan `Classifier` interface.

Each model is torchvision's own, with its own head; only the stem convolution is swapped for
`in_chans` inputs (and, in `resnet18_small`, for the 3 x 3 stride-1 stem of small images). The wrapper re-registers torchvision's children under their torchvision names,
so state_dicts are interchangeable with torchvision's (ImageNet files load unchanged, and a
fine-tuned bonescan model saves torchvision-style keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from bonescan.models.base import Classifier
from bonescan.models.pretrained import apply_pretrained
from bonescan.models.registry import register_model

__all__ = ["Layout", "TorchvisionClassifier", "mobile_layout", "replace_input_conv", "small_image_stem"]


def replace_input_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the first Conv2d of `model` for a freshly initialised one taking `in_chans` channels.

    He initialisation (fan_out, as torchvision's ResNet/MobileNet/VGG); a BatchNorm follows every
    stem here, so the scale of the initialisation is immaterial.
    """
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if old.in_channels == in_chans:
        return
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def small_image_stem(model: tvm.ResNet) -> None:
    """The stem of ResNets for 28-64 px images (CIFAR; MedMNIST's "ResNet-18 (28)"), in place.

    ImageNet's 7 x 7 stride-2 convolution and max-pool shrink a 28-px image to 7 px before the first
    block and to 1 px at layer4; a 3 x 3 stride-1 convolution and no max-pool keep 4 x 4 there.
    """
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


@dataclass(frozen=True)
class Layout:
    """How a torchvision architecture splits into trunk and head."""

    trunk: tuple[str, ...]  # children run in order by forward_features
    head: tuple[str, ...]  # children run after pooling and flattening; the last one ends in the classifier
    classifier: str  # dotted path of the last linear layer
    gradcam: str  # dotted path of the Grad-CAM target (last layer of the trunk)
    pool: str | None = "avgpool"  # pooling child; None = global average pooling added here
    trunk_relu: bool = False  # densenet: features end in BatchNorm, torchvision applies ReLU functionally
    min_input_size: tuple[int, int] = (32, 32)


class TorchvisionClassifier(Classifier):
    """A torchvision classifier split into `forward_features` (trunk) and `forward_head`.

    Args:
        model: a torchvision classifier with `in_chans` stem channels.
        layout: its trunk/head layout.
        in_chans: input channels.
        num_classes: outputs of its last linear layer.
    """

    def __init__(self, model: nn.Module, layout: Layout, in_chans: int, num_classes: int) -> None:
        super().__init__()
        for name in layout.trunk + ((layout.pool,) if layout.pool else ()) + layout.head:
            self.add_module(name, getattr(model, name))
        # Parameter-free additions keep the state_dict keys torchvision's.
        if layout.pool is None:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
        if layout.trunk_relu:
            self.trunk_act = nn.ReLU()  # a module, not F.relu, so Grad-CAM can hook the rectified map
        self._layout = layout
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.classifier_name = layout.classifier
        self.min_input_size = layout.min_input_size
        self.num_features = self.get_classifier().in_features

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> last feature map (B, C, h, w), after its activation."""
        self.check_input(x)
        for name in self._layout.trunk:
            x = getattr(self, name)(x)
        return self.trunk_act(x) if self._layout.trunk_relu else x

    def _head_layers(self) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for name in self._layout.head:
            child = getattr(self, name)
            layers.extend(child if isinstance(child, nn.Sequential) else [child])
        return layers

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) -> logits (B, num_classes), or (B, num_features) with `pre_logits`."""
        pool = getattr(self, self._layout.pool) if self._layout.pool else self.global_pool
        x = torch.flatten(pool(features), 1)
        layers = self._head_layers()
        for layer in layers[:-1]:
            x = layer(x)
        return x if pre_logits else layers[-1](x)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return {self._layout.gradcam: self.get_submodule(self._layout.gradcam)}


_RESNET = Layout(
    trunk=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    head=("fc",),
    classifier="fc",
    gradcam="layer4",
    min_input_size=(1, 1),  # padded strides and adaptive pooling: 28 x 28 (MedMNIST) works
)


def mobile_layout(last_block: int, classifier: str, pool: str | None = "avgpool") -> Layout:
    """Layout of the MobileNet/EfficientNet family: `features` trunk, `classifier` head."""
    return Layout(
        trunk=("features",),
        head=("classifier",),
        classifier=classifier,
        gradcam=f"features.{last_block}",
        pool=pool,
        min_input_size=(1, 1),
    )


def _build(
    tv_builder: Callable[..., nn.Module],
    layout: Layout,
    weights: WeightsEnum,
    num_classes: int,
    in_chans: int,
    pretrained: str | None,
    **tv_kwargs,
) -> TorchvisionClassifier:
    model = tv_builder(weights=None, num_classes=num_classes, **tv_kwargs)
    replace_input_conv(model, in_chans)
    return apply_pretrained(
        TorchvisionClassifier(model, layout, in_chans, num_classes), pretrained, {"": weights}
    )


@register_model
def resnet18(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """ResNet-18 (He et al. 2016)."""
    return _build(
        tvm.resnet18, _RESNET, tvm.ResNet18_Weights.IMAGENET1K_V1, num_classes, in_chans, pretrained
    )


@register_model
def resnet18_small(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None
) -> TorchvisionClassifier:
    """ResNet-18 with the small-image stem (`small_image_stem`): MedMNIST v2's baseline at 28 px.

    Keys stay torchvision's; ImageNet weights load into every layer but the stem (other shape),
    which keeps its initialisation. Costs about 16x resnet18's compute at the same input size.
    """
    model = tvm.resnet18(weights=None, num_classes=num_classes)
    small_image_stem(model)
    replace_input_conv(model, in_chans)
    classifier = TorchvisionClassifier(model, _RESNET, in_chans, num_classes)
    classifier.pretrained_optional = ("conv1.",)
    return apply_pretrained(classifier, pretrained, {"": tvm.ResNet18_Weights.IMAGENET1K_V1})


@register_model
def resnet34(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """ResNet-34 (He et al. 2016)."""
    return _build(
        tvm.resnet34, _RESNET, tvm.ResNet34_Weights.IMAGENET1K_V1, num_classes, in_chans, pretrained
    )


@register_model
def resnext50(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """ResNeXt-50 32x4d (Xie et al. 2017)."""
    return _build(
        tvm.resnext50_32x4d,
        _RESNET,
        tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V2,
        num_classes,
        in_chans,
        pretrained,
    )


@register_model
def vgg16(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """VGG-16 (Simonyan & Zisserman 2015) with its 4096-4096 MLP head; inputs >= 32x32 (five max-pools)."""
    layout = Layout(
        trunk=("features",), head=("classifier",), classifier="classifier.6", gradcam="features.29"
    )
    return _build(tvm.vgg16, layout, tvm.VGG16_Weights.IMAGENET1K_V1, num_classes, in_chans, pretrained)


@register_model
def densenet121(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """DenseNet-121 (Huang et al. 2017); inputs >= 32x32."""
    layout = Layout(
        trunk=("features",),
        head=("classifier",),
        classifier="classifier",
        gradcam="trunk_act",
        pool=None,
        trunk_relu=True,
    )
    return _build(
        tvm.densenet121, layout, tvm.DenseNet121_Weights.IMAGENET1K_V1, num_classes, in_chans, pretrained
    )


@register_model
def mobilenet_v2(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """MobileNetV2 (Sandler et al. 2018), the base of `di_mobilenet`."""
    layout = mobile_layout(18, "classifier.1", pool=None)
    return _build(
        tvm.mobilenet_v2, layout, tvm.MobileNet_V2_Weights.IMAGENET1K_V2, num_classes, in_chans, pretrained
    )


@register_model
def mobilenet_v3_small(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None
) -> TorchvisionClassifier:
    """MobileNetV3-Small (Howard et al. 2019), the base of `mobilenet_v3_caco`."""
    return _build(
        tvm.mobilenet_v3_small,
        mobile_layout(12, "classifier.3"),
        tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
        num_classes,
        in_chans,
        pretrained,
    )


@register_model
def mobilenet_v3_large(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None
) -> TorchvisionClassifier:
    """MobileNetV3-Large (Howard et al. 2019)."""
    return _build(
        tvm.mobilenet_v3_large,
        mobile_layout(16, "classifier.3"),
        tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        num_classes,
        in_chans,
        pretrained,
    )


@register_model
def efficientnet_b0(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None
) -> TorchvisionClassifier:
    """EfficientNet-B0 (Tan & Le 2019)."""
    return _build(
        tvm.efficientnet_b0,
        mobile_layout(8, "classifier.1"),
        tvm.EfficientNet_B0_Weights.IMAGENET1K_V1,
        num_classes,
        in_chans,
        pretrained,
    )


_INCEPTION = Layout(
    trunk=(
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    ),
    head=("dropout", "fc"),
    classifier="fc",
    gradcam="Mixed_7c",
    # Unpadded stride-2 convolutions and pools shrink 75 px to 1 px at Mixed_7a; smaller inputs reach 0.
    min_input_size=(75, 75),
)


@register_model
def inception_v3(num_classes: int, in_chans: int = 1, pretrained: str | None = None) -> TorchvisionClassifier:
    """Inception v3 (Szegedy et al. 2016) without the auxiliary classifier; inputs >= 75x75.

    `transform_input` is off: it re-normalises three ImageNet-normalised channels, which neither a
    grey input nor bonescan's own intensity scaling is. The AuxLogits weights of the ImageNet file
    are ignored.
    """
    return _build(
        tvm.inception_v3,
        _INCEPTION,
        tvm.Inception_V3_Weights.IMAGENET1K_V1,
        num_classes,
        in_chans,
        pretrained,
        aux_logits=False,
        transform_input=False,
        init_weights=True,
    )
