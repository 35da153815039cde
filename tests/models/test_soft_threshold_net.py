"""Tan et al. 2024: lightweight CNN alternating depthwise-separable and ordinary convolutions,
with soft-threshold attention."""

from __future__ import annotations

import torch
from torch import nn

from bonescan.models import build, count_parameters
from bonescan.models.attention import SoftThreshold
from bonescan.models.soft_threshold_net import ThresholdStage


def test_stages_alternate_depthwise_separable_and_ordinary_convolutions():
    stage = ThresholdStage(16, 32)
    assert stage.depthwise[0].groups == 16 and stage.pointwise[0].kernel_size == (1, 1)
    assert stage.conv[0].groups == 1 and stage.conv[0].kernel_size == (3, 3)
    assert isinstance(stage.attn, SoftThreshold)
    assert stage(torch.randn(2, 16, 9, 5)).shape == (2, 32, 5, 3)


def test_network_is_lightweight_and_every_stage_thresholds(capsys):
    model = build("soft_threshold_net", 3)
    n = count_parameters(model)
    with capsys.disabled():
        print(f"\nsoft_threshold_net, 3 classes: {n:,} parameters")
    assert n < 1.5e6
    assert sum(isinstance(m, SoftThreshold) for m in model.modules()) == len(model.stages) == 4


def test_attention_can_be_swapped_by_name():
    model = build("soft_threshold_net", 3, attn_layer="none")
    assert not any(isinstance(m, SoftThreshold) for m in model.modules())
    assert all(isinstance(s.attn, nn.Identity) for s in model.stages)
