"""Multi-scale feature-fusion classifier of Yu et al. 2023 (Fig. 7).

DenseNet-121, VGG-16 and ResNeXt-50 (32x4d) trunks see the same image in parallel; each final
feature map is globally average-pooled and the three vectors are concatenated
(1024 + 512 + 2048 = 3,584 features) into one fully connected layer. The three trunks have
different depths and receptive fields, so the fused vector mixes fine and coarse evidence.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from bonescan.models.base import Classifier
from bonescan.models.pretrained import apply_pretrained
from bonescan.models.registry import register_model
from bonescan.models.torchvision_zoo import replace_input_conv

__all__ = ["MultiScaleNet"]


def _vgg16_features() -> nn.Sequential:
    """torchvision's VGG-16 convolutional part, initialised as torchvision's VGG initialises it."""
    features = make_layers(cfgs["D"], batch_norm=False)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


class MultiScaleNet(Classifier):
    """DenseNet-121 + VGG-16 + ResNeXt-50 trunks, pooled, concatenated, one linear layer.

    Branch state_dict keys are the torchvision keys under "densenet.", "vgg." and "resnext.", so
    each branch loads its torchvision ImageNet file directly.

    Args:
        num_classes: number of logits.
        in_chans: input channels (each trunk gets its own stem).
        drop_rate: dropout on the fused vector (0 = none, as in Fig. 7).
    """

    min_input_size = (32, 32)  # VGG-16's five 2x2 max-pools

    def __init__(self, num_classes: int, in_chans: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        densenet = tvm.densenet121(weights=None)
        vgg_features = _vgg16_features()  # without VGG's 120 M-parameter MLP head, which Fig. 7 drops
        resnext = tvm.resnext50_32x4d(weights=None)
        for trunk in (densenet, vgg_features, resnext):
            replace_input_conv(trunk, in_chans)
        # densenet121.features ends in BatchNorm; torchvision applies the ReLU in forward(), so add it here.
        self.densenet = nn.Sequential(OrderedDict(features=densenet.features, act=nn.ReLU()))
        self.vgg = nn.Sequential(OrderedDict(features=vgg_features))  # ends with the 5th max-pool
        self.resnext = nn.Sequential(
            OrderedDict(
                (n, getattr(resnext, n))
                for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
            )
        )
        self.branch_features = {"densenet": 1024, "vgg": 512, "resnext": 2048}
        self.num_features = sum(self.branch_features.values())  # 3,584
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.classifier_name = "fc"

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> fused pooled features (B, 3584), in densenet, vgg, resnext order.

        Pooling happens here, not in the head, because the three maps differ in size.
        """
        self.check_input(x)
        pooled = [torch.flatten(self.pool(getattr(self, name)(x)), 1) for name in self.branch_features]
        return torch.cat(pooled, dim=1)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, 3584) -> logits (B, num_classes), or the (dropped-out) features with `pre_logits`."""
        x = self.drop(features)
        return x if pre_logits else self.fc(x)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        """The last layer of each trunk, post-activation."""
        return {"densenet": self.densenet.act, "vgg": self.vgg.features[-1], "resnext": self.resnext.layer4}


@register_model
def multiscale(
    num_classes: int, in_chans: int = 1, pretrained: str | None = None, drop_rate: float = 0.0
) -> MultiScaleNet:
    """Yu et al. 2023 multi-scale fusion; "imagenet" initialises each trunk from its torchvision weights."""
    imagenet = {
        "densenet": tvm.DenseNet121_Weights.IMAGENET1K_V1,
        "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
        "resnext": tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V2,
    }
    return apply_pretrained(MultiScaleNet(num_classes, in_chans, drop_rate), pretrained, imagenet)
