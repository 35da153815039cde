"""MU-ACGAN specifics: conditioning at every encoder scale, RDA everywhere, bilinear upsampling."""

import pytest
import torch
from torch import nn

from bonescan.gan.blocks import RCAGate, RDABlock
from bonescan.gan.mu_acgan import MUDiscriminator, MUGenerator


def _generator(**kw):
    return MUGenerator(3, (64, 32), z_dim=16, base_channels=8, **kw)


def test_noise_and_label_become_one_map_per_encoder_scale():
    g = _generator(cond_channels=2)
    maps = g.condition_maps(torch.randn(5, 16), torch.tensor([0, 1, 2, 0, 1]))
    assert [tuple(m.shape) for m in maps] == [(5, 2, 64, 32), (5, 2, 32, 16), (5, 2, 16, 8), (5, 2, 8, 4)]
    assert g.label_embedding.embedding_dim == 16  # defaults to z_dim; concatenated with z
    assert g.project.in_features == 32


def test_generator_is_a_four_level_unet_of_rda_blocks_and_rcag_gates():
    g = _generator()
    assert len(g.enc) == 4 and len(g.dec) == 4
    assert all(isinstance(b, RDABlock) for b in [*g.enc, g.bottleneck, *g.dec])
    assert len(g.enc_gates) == 3 and all(isinstance(gate, RCAGate) for gate in g.enc_gates)
    assert len(g.dec_gates) == 4 and all(isinstance(gate, RCAGate) for gate in g.dec_gates)
    assert [b.compress[-1].out_channels for b in g.enc] == [8, 16, 32, 64]


def test_generator_upsamples_without_transposed_convolutions():
    g = _generator()
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    assert isinstance(g.to_image, nn.Conv2d) and g.to_image.kernel_size == (1, 1)


def test_bottleneck_runs_at_one_sixteenth_resolution():
    g = _generator()
    seen = {}
    g.bottleneck.register_forward_hook(lambda m, inp, out: seen.update(shape=out.shape))
    g(torch.randn(2, 16), torch.tensor([0, 1]))
    assert seen["shape"][-2:] == (4, 2)


def test_wrong_noise_size_is_reported():
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        _generator()(torch.randn(2, 8), torch.tensor([0, 1]))


def test_discriminator_has_three_rda_stages_and_two_heads():
    d = MUDiscriminator(4, (32, 16), base_channels=8)
    assert sum(isinstance(m, RDABlock) for m in d.features) == 3
    assert d.real_fake_head.in_features == 32 * 4 * 2
    rf, cls = d(torch.randn(3, 1, 32, 16))
    assert rf.shape == (3, 1) and cls.shape == (3, 4)
