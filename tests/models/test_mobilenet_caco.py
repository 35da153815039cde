"""Shi et al. 2023: MobileNetV3-Small with every SE module replaced by CaCo."""

from __future__ import annotations

import torch
from torchvision.ops import SqueezeExcitation

from bonescan.models import build, count_parameters
from bonescan.models.attention import CaCo, CoordinateAttention

SE_POSITIONS = ("features.1.block.1", *(f"features.{i}.block.2" for i in range(4, 12)))


def test_every_squeeze_excitation_is_replaced_by_caco_in_place():
    model = build("mobilenet_v3_caco", 7)
    assert model.attention_blocks == SE_POSITIONS
    assert all(isinstance(model.get_submodule(p), CaCo) for p in SE_POSITIONS)
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())


def test_caco_width_matches_the_expanded_channels_it_replaces():
    base = build("mobilenet_v3_small", 7)
    caco = build("mobilenet_v3_caco", 7)
    for p in SE_POSITIONS:
        assert caco.get_submodule(p).coord.conv_h.out_channels == base.get_submodule(p).fc1.in_channels


def test_parameter_count_is_the_order_of_the_papers(capsys):
    n = count_parameters(build("mobilenet_v3_caco", 7))
    base = count_parameters(build("mobilenet_v3_small", 7))
    with capsys.disabled():
        print(
            f"\nmobilenet_v3_caco, 7 classes: {n:,} parameters "
            f"(paper: 2.29 M; plain MobileNetV3-Small {base:,})"
        )
    assert 1.5e6 <= n <= 3.0e6 and n > base


def test_attention_is_pluggable_by_name():
    model = build("mobilenet_v3_caco", 3, attn_layer="ca").eval()
    assert all(isinstance(model.get_submodule(p), CoordinateAttention) for p in SE_POSITIONS)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 48)).shape == (1, 3)
