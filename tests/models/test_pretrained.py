"""Offline weight loading: local files and a fake torch hub cache; grey stems from RGB filters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

from bonescan.models import build
from bonescan.models.pretrained import adapt_input_conv, hub_checkpoint_path, read_state_dict

SMALL_WEIGHTS = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch cache; torch.hub.get_dir() follows TORCH_HOME unless set_dir was called."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home


def _rgb_mobilenet_v3_small_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return tvm.mobilenet_v3_small(weights=None).state_dict()  # 1000 ImageNet classes, RGB stem


def _assert_mobilenet_v3_small_loaded(model, state):
    torch.testing.assert_close(model.features[3].block[0][0].weight, state["features.3.block.0.0.weight"])
    torch.testing.assert_close(
        model.features[9].block[1][1].running_var, state["features.9.block.1.1.running_var"]
    )
    torch.testing.assert_close(
        model.classifier[0].weight, state["classifier.0.weight"]
    )  # hidden MLP layer fits
    # Grey stem = RGB filters summed over the colour axis.
    torch.testing.assert_close(model.features[0][0].weight, state["features.0.0.weight"].sum(1, keepdim=True))
    assert model.classifier[3].weight.shape == (3, 1024)  # 1000-class head skipped, fresh 3-class head kept


def test_grey_filter_gives_the_rgb_response_to_a_grey_image():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3)
    grey = torch.randn(1, 1, 10, 10)
    torch.testing.assert_close(
        F.conv2d(grey, adapt_input_conv(w, 1)), F.conv2d(grey.expand(-1, 3, -1, -1), w)
    )


def test_stem_adaptation_to_other_channel_counts_keeps_the_mean_response():
    w = torch.randn(4, 1, 3, 3)
    assert adapt_input_conv(w, 1) is w
    w3 = adapt_input_conv(w, 3)
    assert w3.shape == (4, 3, 3, 3)
    torch.testing.assert_close(w3.sum(1, keepdim=True), w)


def test_state_dict_file_loads_with_head_skipped_and_grey_stem(tmp_path):
    state = _rgb_mobilenet_v3_small_state()
    path = tmp_path / "mnv3.pth"
    torch.save(state, path)
    model = build("mobilenet_v3_small", 3, in_chans=1, pretrained=str(path))
    _assert_mobilenet_v3_small_loaded(model, state)


def test_checkpoint_dict_with_a_model_entry_loads(tmp_path):
    source = build("mobilenet_v3_small", 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 7}, path)
    model = build("mobilenet_v3_small", 3, pretrained=str(path))
    torch.testing.assert_close(
        model.classifier[3].weight, source.classifier[3].weight
    )  # same size: head loads


def test_imagenet_loads_from_the_local_hub_cache_under_torchvisions_file_name(torch_home):
    expected = torch_home / "hub" / "checkpoints" / Path(SMALL_WEIGHTS.url).name
    assert hub_checkpoint_path(SMALL_WEIGHTS) == expected
    state = _rgb_mobilenet_v3_small_state()
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    model = build("mobilenet_v3_small", 3, in_chans=1, pretrained="imagenet")
    _assert_mobilenet_v3_small_loaded(model, state)


def test_missing_imagenet_file_names_the_expected_path_and_the_alternatives(torch_home):
    expected = torch_home / "hub" / "checkpoints" / Path(SMALL_WEIGHTS.url).name
    with pytest.raises(FileNotFoundError) as err:
        build("mobilenet_v3_small", 3, pretrained="imagenet")
    message = str(err.value)
    assert str(expected) in message
    assert "clf.imagenet_weights: path/to/file.pth" in message and "`source`" in message and "`none`" in message


def _fresh_and_from_the_hub_cache(name, num_classes, weights, state):
    """The same-seeded model without and with `state` as the cached ImageNet file of `weights`."""
    path = hub_checkpoint_path(weights)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    torch.manual_seed(5)
    fresh = build(name, num_classes)
    torch.manual_seed(5)
    return fresh, build(name, num_classes, pretrained="imagenet")

def test_caco_model_loads_imagenet_except_its_new_attention(torch_home):
    state = _rgb_mobilenet_v3_small_state()
    fresh, model = _fresh_and_from_the_hub_cache("mobilenet_v3_caco", 3, SMALL_WEIGHTS, state)
    torch.testing.assert_close(model.features[4].block[0][0].weight, state["features.4.block.0.0.weight"])
    torch.testing.assert_close(
        model.features[4].block[2].coord.conv_h.weight, fresh.features[4].block[2].coord.conv_h.weight
    )


def test_small_image_resnet_loads_imagenet_into_every_layer_but_its_stem(torch_home):
    torch.manual_seed(1)
    state = tvm.resnet18(weights=None).state_dict()
    fresh, model = _fresh_and_from_the_hub_cache("resnet18_small", 2, tvm.ResNet18_Weights.IMAGENET1K_V1, state)
    torch.testing.assert_close(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert model.conv1.weight.shape == (64, 1, 3, 3)  # the file's 7 x 7 RGB stem does not fit
    torch.testing.assert_close(model.conv1.weight, fresh.conv1.weight)

def test_di_mobilenet_loads_a_torchvision_mobilenet_v2_file(tmp_path):
    torch.manual_seed(2)
    state = tvm.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "mnv2.pth"
    torch.save(state, path)
    model = build("di_mobilenet", 3, pretrained=str(path))
    # The dilated depthwise filter keeps its 3x3 shape, so ImageNet filters load into it.
    torch.testing.assert_close(model.features[1].conv[0][0].weight, state["features.1.conv.0.0.weight"])
    torch.testing.assert_close(model.features[17].conv[2].weight, state["features.17.conv.2.weight"])


def test_legacy_densenet_keys_are_renamed(tmp_path):
    state = tvm.densenet121(weights=None).state_dict()
    legacy = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    assert read_state_dict(path).keys() == state.keys()
    model = build("densenet121", 3, in_chans=3, pretrained=str(path))
    key = "features.denseblock4.denselayer16.conv2.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])


def test_weights_of_another_architecture_are_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(_rgb_mobilenet_v3_small_state(), path)
    with pytest.raises(ValueError, match="do not fit"):
        build("soft_threshold_net", 3, pretrained=str(path))


def test_missing_or_non_state_dict_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build("mobilenet_v3_small", 3, pretrained=str(tmp_path / "absent.pth"))
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a state_dict"):
        build("mobilenet_v3_small", 3, pretrained=str(path))


def test_imagenet_is_refused_for_a_model_without_imagenet_weights():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build("soft_threshold_net", 3, pretrained="imagenet")


def test_multiscale_loads_each_trunk_from_its_own_imagenet_file(torch_home):
    """Writes ~190 MB of fake ImageNet files (trunk weights only, which is all the branches need)."""
    torch.manual_seed(3)
    rgb = build("multiscale", 1000, in_chans=3)
    files = {
        tvm.DenseNet121_Weights.IMAGENET1K_V1: rgb.densenet.state_dict(),
        tvm.VGG16_Weights.IMAGENET1K_V1: rgb.vgg.state_dict(),
        tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V2: rgb.resnext.state_dict(),
    }
    for weights, state in files.items():
        path = hub_checkpoint_path(weights)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    model = build("multiscale", 3, in_chans=1, pretrained="imagenet")
    torch.testing.assert_close(model.resnext.layer3[2].conv2.weight, rgb.resnext.layer3[2].conv2.weight)
    torch.testing.assert_close(model.vgg.features[0].weight, rgb.vgg.features[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(
        model.densenet.features.conv0.weight, rgb.densenet.features.conv0.weight.sum(1, keepdim=True)
    )
