"""RDA block, RCAG gate and the helpers shared by the GAN models."""

import pytest
import torch
from torch import nn

from bonescan.gan.blocks import RCAGate, RDABlock, apply_spectral_norm, check_image_size


def test_rda_block_maps_channels_and_keeps_spatial_size():
    block = RDABlock(5, 12)
    out = block(torch.randn(2, 5, 16, 8))
    assert out.shape == (2, 12, 16, 8)


def test_rda_convs_see_the_block_input_and_all_earlier_outputs():
    c_in, g = 6, 4
    block = RDABlock(c_in, 10, growth=g)
    assert [c.in_channels for c in block.compress] == [c_in + g, c_in + 2 * g, c_in + 3 * g]
    assert [c.out_channels for c in block.compress] == [g, g, 10]
    assert all(isinstance(seq[1], nn.BatchNorm2d) and isinstance(seq[2], nn.PReLU) for seq in block.convs)
    seen = {}
    block.compress[2].register_forward_hook(lambda m, inp, out: seen.update(cat3=inp[0]))
    block.attn.register_forward_hook(lambda m, inp, out: seen.update(attn_in=inp[0]))
    x = torch.randn(2, c_in, 8, 8)
    block(x)
    assert seen["cat3"].shape == (2, c_in + 3 * g, 8, 8)
    assert torch.equal(seen["cat3"][:, :c_in], x)  # the block input itself is part of the third concatenation
    assert seen["attn_in"].shape == (2, 10, 8, 8)  # coordinate attention follows the third compression


def test_rda_residual_is_identity_when_widths_match_and_projected_otherwise():
    assert isinstance(RDABlock(8, 8).shortcut, nn.Identity)
    proj = RDABlock(3, 8).shortcut
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1)


def test_rcag_fuses_two_inputs_into_the_requested_channels():
    gate = RCAGate(6, 2, 5)
    seen = {}
    gate.attn.register_forward_hook(lambda m, inp, out: seen.update(xc=inp[0]))
    x1, x2 = torch.randn(3, 6, 8, 4), torch.randn(3, 2, 8, 4)
    out = gate(x1, x2)
    assert out.shape == (3, 5, 8, 4)
    assert torch.equal(seen["xc"], torch.cat([x1, x2], dim=1))


@pytest.mark.parametrize("size", [(30, 16), (32, 20), (0, 16)])
def test_image_size_not_divisible_raises_with_the_reason(size):
    with pytest.raises(ValueError, match="divisible by 16"):
        check_image_size(size, 16, "test")


def test_spectral_norm_wraps_every_conv_and_linear():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 1))
    apply_spectral_norm(net)
    assert all(hasattr(m, "parametrizations") for m in net if isinstance(m, nn.Conv2d | nn.Linear))
