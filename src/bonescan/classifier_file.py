"""The saved classifier: one frozen, versioned record, and the only code that writes, reads and applies it.

A classifier file (`model.pt`, written by clf_pretrain and clf_finetune) says what the network is
(registered model name, classes, input channels and size, head type), how raw files became its
inputs (`Preprocessing`, so predict repeats exactly what training saw), how probabilities become a
class (`DecisionRule`), and the weights. Evaluation, prediction, the model registry and the MLflow
pyfunc read it through `load`; none of them imports the training loop (nanoGPT's `model_args` idea,
with a format version as the GAN files have).

Format history:
    1: the untyped dict written before this module existed (no "format_version" key); still loads.
    2: this record: "format" and "format_version" keys, image size stored once, a decision rule
       (and, optionally, "test_time_flip"; a file without it applies no flips, and "members": the
       weights of further seed-ensemble members; a file without it is one network).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from bonescan.config import Preprocessing, Size
from bonescan.models import build
from bonescan.runtime import atomic_path, unwrap

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ClassifierFile",
    "MeanOfMembers",
    "ClassifierFormatError",
    "DecisionRule",
    "load",
    "load_model",
    "model_digest",
    "predict_probabilities",
    "read",
    "save",
]

FORMAT = "bonescan.classifier"
FORMAT_VERSION = 2
_LEGACY_VERSION = 1  # files without a "format_version" key


class ClassifierFormatError(ValueError):
    """A file that is not a bonescan classifier, or of a format version this bonescan cannot read."""


@dataclass(frozen=True)
class DecisionRule:
    """How class probabilities become one predicted class.

    Attributes:
        kind: "argmax" (the most probable class) or "offsets" (argmax of log p + offsets: a threshold
            for two classes, per-class shifts for more, e.g. chosen on the validation split).
        offsets: one additive log-probability offset per class (kind "offsets" only).
        chosen_on: where the rule was fitted ("" for argmax), shown in the model card.
    """

    kind: Literal["argmax", "offsets"] = "argmax"
    offsets: tuple[float, ...] = ()
    chosen_on: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("argmax", "offsets"):
            raise ValueError(f"unknown decision rule {self.kind!r} (use 'argmax' or 'offsets')")
        if self.kind == "argmax" and self.offsets:
            raise ValueError("an argmax decision rule takes no offsets")

    def predict(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, K) probabilities -> (N,) class indices."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.kind == "argmax" or probabilities.size == 0:
            return probabilities.argmax(axis=1)
        return self._log_scores(probabilities).argmax(axis=1)

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """(N, K) probabilities -> softmax(log p + offsets): a distribution whose argmax is `predict`."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.kind == "argmax" or probabilities.size == 0:
            return probabilities
        log_scores = self._log_scores(probabilities)
        scores = np.exp(log_scores - log_scores.max(axis=1, keepdims=True))
        return scores / scores.sum(axis=1, keepdims=True)

    def _log_scores(self, probabilities: np.ndarray) -> np.ndarray:
        if len(self.offsets) != probabilities.shape[1]:
            raise ValueError(f"decision rule has {len(self.offsets)} offsets for {probabilities.shape[1]} classes")
        return np.log(np.clip(probabilities, 1e-12, None)) + np.asarray(self.offsets)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offsets": [float(o) for o in self.offsets], "chosen_on": self.chosen_on}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> DecisionRule:
        if not raw:
            return cls()
        return cls(str(raw.get("kind", "argmax")), tuple(float(o) for o in raw.get("offsets", ())),
                   str(raw.get("chosen_on", "")))  # fmt: skip


@dataclass(frozen=True)
class ClassifierFile:
    """Everything a saved classifier is: architecture, contract, decision rule and weights.

    Attributes:
        model_name: `bonescan.models` registry name.
        classes: class names in output (logit) order.
        in_chans: input channels the network takes (grey images are repeated to fill them).
        image_size: (H, W) of the network's input; stored once (also the size `preprocessing` makes).
        normed_head: the head is cosine-normalised (LDAM), rebuilt before loading the weights.
        state_dict: the weights (CPU tensors).
        preprocessing: how raw files became inputs (None for a source-domain or initial model).
        decision: how probabilities become a class.
        test_time_flip: probabilities are averaged over the image and its left-right mirror.
        members: weights of further ensemble members (same architecture, other seeds); the model's
            probabilities are the mean of all members' (`state_dict` is member 0).
        stage: "pretrain" or "finetune".
        config: the training config (`clf` section) that produced it; not part of the model's identity.
        history: per-epoch training statistics; not part of the model's identity.
        best: the best epoch's validation scores.
    """

    model_name: str
    classes: tuple[str, ...]
    in_chans: int
    image_size: Size
    normed_head: bool
    state_dict: Mapping[str, Tensor] = field(repr=False)
    preprocessing: Preprocessing | None = None
    decision: DecisionRule = DecisionRule()
    test_time_flip: bool = False
    members: tuple[Mapping[str, Tensor], ...] = field(default=(), repr=False)
    stage: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()
    best: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preprocessing is not None and tuple(self.preprocessing.image_size) != tuple(self.image_size):
            raise ValueError(
                f"preprocessing makes {tuple(self.preprocessing.image_size)} images, the model takes {self.image_size}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        model_name: str,
        classes: Sequence[str],
        image_size: Size,
        *,
        normed_head: bool,
        preprocessing: Preprocessing | None = None,
        decision: DecisionRule | None = None,
        test_time_flip: bool = False,
        stage: str = "",
        config: Mapping[str, Any] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        best: Mapping[str, float] | None = None,
    ) -> ClassifierFile:
        """The record of a (possibly DDP-wrapped) network, its weights copied to the CPU."""
        net = unwrap(model)
        return cls(
            model_name=model_name,
            classes=tuple(classes),
            in_chans=int(getattr(net, "in_chans", 1)),
            image_size=(int(image_size[0]), int(image_size[1])),
            normed_head=bool(normed_head),
            state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            preprocessing=preprocessing,
            decision=decision or DecisionRule(),
            test_time_flip=bool(test_time_flip),
            stage=stage,
            config=dict(config or {}),
            history=tuple(history),
            best=dict(best or {}),
        )

    def with_decision(self, decision: DecisionRule) -> ClassifierFile:
        return replace(self, decision=decision)

    def with_members(self, members: Sequence[Mapping[str, Tensor]]) -> ClassifierFile:
        """This record with further ensemble members' weights (CPU copies)."""
        copies = tuple({k: v.detach().cpu().clone() for k, v in m.items()} for m in members)
        return replace(self, members=copies)

    def _network(self, weights: Mapping[str, Tensor]) -> nn.Module:
        model = build(self.model_name, self.num_classes, in_chans=self.in_chans)
        if self.normed_head:
            model.reset_classifier(self.num_classes, normed=True)
        model.load_state_dict(dict(weights))
        return model

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with its weights (a `MeanOfMembers` for an ensemble), in eval mode on `device`."""
        if not self.members:
            return self._network(self.state_dict).to(device).eval()
        nets = [self._network(w) for w in (self.state_dict, *self.members)]
        return MeanOfMembers(nets).to(device).eval()

    def identity(self) -> dict[str, Any]:
        """What the model computes and on what input (the digest's contract part; no history, no config)."""
        identity: dict[str, Any] = {
            "model_name": self.model_name,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "classes": list(self.classes),
            "image_size": list(self.image_size),
            "normed_head": self.normed_head,
            "preprocessing": self.preprocessing.model_dump(mode="json") if self.preprocessing else None,
        }
        if self.decision != DecisionRule():  # argmax models keep the digests they had before rules existed
            identity["decision"] = self.decision.to_dict()
        if self.test_time_flip:  # likewise: models without test-time flips keep their digests
            identity["test_time_flip"] = True
        if self.members:
            identity["members"] = 1 + len(self.members)
        return identity

    def summary(self) -> dict[str, Any]:
        """JSON-able description without weights (model cards, registry tags, predict's summary)."""
        return {
            **self.identity(),
            "decision": self.decision.to_dict(),
            "test_time_flip": self.test_time_flip,
            "stage": self.stage,
            "config": dict(self.config),
        }

    # ------------------------------------------------------------------ (de)serialisation

    def to_state(self) -> dict[str, Any]:
        """The plain dict `torch.save` writes (tensors and JSON types only: `weights_only` loads it)."""
        preprocessing = None
        if self.preprocessing is not None:
            preprocessing = self.preprocessing.model_dump(mode="json", exclude={"image_size"})
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "classes": list(self.classes),
            "in_chans": self.in_chans,
            "image_size": list(self.image_size),
            "normed_head": self.normed_head,
            "preprocessing": preprocessing,
            "decision": self.decision.to_dict(),
            "test_time_flip": self.test_time_flip,
            "members": [dict(m) for m in self.members],
            "stage": self.stage,
            "config": dict(self.config),
            "history": [dict(h) for h in self.history],
            "best": dict(self.best),
            "model": dict(self.state_dict),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], source: str = "classifier file") -> ClassifierFile:
        """Inverse of `to_state`; also reads format 1 (the untyped dict of earlier bonescan versions).

        Raises:
            ClassifierFormatError: not a classifier record, or a format version newer than this code.
        """
        if not isinstance(state, Mapping) or "model" not in state or "model_name" not in state:
            found = type(state).__name__ if not isinstance(state, Mapping) else f"keys {sorted(state)[:8]}"
            raise ClassifierFormatError(f"{source}: not a bonescan classifier file (found {found})")
        version = state.get("format_version", _LEGACY_VERSION)
        if state.get("format", FORMAT) != FORMAT:
            raise ClassifierFormatError(f"{source}: format {state.get('format')!r}, expected {FORMAT!r}")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < _LEGACY_VERSION:
            raise ClassifierFormatError(
                f"{source}: classifier file format version {version!r}; this bonescan reads versions "
                f"{_LEGACY_VERSION}-{FORMAT_VERSION} (upgrade bonescan, or re-run clf_finetune)"
            )
        try:
            size = (int(state["image_size"][0]), int(state["image_size"][1]))
            recorded = state.get("preprocessing")
            preprocessing = None
            if recorded is not None:
                # Format 1 repeated the image size inside the record; format 2 stores it once.
                preprocessing = Preprocessing.model_validate({**recorded, "image_size": size})
            classes = tuple(str(c) for c in state["classes"])
            if version == _LEGACY_VERSION and int(state.get("num_classes", len(classes))) != len(classes):
                raise ClassifierFormatError(f"{source}: format 1 file with num_classes != len(classes)")
            return cls(
                model_name=str(state["model_name"]),
                classes=classes,
                in_chans=int(state["in_chans"]),
                image_size=size,
                normed_head=bool(state.get("normed_head", False)),
                state_dict=state["model"],
                preprocessing=preprocessing,
                decision=DecisionRule.from_dict(state.get("decision")),
                test_time_flip=bool(state.get("test_time_flip", False)),
                members=tuple(state.get("members") or ()),
                stage=str(state.get("stage", "")),
                config=dict(state.get("config") or {}),
                history=tuple(state.get("history") or ()),
                best=dict(state.get("best") or {}),
            )
        except ClassifierFormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ClassifierFormatError(
                f"{source}: classifier file of format version {version} is incomplete or damaged ({exc})"
            ) from None


class MeanOfMembers(nn.Module):
    """A seed ensemble as one network: its "logits" are the log of the members' mean probabilities.

    So softmax of its output is the mean of the members' softmax, and every consumer of a classifier
    (the one inference loop, the operating point, Grad-CAM) takes it unchanged. Grad-CAM reads member
    0's layers, through the ensemble's score.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.in_chans = int(getattr(members[0], "in_chans", 1))
        self.num_classes = int(getattr(members[0], "num_classes", 0))
        self.min_input_size = getattr(members[0], "min_input_size", (1, 1))

    def forward(self, x: Tensor) -> Tensor:
        prob = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return prob.clamp_min(torch.finfo(prob.dtype).tiny).log()

    def gradcam_layers(self) -> dict[str, nn.Module]:
        return self.members[0].gradcam_layers()


def save(record: ClassifierFile, path: str | Path) -> Path:
    """Write `record` to `path` atomically (a kill mid-write leaves the previous file intact)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(record.to_state(), tmp)
    return path


def read(path: str | Path) -> ClassifierFile:
    """The record saved at `path` (weights on the CPU), any supported format version.

    Raises:
        FileNotFoundError: no file at `path`.
        ClassifierFormatError: not a classifier file, or an unsupported format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, a truncated file, another framework's file
        raise ClassifierFormatError(f"{path}: not a readable classifier file ({type(exc).__name__})") from None
    return ClassifierFile.from_state(state, str(path))


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ClassifierFile]:
    """(the network in eval mode on `device`, its record) from a classifier file."""
    record = read(path)
    return record.build(device), record


load_model = load


def model_digest(record: ClassifierFile) -> str:
    """blake2b of a classifier's weights (names, dtypes, shapes, values) and input contract.

    Two files with the same weights and contract get the same digest whatever else they record (the
    training history with its wall-clock timings), so the registry keeps one version per model.
    """
    h = hashlib.blake2b(digest_size=16)
    weights = [record.state_dict, *record.members]
    for name, tensor in ((f"{i}.{k}" if i else k, v) for i, w in enumerate(weights) for k, v in sorted(w.items())):
        value = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d buffers (num_batches_tracked) too
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    h.update(json.dumps(record.identity(), sort_keys=True, default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- applying it


def model_input(images: Tensor, in_chans: int, image_size: Sequence[int] | None) -> Tensor:
    """(B, 1, H, W) images in [0, 1] -> the network's channels and size (bilinear resize when they differ)."""
    if image_size is not None and tuple(images.shape[-2:]) != tuple(image_size):
        images = F.interpolate(images, size=tuple(image_size), mode="bilinear", align_corners=False)
    if in_chans != images.shape[1]:
        images = images.expand(-1, in_chans, -1, -1)
    return images


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    image_size: Sequence[int] | None = None,
    num_classes: int | None = None,
    test_time_flip: bool = False,
) -> np.ndarray:
    """Softmax probabilities (N, K) of every item of `dataset` ((image (1, H, W), label) pairs), in order.

    fp32, eval mode; the one inference loop of evaluate, predict and the MLflow pyfunc. With
    `test_time_flip` (the saved model's `test_time_flip`) an image's probabilities are the mean of its
    own and its left-right mirror's.
    """
    model.eval()
    device = torch.device(device)
    in_chans = getattr(model, "in_chans", 1)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for images, _ in loader:
        inputs = model_input(images.to(device), in_chans, image_size)
        prob = torch.softmax(model(inputs).float(), dim=1)
        if test_time_flip:
            prob = (prob + torch.softmax(model(inputs.flip(-1)).float(), dim=1)) / 2
        out.append(prob.cpu())
    if out:
        return torch.cat(out).numpy().astype(np.float64)
    k = num_classes if num_classes is not None else getattr(dataset, "num_classes", 0)
    return np.zeros((0, k))
