"""Model registry: builders register under a name; config names a model, `build` makes it.

Builders have the signature `builder(num_classes, in_chans=1, pretrained=None, **kwargs)` and
return a `Classifier`. `build` drops `None` keyword arguments so an unset config value never
overrides a model's own default (timm's rule).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

__all__ = ["available", "build", "check_input_size", "count_parameters", "min_input_size", "register_model"]

log = logging.getLogger(__name__)

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Builder) -> Builder:
    """Decorator: register `fn` under its function name.

    Raises:
        ValueError: a model of that name is already registered.
    """
    name = fn.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered (by {_BUILDERS[name].__module__})")
    _BUILDERS[name] = fn
    return fn


def available() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def build(
    name: str, num_classes: int, in_chans: int | None = 1, pretrained: str | None = None, **kwargs
) -> nn.Module:
    """Build a registered classifier.

    Args:
        name: one of `available()`.
        num_classes: number of output logits.
        in_chans: input channels (1 for scintigrams); None keeps the builder's default.
        pretrained: None (random init), "imagenet" (torchvision weights from the local torch hub
            cache, never downloaded), or a path to a state_dict / checkpoint file.
        **kwargs: model-specific options; None values are dropped.

    Raises:
        ValueError: unknown model name, listing the available ones.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {available()}") from None
    kwargs = {
        k: v for k, v in dict(kwargs, in_chans=in_chans, pretrained=pretrained).items() if v is not None
    }
    model = builder(num_classes=num_classes, **kwargs)
    log.info("built %s: %s parameters, pretrained=%s", name, f"{count_parameters(model):,}", pretrained)
    return model


def min_input_size(name: str) -> tuple[int, int]:
    """The smallest (H, W) input the named classifier accepts, read from a model built on the meta device.

    The meta device allocates no weights, so even `multiscale` answers in a fraction of a second.

    Raises:
        ValueError: unknown model name, listing the available ones.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {available()}")
    with torch.device("meta"):
        model = _BUILDERS[name](num_classes=2)
    return tuple(getattr(model, "min_input_size", (1, 1)))


def check_input_size(name: str, size: tuple[int, int], size_key: str, model_key: str) -> None:
    """Fail before training when `size` is too small for the model, naming the params keys that set both.

    Args:
        name: the model's registry name.
        size: (H, W) the model would get.
        size_key: the dotted key that sets `size` (e.g. base.image_size).
        model_key: the dotted key that names the model (e.g. clf.model).

    Raises:
        ValueError: a side of `size` below the model's `min_input_size`.
    """
    low = min_input_size(name)
    if _fits(low, size):
        return
    enough = [max(s, m) for s, m in zip(size, low, strict=True)]
    small = [m for m in available() if m != name and _fits(min_input_size(m), size)]
    raise ValueError(
        f"{model_key} {name!r} needs inputs of at least {low[0]} x {low[1]} pixels, but {size_key} is "
        f"{list(size)}: set {size_key}: {enough}, or a {model_key} that takes {list(size)} "
        f"(e.g. {', '.join(small[:3]) or 'none registered'})"
    )


def _fits(low: tuple[int, int], size: tuple[int, int]) -> bool:
    return size[0] >= low[0] and size[1] >= low[1]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
