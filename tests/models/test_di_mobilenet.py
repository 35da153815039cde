"""Du & Yan 2025 DI-MobileNet: MobileNetV2 + dilated early depthwise conv + residual Inception-x."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bonescan.models import build, count_parameters
from bonescan.models.di_mobilenet import InceptionX

PAPER_PARAMS_4_CLASSES = 2.23e6  # Du & Yan 2025


def test_parameter_count_is_close_to_the_papers(capsys):
    n = count_parameters(build("di_mobilenet", 4))
    with capsys.disabled():
        print(f"\ndi_mobilenet, 4 classes: {n:,} parameters (paper: 2.23 M)")
    assert 1.5e6 <= n <= 3.0e6
    assert abs(n - PAPER_PARAMS_4_CLASSES) / PAPER_PARAMS_4_CLASSES < 0.05


def test_first_inverted_residual_depthwise_conv_is_dilated():
    model = build("di_mobilenet", 3)
    dw = model.features[1].conv[0][0]
    assert dw.groups == dw.in_channels == 32 and dw.stride == (1, 1)
    assert dw.dilation == (2, 2) and dw.padding == (2, 2) and dw.kernel_size == (3, 3)
    dilated_others = [
        m for m in model.features[2:].modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)
    ]
    assert dilated_others == []


def test_inception_x_has_four_branches_and_a_residual_projection():
    torch.manual_seed(0)
    block = InceptionX(32).eval()
    x = torch.randn(2, 32, 9, 5)
    with torch.no_grad():
        branches = [block.branch1(x), block.branch3(x), block.branch5(x), block.branch_pool(x)]
        assert all(b.shape == (2, 8, 9, 5) for b in branches)
        torch.testing.assert_close(block(x), x + block.project(torch.cat(branches, 1)))
    kernels = [m.kernel_size for m in block.branch5.modules() if isinstance(m, nn.Conv2d)]
    assert kernels == [(1, 1), (3, 3), (3, 3)]  # two stacked 3x3 in place of a 5x5
    assert isinstance(block.branch_pool[0], nn.MaxPool2d)


def test_inception_x_runs_after_the_configured_stage():
    model = build("di_mobilenet", 3, inception_after=3).eval()
    assert model.inception.project[0].out_channels == 24  # features[3] ends the 24-channel stage
    with torch.no_grad():
        assert model(torch.randn(1, 1, 96, 48)).shape == (1, 3)


def test_out_of_range_inception_position_is_rejected():
    with pytest.raises(ValueError, match="inception_after"):
        build("di_mobilenet", 3, inception_after=18)
