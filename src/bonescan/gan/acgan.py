"""Baseline ACGAN (Odena et al. 2017, "Conditional image synthesis with auxiliary classifier GANs").

The comparison point of Yu et al. 2023: a DCGAN-style generator conditioned by multiplying the noise
with a label embedding, and a strided-conv discriminator with LeakyReLU and dropout whose two heads
give real/fake and class logits. Upsampling is nearest-neighbour + 3x3 conv instead of transposed
convolutions, which avoids checkerboard artefacts and makes any (H, W) divisible by 16 work.
"""

from __future__ import annotations

import torch
from torch import nn

from bonescan.gan.blocks import apply_spectral_norm, check_image_size

__all__ = ["ACGANDiscriminator", "ACGANGenerator", "build_acgan"]

STAGES = 4  # four 2x up/down-samplings, so H and W must be multiples of 2**4


def _dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) conv/linear weights and N(1, 0.02) BN scales, as in DCGAN and Odena et al."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ACGANGenerator(nn.Module):
    """embed(label) * z -> linear -> (8C, H/16, W/16) -> 4 x [upsample, conv-BN-ReLU] -> conv -> tanh.

    Args:
        num_classes: number of class labels.
        image_size: (H, W) of the generated images; both divisible by 16.
        in_chans: image channels.
        z_dim: noise dimension (and label-embedding size: they are multiplied).
        base_channels: width of the last upsampling stage; the stages have 8C, 4C, 2C, C channels.

    Shape:
        z (B, z_dim), labels (B,) int64 -> images (B, in_chans, H, W) in [-1, 1]
    """

    class_dependent = ("label_embedding",)

    def __init__(
        self,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        in_chans: int = 1,
        z_dim: int = 128,
        base_channels: int = 32,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size, 2**STAGES, "acgan")
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.in_chans = in_chans
        h, w = self.image_size
        self.init_shape = (8 * base_channels, h // 16, w // 16)
        self.label_embedding = nn.Embedding(num_classes, z_dim)
        self.project = nn.Linear(z_dim, self.init_shape[0] * self.init_shape[1] * self.init_shape[2])
        self.init_norm = nn.Sequential(nn.BatchNorm2d(self.init_shape[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        prev = self.init_shape[0]
        for mult in (4, 2, 1, 1):
            width = mult * base_channels
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        self.upsample = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(prev, in_chans, 3, padding=1)
        _dcgan_init(self)
        nn.init.normal_(self.label_embedding.weight)  # unit-scale gain on z, not 0.02

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if z.shape[1:] != (self.z_dim,):
            raise ValueError(f"z must be (B, {self.z_dim}), got {tuple(z.shape)}")
        x = self.project(z * self.label_embedding(labels)).reshape(-1, *self.init_shape)
        return torch.tanh(self.to_image(self.upsample(self.init_norm(x))))

    def reset_classes(self, num_classes: int) -> None:
        """Re-initialise the label embedding for `num_classes`; every other weight is kept."""
        old = self.label_embedding.weight
        self.label_embedding = nn.Embedding(num_classes, self.z_dim).to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes


class ACGANDiscriminator(nn.Module):
    """4 x [3x3 stride-2 conv (BN from the second on), LeakyReLU(0.2), dropout] -> two linear heads.

    Args:
        num_classes: number of class labels.
        image_size: (H, W) of the input images; both divisible by 16.
        in_chans: image channels.
        base_channels: width of the first conv; the convs have C, 2C, 4C, 8C channels.
        dropout: dropout after every conv (0.5 in Odena et al.).
        spectral_norm: spectral-normalise every conv and linear weight.

    Shape:
        (B, in_chans, H, W) -> real/fake logits (B, 1), class logits (B, num_classes)
    """

    class_dependent = ("class_head",)

    def __init__(
        self,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        in_chans: int = 1,
        base_channels: int = 32,
        dropout: float = 0.5,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size, 2**STAGES, "acgan discriminator")
        self.num_classes = num_classes
        self.spectral_norm = spectral_norm
        layers: list[nn.Module] = []
        prev = in_chans
        for i, mult in enumerate((1, 2, 4, 8)):
            width = mult * base_channels
            layers.append(nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=i == 0))
            if i > 0:  # no BN on the image layer (DCGAN)
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            prev = width
        self.features = nn.Sequential(*layers)
        h, w = self.image_size
        self.num_features = prev * (h // 16) * (w // 16)
        self.real_fake_head = nn.Linear(self.num_features, 1)
        self.class_head = nn.Linear(self.num_features, num_classes)
        _dcgan_init(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x).flatten(1)  # (B, 8C * H/16 * W/16)
        return self.real_fake_head(f), self.class_head(f)

    def reset_classes(self, num_classes: int) -> None:
        """Re-initialise the class head for `num_classes`; every other weight is kept."""
        old = next(self.real_fake_head.parameters())
        head = nn.Linear(self.num_features, num_classes).to(device=old.device, dtype=old.dtype)
        _dcgan_init(head)
        self.class_head = apply_spectral_norm(head) if self.spectral_norm else head
        self.num_classes = num_classes


def build_acgan(
    num_classes: int,
    image_size: tuple[int, int],
    *,
    in_chans: int = 1,
    z_dim: int = 128,
    base_channels: int = 32,
    d_base_channels: int | None = None,
    dropout: float = 0.5,
    spectral_norm: bool = False,
) -> tuple[ACGANGenerator, ACGANDiscriminator]:
    """Baseline ACGAN generator and discriminator; `d_base_channels` defaults to `base_channels`."""
    g = ACGANGenerator(num_classes, image_size, in_chans=in_chans, z_dim=z_dim, base_channels=base_channels)
    d = ACGANDiscriminator(
        num_classes,
        image_size,
        in_chans=in_chans,
        base_channels=d_base_channels or base_channels,
        dropout=dropout,
        spectral_norm=spectral_norm,
    )
    return g, d
