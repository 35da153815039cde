"""Traditional augmentation of the training split: rotation, translation, mirroring, Poisson noise.

Yu et al. 2023 (Sec. 3.3) expand the training set x15 (274 -> 4110 images) with these four
operations. One torchvision v2 pipeline (`build_transform`) serves both modes:

- offline (`augment_dataset`, the `augment` DVC stage): `factor - 1` copies of every training image
  (real and admitted synthetic) are written once, each drawn under its own seed derived from
  (seed, parent image_id, copy number), so the output depends neither on row order nor on which
  other images exist. Every copy keeps its parent's patient, study, label, split and synthetic flag,
  and names the parent in `source` ("augment:<parent image_id>"): it can never leave the parent's
  split. Validation and test rows pass through unchanged.
- online: the same pipeline as the `transform` of a `ManifestDataset`, redrawn at every access
  from torch's RNG (seeded per epoch and per DataLoader worker by the training loop).

Poisson noise models a different acquisition time: the [0, 1] image is read as expected counts
`x * peak` (peak = counts at intensity 1, drawn log-uniformly per image), resampled, and scaled back.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from bonescan.config import AugmentConfig
from bonescan.data.manifest import empty_manifest, read_manifest, write_manifest
from bonescan.dicom.read import read_png16, write_png16

__all__ = [
    "AugmentSummary",
    "RandomPoissonNoise",
    "augment_dataset",
    "augment_image",
    "build_transform",
    "copy_seed",
    "parent_of",
]

log = logging.getLogger(__name__)

SOURCE_PREFIX = "augment:"


class RandomPoissonNoise(v2.Transform):
    """Resample a [0, 1] image as Poisson counts: Poisson(x * peak) / peak, clipped to [0, 1].

    Args:
        peak: (low, high) counts at intensity 1; each call draws one log-uniformly (lower = noisier).
        p: probability of applying the noise at all.
    """

    _transformed_types = (tv_tensors.Image, Tensor)  # counts only make sense for intensity images

    def __init__(self, peak: tuple[float, float] = (200.0, 2000.0), p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < peak[0] <= peak[1]:
            raise ValueError(f"peak must be (low, high) with 0 < low <= high, got {peak}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.peak = (float(peak[0]), float(peak[1]))
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = bool(torch.rand(()) < self.p)
        lo, hi = math.log(self.peak[0]), math.log(self.peak[1])
        peak = math.exp(float(torch.empty(()).uniform_(lo, hi)))
        return {"apply": apply, "peak": peak}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        peak = params["peak"]
        counts = torch.poisson(inpt.as_subclass(Tensor).clamp(0.0, 1.0) * peak)
        noisy = (counts / peak).clamp_(0.0, 1.0)
        return tv_tensors.wrap(noisy, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else noisy


def build_transform(cfg: AugmentConfig) -> v2.Compose:
    """The augmentation pipeline for (C, H, W) float tensors in [0, 1]: mirror, rotate + shift, noise.

    Geometric steps come first and Poisson noise last, so the noise is not smoothed by interpolation,
    as in a real acquisition. Empty background (zero counts) fills the pixels moved in from outside.
    """
    ops: list[v2.Transform] = []
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip > 0:
        ops.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.rotation > 0 or any(t > 0 for t in cfg.translation):
        ty, tx = cfg.translation  # config is (H, W); torchvision wants (width, height) fractions
        ops.append(
            v2.RandomAffine(
                degrees=cfg.rotation, translate=(tx, ty), interpolation=InterpolationMode.BILINEAR, fill=0.0
            )
        )
    if cfg.poisson_p > 0:
        ops.append(RandomPoissonNoise(cfg.poisson_peak, cfg.poisson_p))
    return v2.Compose(ops)


def copy_seed(seed: int, parent_id: str, copy: int) -> int:
    """A 63-bit seed for one augmented copy, stable across runs, platforms and row orders."""
    digest = hashlib.blake2b(f"{seed}:{parent_id}:{copy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def augment_image(image: Tensor, transform: v2.Transform, seed: int) -> Tensor:
    """Apply `transform` to a (C, H, W) image under `seed`, leaving the global torch RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


def parent_of(source: str) -> str | None:
    """The parent image_id recorded in an augmented row's `source`; None for other rows."""
    return source[len(SOURCE_PREFIX) :] if source.startswith(SOURCE_PREFIX) else None


@dataclass
class AugmentSummary:
    """What the augment stage did (counts only; no identifiers)."""

    mode: str
    factor: int
    synthetic_included: int  # admitted synthetic training images found
    written: int  # augmented images written
    train_before: dict[str, int] = field(default_factory=dict)  # per class
    train_after: dict[str, int] = field(default_factory=dict)
    rows: int = 0  # rows of the output manifest
    seconds: float = 0.0


@contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread: on one small image, thread hand-off costs ~10x the affine warp itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inputs(cfg: AugmentConfig, root: Path) -> tuple[pd.DataFrame, int]:
    real = read_manifest(root / cfg.manifest)
    synthetic_path = root / cfg.synthetic_manifest
    use = cfg.include_synthetic and synthetic_path.is_file()
    synthetic = read_manifest(synthetic_path) if use else empty_manifest()
    if cfg.include_synthetic and not use:
        log.info("no synthetic manifest at %s: augmenting real images only", cfg.synthetic_manifest)
    leaked = synthetic[synthetic["split"] != "train"]
    if len(leaked):
        raise ValueError(
            f"{cfg.synthetic_manifest}: {len(leaked)} synthetic row(s) outside the train split; "
            "generated images may only ever be used for training"
        )
    combined = pd.concat([real, synthetic], ignore_index=True)
    if combined["image_id"].duplicated().any():
        raise ValueError("an image_id appears in both the real and the synthetic manifest")
    return combined, len(synthetic)


def _class_counts(df: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    counts = df["label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in classes}


def augment_dataset(
    cfg: AugmentConfig, classes: list[str] | tuple[str, ...], root: str | Path = "."
) -> AugmentSummary:
    """Write the augmented training set and a manifest of every row the classifier may use.

    Reads `cfg.manifest` (real, split) and `cfg.synthetic_manifest` if it exists (admitted GAN
    images, all in the train split). Writes `cfg.out_dir`/manifest.csv: all input rows unchanged plus,
    in mode "offline", `factor - 1` augmented copies of every training row as
    `cfg.out_dir`/images/<parent>-aug<k>.png. Modes "online" and "none" write no images.

    Args:
        cfg: the augment section of params.
        classes: class names; only used to report per-class counts.
        root: project root that manifest paths are relative to.
    """
    start = time.perf_counter()
    root = Path(root)
    classes = list(classes)
    rows, n_synthetic = _inputs(cfg, root)
    train = rows[rows["split"] == "train"]
    out_dir = root / cfg.out_dir
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.png"):  # this stage owns the folder; old copies must not linger
        stale.unlink()

    copies = cfg.factor - 1 if cfg.mode == "offline" else 0
    transform = build_transform(cfg)
    new_rows: list[dict[str, object]] = []
    with _single_thread():
        for parent in train.itertuples(index=False) if copies else ():
            image = torch.from_numpy(read_png16(root / parent.path))[None]  # (1, H, W)
            for k in range(1, copies + 1):
                out = augment_image(image, transform, copy_seed(cfg.seed, parent.image_id, k))
                image_id = f"{parent.image_id}-aug{k:02d}"
                path = Path(cfg.out_dir) / "images" / f"{image_id}.png"
                write_png16(np.asarray(out[0], dtype=np.float32), root / path)
                source = f"{SOURCE_PREFIX}{parent.image_id}"
                new_rows.append(dict(parent._asdict(), image_id=image_id, source=source, path=str(path)))
    augmented = pd.DataFrame(new_rows, columns=rows.columns)
    manifest = pd.concat([rows, augmented], ignore_index=True)
    write_manifest(manifest, out_dir / "manifest.csv")
    summary = AugmentSummary(
        mode=cfg.mode,
        factor=cfg.factor if cfg.mode == "offline" else 1,
        synthetic_included=n_synthetic,
        written=len(augmented),
        train_before=_class_counts(train, classes),
        train_after=_class_counts(manifest[manifest["split"] == "train"], classes),
        rows=len(manifest),
        seconds=round(time.perf_counter() - start, 2),
    )
    log.info(
        "augment (%s): %d training images -> %d (%d written) in %.1f s",
        cfg.mode,
        len(train),
        sum(summary.train_after.values()),
        summary.written,
        summary.seconds,
    )
    return summary
