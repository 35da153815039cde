"""Resumable training checkpoints as explicit dicts of tensors and plain Python types, written atomically.

`torch.load(weights_only=True)` reads every file written here: RNG states are uint8 tensors, the
config is a plain dict, history is a list of dicts of floats. A checkpoint also carries a
fingerprint of what it was trained on (data rows, initial weights) so a stale `last.pt` from a
different run is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bonescan.runtime import atomic_path

__all__ = [
    "file_digest",
    "fingerprint",
    "load_checkpoint",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
]

def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temporary file, then rename: a kill mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """torch's CPU and CUDA generator states (uint8 tensors)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`; CUDA states are restored only if the device count matches."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def file_digest(path: str | Path) -> str:
    """blake2b of a file's bytes (identifies initial weights)."""
    h = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(frames: Iterable[pd.DataFrame], *extra: object) -> str:
    """A digest of the rows a run trains on (image_id, label, split, path) and any extra JSON-able items."""
    h = hashlib.blake2b(digest_size=16)
    for df in frames:
        cols = df.loc[:, ["image_id", "label", "split", "path"]].astype(str)
        h.update(pd.util.hash_pandas_object(cols, index=False).values.tobytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()
