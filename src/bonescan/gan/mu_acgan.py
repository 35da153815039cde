"""MU-ACGAN: multi-attention U-Net ACGAN (Yu et al. 2023, Sec. 2.2, Fig. 3).

The generator is a 4-level U-Net built from residual dense attention (RDA) blocks. The class label is
embedded and concatenated with the noise z; one linear layer turns the result into four maps, one per
encoder scale, and each enters the encoder through a residual coordinate-attention gate (RCAG). The
decoder upsamples bilinearly (no transposed convolutions, so no checkerboard artefacts) and gates every
skip connection with an RCAG. The discriminator is three RDA blocks with average pooling and two heads:
real/fake and class (ACGAN's auxiliary classifier).

Class-dependent parameters (the label embedding, the class head) are named in `class_dependent` and
re-initialised by `reset_classes`, so source-domain weights transfer to a target with other classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bonescan.gan.blocks import RCAGate, RDABlock, apply_spectral_norm, check_image_size

__all__ = ["MUDiscriminator", "MUGenerator", "build_mu_acgan"]

LEVELS = 4  # U-Net depth: four max-pools, so H and W must be multiples of 2**4


class MUGenerator(nn.Module):
    """U-Net generator with RDA blocks and RCAG gates, conditioned at every encoder scale.

    Args:
        num_classes: number of class labels.
        image_size: (H, W) of the generated images; both divisible by 16.
        in_chans: image channels.
        z_dim: noise dimension.
        base_channels: width of the first level; level k has `base_channels * channel_mult[k]`.
        channel_mult: width multipliers of the four levels (the bottleneck keeps the last width).
        embed_dim: label-embedding size; defaults to `z_dim` so label and noise weigh alike.
        cond_channels: channels of each projected (z, label) map.

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
        channel_mult: tuple[int, ...] = (1, 2, 4, 8),
        embed_dim: int | None = None,
        cond_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(channel_mult) != LEVELS:
            raise ValueError(f"channel_mult needs {LEVELS} entries (one per level), got {channel_mult}")
        self.image_size = check_image_size(image_size, 2**LEVELS, "mu_acgan")
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.in_chans = in_chans
        self.embed_dim = embed_dim or z_dim
        self.cond_channels = cond_channels
        widths = [base_channels * m for m in channel_mult]
        h, w = self.image_size
        self.cond_shapes = [(cond_channels, h >> k, w >> k) for k in range(LEVELS)]  # scales 1, 1/2, 1/4, 1/8

        self.label_embedding = nn.Embedding(num_classes, self.embed_dim)
        self.project = nn.Linear(z_dim + self.embed_dim, sum(c * hh * ww for c, hh, ww in self.cond_shapes))

        self.enc = nn.ModuleList()
        self.enc_gates = nn.ModuleList()
        prev = cond_channels
        for k, width in enumerate(widths):
            self.enc.append(RDABlock(prev, width))
            if k + 1 < LEVELS:  # pooled features meet the next scale's (z, label) map
                self.enc_gates.append(RCAGate(width, cond_channels, width))
            prev = width
        self.bottleneck = RDABlock(widths[-1], widths[-1])  # at (H/16, W/16)

        self.dec_gates = nn.ModuleList()
        self.dec = nn.ModuleList()
        prev = widths[-1]
        for width in reversed(widths):
            self.dec_gates.append(RCAGate(prev, width, width))  # upsampled path + skip
            self.dec.append(RDABlock(width, width))
            prev = width
        self.to_image = nn.Conv2d(widths[0], in_chans, 1)

    def condition_maps(self, z: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Project concat(z, embed(label)) to one map per encoder scale.

        Returns:
            Four tensors (B, cond_channels, H / 2**k, W / 2**k), k = 0..3.
        """
        if z.shape[1:] != (self.z_dim,):
            raise ValueError(f"z must be (B, {self.z_dim}), got {tuple(z.shape)}")
        flat = self.project(torch.cat([z, self.label_embedding(labels)], dim=1))
        sizes = [c * hh * ww for c, hh, ww in self.cond_shapes]
        return [
            part.reshape(-1, *shape)
            for part, shape in zip(flat.split(sizes, dim=1), self.cond_shapes, strict=True)
        ]

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cond = self.condition_maps(z, labels)
        skips = []
        x = cond[0]  # (B, cond_channels, H, W)
        for k, block in enumerate(self.enc):
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
            if k + 1 < LEVELS:
                x = self.enc_gates[k](x, cond[k + 1])
        x = self.bottleneck(x)  # (B, C_4, H/16, W/16)
        for gate, block, skip in zip(self.dec_gates, self.dec, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(gate(x, skip))
        return torch.tanh(self.to_image(x))

    def reset_classes(self, num_classes: int) -> None:
        """Re-initialise the label embedding for `num_classes`; every other weight is kept."""
        old = self.label_embedding.weight
        self.label_embedding = nn.Embedding(num_classes, self.embed_dim).to(
            device=old.device, dtype=old.dtype
        )
        self.num_classes = num_classes


class MUDiscriminator(nn.Module):
    """Three RDA blocks, each followed by 2x2 average pooling, then real/fake and class heads.

    Args:
        num_classes: number of class labels.
        image_size: (H, W) of the input images; both divisible by 8.
        in_chans: image channels.
        base_channels: width of the first block; the widths are (1, 2, 4) times it.
        spectral_norm: spectral-normalise every conv and linear weight (stabilises D).

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
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size, 8, "mu_acgan discriminator")
        self.num_classes = num_classes
        self.spectral_norm = spectral_norm
        widths = [base_channels, 2 * base_channels, 4 * base_channels]
        blocks: list[nn.Module] = []
        prev = in_chans
        for width in widths:
            blocks += [RDABlock(prev, width), nn.AvgPool2d(2)]
            prev = width
        self.features = nn.Sequential(*blocks)
        h, w = self.image_size
        self.num_features = widths[-1] * (h // 8) * (w // 8)
        self.real_fake_head = nn.Linear(self.num_features, 1)  # FC1
        self.class_head = nn.Linear(self.num_features, num_classes)  # FC2
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x).flatten(1)  # (B, C * H/8 * W/8)
        return self.real_fake_head(f), self.class_head(f)

    def reset_classes(self, num_classes: int) -> None:
        """Re-initialise the class head (FC2) for `num_classes`; every other weight is kept."""
        old = next(self.real_fake_head.parameters())
        head = nn.Linear(self.num_features, num_classes).to(device=old.device, dtype=old.dtype)
        self.class_head = apply_spectral_norm(head) if self.spectral_norm else head
        self.num_classes = num_classes


def build_mu_acgan(
    num_classes: int,
    image_size: tuple[int, int],
    *,
    in_chans: int = 1,
    z_dim: int = 128,
    base_channels: int = 32,
    d_base_channels: int | None = None,
    spectral_norm: bool = False,
    **generator_kw,
) -> tuple[MUGenerator, MUDiscriminator]:
    """MU-ACGAN generator and discriminator; `d_base_channels` defaults to `base_channels`."""
    g = MUGenerator(
        num_classes, image_size, in_chans=in_chans, z_dim=z_dim, base_channels=base_channels, **generator_kw
    )
    d = MUDiscriminator(
        num_classes,
        image_size,
        in_chans=in_chans,
        base_channels=d_base_channels or base_channels,
        spectral_norm=spectral_norm,
    )
    return g, d
