"""Loading pretrained weights offline: ImageNet from the local torch hub cache, or a state_dict file.

Nothing here downloads. "imagenet" resolves a torchvision `WeightsEnum` to the file torchvision
itself would cache, `torch.hub.get_dir()/checkpoints/<basename of weights.url>`, and reads it through
torchvision's weights API only if it is already there. Loading tolerates exactly what transfer
learning needs, and fails loudly on anything else:

- a different class count: head parameters whose shape differs keep their fresh initialisation;
- a different input channel count: RGB stem filters are summed for one grey channel, the
  grey-level response of an RGB filter (timm's `adapt_input_conv` rule), not a channel repeat;
- parameters of blocks the checkpoint's architecture lacks (`Classifier.pretrained_optional`).
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from bonescan.models.base import Classifier

__all__ = [
    "LoadReport",
    "adapt_input_conv",
    "apply_pretrained",
    "hub_checkpoint_path",
    "imagenet_state_dict",
    "load_matching",
    "read_state_dict",
]

log = logging.getLogger(__name__)

# torchvision's DenseNet checkpoints predate module names without dots ('norm.1' -> 'norm1').
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def hub_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where torchvision caches `weights`: torch.hub.get_dir()/checkpoints/<basename of weights.url>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, Tensor]:
    """The torchvision state_dict of `weights`, read from the local hub cache only.

    Raises:
        FileNotFoundError: the cached file is absent; the message names the expected path and the
            offline alternatives.
    """
    path = hub_checkpoint_path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights {weights} are not in the local torch cache: expected {path} "
            f"(from {weights.url}). Nothing is downloaded at run time. Either copy that file there "
            "(or set TORCH_HOME to a cache that has it), or give the file in params.yaml as "
            "`clf.imagenet_weights: path/to/file.pth`, or set `clf.pretrain_source` to `source` "
            "(pretrain on the source domain) or `none` (random initialisation)."
        )
    # The file exists, so torchvision's loader reads the cache and never touches the network.
    state = weights.get_state_dict(progress=False, check_hash=False, weights_only=True)
    log.info("loaded ImageNet weights %s from %s", weights, path)
    return _fix_legacy_keys(state)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state_dict from a file: a bare state_dict, or a checkpoint dict holding one under
    "model", "state_dict" or "model_state_dict".

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds something else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: not a plain state_dict (torch.load(weights_only=True) refused it: {exc}); "
            "save model.state_dict() to its own file"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state_dict (parameter name -> tensor), got {type(obj).__name__}"
        )
    return _fix_legacy_keys(dict(obj))


def _fix_legacy_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Compiled / DDP wrappers prefix every key; strip them so checkpoints of wrapped models load too.
    fixed = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.removeprefix(prefix)
        match = _LEGACY_DENSENET_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Stem filters (O, I, kh, kw) for `in_chans` inputs.

    One channel: sum over the input channels (an RGB filter applied to a grey image replicated in
    R, G and B gives exactly this response). More channels: repeat cyclically and rescale by
    I / in_chans so activations keep their magnitude.
    """
    src = weight.shape[1]
    if src == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / src)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (src / in_chans)


@dataclass
class LoadReport:
    """What `load_matching` did, by parameter/buffer name."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # stem filters converted to in_chans
    kept_init: list[str] = field(default_factory=list)  # optional keys absent or of another shape (head)
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model


def _is_input_conv(module: nn.Module, key: str, ours: Tensor, theirs: Tensor, in_chans: int) -> bool:
    if ours.ndim != 4 or theirs.ndim != 4 or ours.shape[1] != in_chans:
        return False
    if ours.shape[0] != theirs.shape[0] or ours.shape[2:] != theirs.shape[2:]:
        return False
    owner = module.get_submodule(key.rpartition(".")[0])
    return isinstance(owner, nn.Conv2d) and owner.groups == 1


def load_matching(
    module: nn.Module, state: Mapping[str, Tensor], in_chans: int, optional: tuple[str, ...] = ()
) -> LoadReport:
    """Copy `state` into `module`, adapting stem filters to `in_chans` and skipping optional keys.

    Args:
        module: destination; its own keys decide what is needed.
        state: source state_dict (already key-compatible with `module`).
        in_chans: input channels of `module`'s stem convolution(s).
        optional: key prefixes that may be missing or differ in shape (head, new blocks); they
            keep their current values.

    Raises:
        ValueError: a required key is missing, or a shape differs in a way no rule explains.
    """
    report = LoadReport()
    target = module.state_dict()
    merged: dict[str, Tensor] = {}
    missing, mismatched = [], []
    for key, ours in target.items():
        theirs = state.get(key)
        is_optional = key.startswith(optional) if optional else False
        if theirs is None:
            (report.kept_init if is_optional else missing).append(key)
        elif theirs.shape == ours.shape:
            merged[key] = theirs
            report.loaded.append(key)
        elif _is_input_conv(module, key, ours, theirs, in_chans):
            merged[key] = adapt_input_conv(theirs.to(ours.dtype), in_chans)
            report.adapted.append(key)
        elif is_optional:
            report.kept_init.append(key)
        else:
            mismatched.append(f"{key}: model {tuple(ours.shape)} vs file {tuple(theirs.shape)}")
    if missing or mismatched:
        shown = missing[:8] + mismatched[:8]
        raise ValueError(
            f"weights do not fit {type(module).__name__}: {len(missing)} missing and "
            f"{len(mismatched)} mismatched keys, e.g. {shown}"
        )
    report.unexpected = sorted(set(state) - set(target))
    module.load_state_dict(merged, strict=False)
    log.info(
        "loaded %d tensors (%d stem adapted to %d channels), kept %d initialised, ignored %d from the file",
        len(report.loaded) + len(report.adapted),
        len(report.adapted),
        in_chans,
        len(report.kept_init),
        len(report.unexpected),
    )
    return report


def apply_pretrained(
    model: Classifier, pretrained: str | Path | None, imagenet: Mapping[str, WeightsEnum] | None
) -> Classifier:
    """Load `pretrained` into `model` in place and return it.

    Args:
        model: freshly built classifier (already with its in_chans and num_classes).
        pretrained: None, "imagenet", or a path to a state_dict of this architecture (torchvision
            keys for the torchvision-based models).
        imagenet: submodule name ("" = the whole model) -> torchvision weights it is initialised
            from; None if the architecture has no ImageNet weights.

    Raises:
        ValueError: "imagenet" for a model without ImageNet weights, or weights that do not fit.
        FileNotFoundError: the weights file (or cached ImageNet file) is absent.
    """
    if pretrained is None:
        return model
    optional = (model.classifier_name + ".", *model.pretrained_optional)
    if str(pretrained) == "imagenet":
        if not imagenet:
            raise ValueError(
                f"{type(model).__name__} has no ImageNet weights; set `clf.pretrain_source` to `source` or `none`"
            )
        for name, weights in imagenet.items():
            part = model.get_submodule(name) if name else model
            part_optional = optional if not name else ()
            load_matching(part, imagenet_state_dict(weights), model.in_chans, part_optional)
        return model
    load_matching(model, read_state_dict(pretrained), model.in_chans, optional)
    return model
