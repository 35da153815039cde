"""Yu et al. 2023 multi-scale fusion: three trunks, pooled, concatenated to 3,584 features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bonescan.models import build


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("multiscale", 3).eval()


def test_fused_features_are_densenet_vgg_resnext_pooled_and_concatenated(model):
    assert model.branch_features == {"densenet": 1024, "vgg": 512, "resnext": 2048}
    assert model.num_features == 3584 and model.fc.in_features == 3584
    x = torch.randn(2, 1, 64, 32)
    with torch.no_grad():
        fused = model.forward_features(x)
        vgg = model.vgg(x).mean((2, 3))
    assert fused.shape == (2, 3584)
    torch.testing.assert_close(fused[:, 1024:1536], vgg)


def test_densenet_branch_is_rectified_before_pooling(model):
    assert isinstance(model.densenet.features[-1], nn.BatchNorm2d) and isinstance(model.densenet.act, nn.ReLU)
    with torch.no_grad():
        fused = model.forward_features(torch.randn(1, 1, 64, 64))
    assert fused[:, :1024].min() >= 0


def test_each_branch_has_its_own_grey_stem(model):
    stems = [model.densenet.features.conv0, model.vgg.features[0], model.resnext.conv1]
    assert all(s.in_channels == 1 for s in stems)


def test_gradcam_has_one_target_per_branch(model):
    assert set(model.gradcam_layers()) == {"densenet", "vgg", "resnext"}


def test_head_is_a_single_linear_layer_on_the_fused_vector(model):
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linear == [model.fc]
