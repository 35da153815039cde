"""The registry and the contract every registered classifier keeps (looped over `available()`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bonescan.models import Classifier, available, build, count_parameters, registry
from bonescan.models.base import Classifier as BaseClassifier

NUM_CLASSES = 3
# Architectures too heavy for 64 px on a 2-core CI box get the smallest input they accept.
HEAVY = {"multiscale", "vgg16", "densenet121", "resnext50", "inception_v3", "resnet34", "resnet18_small"}


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models() -> dict[str, Classifier]:
    """One instance per registered name, built lazily and shared by the tests of this module."""
    return {}


def _model(models: dict[str, Classifier], name: str) -> Classifier:
    if name not in models:
        torch.manual_seed(0)
        models[name] = build(name, NUM_CLASSES)
    return models[name]


def _square_input(model: Classifier, name: str, batch: int = 2) -> torch.Tensor:
    side = max(32 if name in HEAVY else 64, *model.min_input_size)
    return torch.randn(batch, 1, side, side)


@pytest.fixture(scope="module")
def parameter_counts() -> dict[str, int]:
    return {}


# --- registry behaviour ------------------------------------------------------------------------------


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of the registry, so test builders never leak into `available()`."""
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))


def test_available_lists_every_required_architecture():
    required = {
        "multiscale",
        "resnet18",
        "resnet18_small",
        "resnet34",
        "vgg16",
        "densenet121",
        "resnext50",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "inception_v3",
        "efficientnet_b0",
        "di_mobilenet",
        "mobilenet_v3_caco",
        "soft_threshold_net",
    }
    assert required <= set(available())
    assert available() == sorted(available())


def test_registering_a_taken_name_raises(private_registry):
    def resnet34(num_classes, in_chans=1, pretrained=None):  # same name as the torchvision baseline
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(resnet34)


def test_unknown_name_raises_and_lists_available_models():
    with pytest.raises(ValueError, match="unknown model 'resnet35'") as err:
        build("resnet35", NUM_CLASSES)
    assert "resnet34" in str(err.value) and "multiscale" in str(err.value)


def test_build_drops_none_kwargs_so_builder_defaults_apply(private_registry):
    seen = {}

    @registry.register_model
    def toy_model(num_classes, in_chans=5, pretrained=None, drop_rate=0.25):
        seen.update(in_chans=in_chans, pretrained=pretrained, drop_rate=drop_rate)
        return nn.Linear(in_chans, num_classes)

    build("toy_model", 2, in_chans=None, pretrained=None, drop_rate=None)
    assert seen == {"in_chans": 5, "pretrained": None, "drop_rate": 0.25}
    build("toy_model", 2, in_chans=1, drop_rate=0.5)
    assert seen == {"in_chans": 1, "pretrained": None, "drop_rate": 0.5}


# --- contract of every registered model --------------------------------------------------------------


@pytest.mark.parametrize("name", available())
def test_model_maps_grey_batch_to_logits_and_backpropagates(name, models, parameter_counts):
    model = _model(models, name).train()
    assert isinstance(model, BaseClassifier)
    x = _square_input(model, name)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    logits.logsumexp(1).mean().backward()
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1 and stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    parameter_counts[name] = count_parameters(model)


@pytest.mark.parametrize("name", available())
def test_model_accepts_tall_whole_body_aspect(name, models):
    model = _model(models, name).eval()
    h, w = max(96, model.min_input_size[0]), max(48, model.min_input_size[1])
    with torch.no_grad():
        assert model(torch.randn(1, 1, h, w)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", available())
def test_forward_is_forward_head_of_forward_features(name, models):
    model = _model(models, name).eval()
    x = _square_input(model, name)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", available())
def test_reset_classifier_changes_the_class_count_and_keeps_the_trunk(name, models):
    model = _model(models, name).eval()
    x = _square_input(model, name, batch=1)
    with torch.no_grad():
        before = model.forward_features(x)
        for k, normed in ((5, False), (4, True), (NUM_CLASSES, False)):
            model.reset_classifier(k, normed=normed)
            assert model(x).shape == (1, k) and model.num_classes == k
            assert type(model.get_classifier()).__name__ == ("NormedLinear" if normed else "Linear")
        torch.testing.assert_close(model.forward_features(x), before)


@pytest.mark.parametrize("name", available())
def test_gradcam_layers_are_submodules_producing_feature_maps(name, models):
    model = _model(models, name).eval()
    layers = model.gradcam_layers()
    assert layers and all(any(layer is m for m in model.modules()) for layer in layers.values())
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
        for n, m in layers.items()
    ]
    with torch.no_grad():
        model(_square_input(model, name, batch=1))
    for hook in hooks:
        hook.remove()
    assert set(outputs) == set(layers)
    assert all(out.ndim == 4 and out.shape[0] == 1 for out in outputs.values())


@pytest.mark.parametrize("name", available())
def test_wrong_channel_count_fails_with_a_clear_message(name, models):
    model = _model(models, name)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 96, 96))


def test_parameter_counts_are_reported(parameter_counts, capsys):
    """Runs after the forward tests; prints the table whether or not pytest captures output."""
    missing = set(available()) - set(parameter_counts)
    if missing:
        pytest.skip(f"forward tests did not run for {sorted(missing)}")
    table = "\n".join(f"  {name:<20} {n:>12,}" for name, n in sorted(parameter_counts.items()))
    with capsys.disabled():
        print(f"\nparameters (num_classes={NUM_CLASSES}, in_chans=1):\n{table}")
    assert all(n > 0 for n in parameter_counts.values())
