"""Attention blocks: coordinate attention, CaCo, soft thresholding, and the factory by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bonescan.models.attention import (
    ATTENTION_LAYERS,
    CaCo,
    ChannelAttention,
    CoordinateAttention,
    SoftThreshold,
    make_attention,
)


def test_coordinate_attention_output_is_input_times_height_and_width_maps():
    torch.manual_seed(0)
    ca = CoordinateAttention(16).eval()
    x = torch.randn(2, 16, 12, 5)  # tall, non-square
    a_h, a_w = ca.attention_maps(x)
    assert a_h.shape == (2, 16, 12, 1) and a_w.shape == (2, 16, 1, 5)
    assert (a_h > 0).all() and (a_h < 1).all() and (a_w > 0).all() and (a_w < 1).all()
    torch.testing.assert_close(ca(x), x * a_h * a_w)


@pytest.mark.parametrize(("channels", "mip"), [(16, 8), (256, 8), (512, 16), (1024, 32)])
def test_coordinate_attention_bottleneck_is_max_of_8_and_c_over_32(channels, mip):
    assert CoordinateAttention(channels).conv1.out_channels == mip


def test_coordinate_attention_height_map_depends_on_row_position():
    """A hot row must change a_h on that row differently from the others: position is kept."""
    torch.manual_seed(0)
    ca = CoordinateAttention(8).eval()
    x = torch.zeros(1, 8, 10, 4)
    x[:, :, 3] = 5.0
    a_h, _ = ca.attention_maps(x)
    assert not torch.allclose(a_h[0, :, 3], a_h[0, :, 0])
    torch.testing.assert_close(a_h[0, :, 0], a_h[0, :, 9])


def test_caco_is_channel_attention_then_coordinate_attention():
    torch.manual_seed(0)
    caco = CaCo(32).eval()
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(caco(x), caco.coord(caco.channel(x)))
    assert isinstance(caco.channel, ChannelAttention) and isinstance(caco.coord, CoordinateAttention)


def test_channel_attention_weights_lie_in_unit_interval():
    w = ChannelAttention(32).attention(torch.randn(3, 32, 5, 7))
    assert w.shape == (3, 32, 1, 1) and (w > 0).all() and (w < 1).all()


def test_soft_threshold_zeroes_values_below_tau_and_shrinks_the_rest():
    torch.manual_seed(0)
    st = SoftThreshold(8)
    x = torch.randn(2, 8, 6, 6) * 3
    tau = st.thresholds(x)
    assert tau.shape == (2, 8, 1, 1)
    assert (tau >= 0).all() and (tau < x.abs().mean((2, 3), keepdim=True)).all()
    y = st(x)
    small = x.abs() < tau
    assert small.any() and (y[small] == 0).all()
    big = ~small
    torch.testing.assert_close(y[big], (x.sign() * (x.abs() - tau))[big])


def test_soft_threshold_trains_with_a_batch_of_one():
    st = SoftThreshold(8).train()
    st(torch.randn(1, 8, 4, 4)).sum().backward()
    assert st.fc1.weight.grad is not None


@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_every_named_attention_keeps_the_shape(name):
    block = make_attention(name, 24)
    x = torch.randn(2, 24, 7, 3)
    assert block(x).shape == x.shape


def test_none_attention_is_identity():
    x = torch.randn(1, 4, 3, 3)
    assert isinstance(make_attention("none", 4), nn.Identity) and make_attention("none", 4)(x) is x


def test_unknown_attention_name_raises_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown attention 'cbam'.*'caco'"):
        make_attention("cbam", 16)
