"""Baseline ACGAN (Odena et al. 2017) specifics."""

import torch
from torch import nn

from bonescan.gan.acgan import ACGANDiscriminator, ACGANGenerator


def test_generator_multiplies_noise_by_the_label_embedding():
    g = ACGANGenerator(3, (64, 32), z_dim=16, base_channels=8)
    assert g.label_embedding.embedding_dim == g.project.in_features == 16
    assert g.init_shape == (64, 4, 2)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())


def test_discriminator_uses_strided_convs_leaky_relu_and_dropout():
    d = ACGANDiscriminator(3, (64, 32), base_channels=8, dropout=0.5)
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 4
    assert sum(isinstance(m, nn.LeakyReLU) for m in d.features) == 4
    assert all(m.p == 0.5 for m in d.features if isinstance(m, nn.Dropout))
    d.eval()  # dropout off: the same image gets the same logits
    x = torch.randn(2, 1, 64, 32)
    assert torch.equal(d(x)[0], d(x)[0])
