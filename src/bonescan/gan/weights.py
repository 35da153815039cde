"""A trained GAN as a file: its format, where each (stage, arch) run writes, loading, rebuilding, digests.

The one home of what `gan/train.py` writes and `gan/synthesize.py` reads, so synthesis never imports
the training loop. Also here: which manifest rows a GAN may train on (real train-split images only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from bonescan.config import GanConfig
from bonescan.data.dataset import load_split
from bonescan.gan import build

__all__ = [
    "CHECKPOINT_FORMAT",
    "GanRun",
    "build_from_weights",
    "generator_digest",
    "load_weights",
    "state_digest",
    "training_rows",
]

CHECKPOINT_FORMAT = "bonescan-gan/1"


def training_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The real train-split rows of a manifest: the only images GAN training may read.

    Raises:
        ValueError: no such row (nothing to train on).
    """
    rows = load_split(manifest, "train", include_synthetic=False)
    if rows.empty:
        raise ValueError("the manifest has no real train-split images to train the GAN on")
    assert (rows["split"] == "train").all() and not rows["synthetic"].any()  # never val/test, never synthetic
    return rows


def build_from_weights(weights: dict, num_classes: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Rebuild the (G, D) pair a weights file describes and load it (EMA weights into G when present).

    Args:
        weights: a dict written by `train_gan` (see `load_weights`).
        num_classes: None keeps the file's classes; otherwise the networks are reset to this count
            after loading (class-dependent parameters re-initialised, all others kept).
    """
    g, d = build(weights["arch"], weights["num_classes"], tuple(weights["image_size"]), **weights["model"])
    g.load_state_dict(weights["ema"] if weights.get("ema") is not None else weights["generator"])
    d.load_state_dict(weights["discriminator"])
    if num_classes is not None:
        g.reset_classes(num_classes)
        d.reset_classes(num_classes)
    return g, d


def load_weights(path: str | Path) -> dict:
    """A weights/checkpoint file written by `train_gan` (plain tensors and Python types only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    return state


def generator_digest(weights: dict) -> str:
    """SHA-256 of what a weights file generates: the sampling generator's tensors (EMA when present) and shape.

    Unlike the file's hash it ignores the training history (wall-clock figures), so a deterministic
    re-run names its synthetic images and rows exactly as before and downstream stages stay put.
    """
    shape = {k: weights[k] for k in ("arch", "classes", "image_size", "model")}
    sampler = weights["ema"] if weights.get("ema") is not None else weights["generator"]
    return hashlib.sha256((json.dumps(shape, sort_keys=True) + state_digest(sampler)).encode()).hexdigest()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and tensor bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class GanRun:
    """Where one (stage, arch) run writes: final weights, resumable checkpoint, curves, sample grids."""

    weights: Path
    checkpoint: Path
    history_csv: Path
    samples_dir: Path

    @classmethod
    def under(cls, gan: GanConfig, stage: str, arch: str, root: Path = Path(".")) -> GanRun:
        models, plots = root / gan.models_dir, root / gan.plots_dir
        return cls(
            weights=models / stage / f"{arch}.pt",
            checkpoint=models / "checkpoints" / stage / f"{arch}.pt",
            history_csv=plots / stage / f"{arch}.csv",
            samples_dir=plots / stage / "samples",
        )
