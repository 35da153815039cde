"""torchvision baselines stay torchvision's models: same parameters, same keys, same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from bonescan.models import build, count_parameters

TORCHVISION = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnext50": tvm.resnext50_32x4d,
    "densenet121": tvm.densenet121,
    "mobilenet_v2": tvm.mobilenet_v2,
    "mobilenet_v3_small": tvm.mobilenet_v3_small,
    "mobilenet_v3_large": tvm.mobilenet_v3_large,
    "efficientnet_b0": tvm.efficientnet_b0,
    "inception_v3": lambda **kw: tvm.inception_v3(aux_logits=False, init_weights=True, **kw),
}


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [("mobilenet_v2", 4, 2_228_996), ("mobilenet_v3_small", 7, 1_525_031)],
)
def test_rgb_parameter_counts_match_the_published_references(name, num_classes, expected):
    assert count_parameters(build(name, num_classes, in_chans=3)) == expected


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_state_dict_keys_and_shapes_are_torchvisions(name):
    ours = build(name, 5, in_chans=3).state_dict()
    theirs = TORCHVISION[name](weights=None, num_classes=5).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "densenet121", "inception_v3"])
def test_logits_equal_torchvisions_forward_with_the_same_weights(name):
    ours = build(name, 3, in_chans=3).eval()
    theirs = TORCHVISION[name](weights=None, num_classes=3).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_grey_stem_has_one_input_channel_and_the_rest_is_unchanged():
    grey, rgb = build("resnet34", 3, in_chans=1), build("resnet34", 3, in_chans=3)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    assert count_parameters(rgb) - count_parameters(grey) == 64 * 2 * 7 * 7


def test_densenet_features_are_rectified_before_pooling():
    model = build("densenet121", 3).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 1, 64, 64))
    assert isinstance(model.features[-1], nn.BatchNorm2d) and features.min() >= 0


def test_inception_rejects_inputs_below_its_minimum_size():
    model = build("inception_v3", 3).eval()
    assert model.min_input_size == (75, 75)
    with pytest.raises(ValueError, match="at least 75x75"):
        model(torch.randn(1, 1, 256, 74))


@pytest.mark.parametrize("name", ["resnet34", "efficientnet_b0"])
def test_nets_with_padded_strides_take_medmnist_sized_inputs(name):
    """28 x 28 (MedMNIST's size) reaches a 1 x 1 map before global pooling; no minimum above it."""
    model = build(name, 2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    assert model.min_input_size == (1, 1)


def test_the_small_image_resnet_keeps_four_pixels_of_a_28_pixel_image_at_its_last_block():
    small, imagenet_stem = build("resnet18_small", 2).eval(), build("resnet18", 2).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert small.forward_features(x).shape == (2, 512, 4, 4)
        assert imagenet_stem.forward_features(x).shape == (2, 512, 1, 1)
        assert small(x).shape == (2, 2)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    theirs = tvm.resnet18(weights=None, num_classes=2).state_dict()
    assert set(small.state_dict()) == set(theirs)  # torchvision's keys: its files still load (but the stem)

@pytest.mark.parametrize("name", ["vgg16", "densenet121"])
def test_nets_that_pool_below_one_pixel_refuse_28_pixels_naming_their_minimum(name):
    with pytest.raises(ValueError, match="at least 32x32"):
        build(name, 2).eval()(torch.randn(1, 1, 28, 28))
