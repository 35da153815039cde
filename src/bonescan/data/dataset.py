"""Torch datasets over a manifest: one row -> (image (1, H, W) float32 in [0, 1], class index).

Images are the 16-bit PNGs written by ingest (and by synthesize / augment), read with `read_png16`.
Paths in a manifest are relative to the project root; `root` says where that is. Labels map to
indices by the order of `classes` (params `base.classes`), so every stage agrees on what index 1 means;
a label outside `classes` fails at construction, not in the middle of an epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bonescan.data.manifest import read_manifest
from bonescan.dicom.read import read_png16

__all__ = ["ManifestDataset", "class_counts", "label_indices", "load_manifests", "load_split"]

log = logging.getLogger(__name__)

Transform = Callable[[Tensor], Tensor]


def label_indices(labels: Sequence[str] | pd.Series, classes: Sequence[str]) -> list[int]:
    """Class index of every label, by position in `classes`.

    Raises:
        ValueError: a label is not one of `classes` (names the unknown labels and the known ones).
    """
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"label(s) {unknown} are not among the configured classes {list(classes)}")
    return [index[label] for label in labels]


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    """Images per class index, zeros included: [n_0, ..., n_{K-1}]."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"label index {len(counts) - 1} out of range for {num_classes} classes")
    return [int(c) for c in counts]


def load_split(
    manifest: str | Path | pd.DataFrame,
    split: str | Sequence[str],
    include_synthetic: bool = True,
) -> pd.DataFrame:
    """Rows of one split (or several) of a manifest, in manifest order.

    Args:
        manifest: a manifest CSV path or an already loaded manifest.
        split: "train", "val", "test", or a sequence of them.
        include_synthetic: keep GAN-generated rows (`synthetic == True`); False gives real images only.
    """
    df = read_manifest(manifest) if isinstance(manifest, str | Path) else manifest
    splits = {split} if isinstance(split, str) else set(split)
    keep = df["split"].isin(splits)
    if not include_synthetic:
        keep &= ~df["synthetic"].astype(bool)
    return df[keep].reset_index(drop=True)


def load_manifests(paths: Sequence[str | Path], optional: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Concatenate manifests (e.g. real + synthetic); files in `optional` may be absent.

    Raises:
        ValueError: the same image_id appears in two manifests.
    """
    frames = [read_manifest(p) for p in paths]
    for path in optional:
        if Path(path).is_file():
            frames.append(read_manifest(path))
        else:
            log.info("optional manifest %s not found; continuing without it", path)
    df = pd.concat(frames, ignore_index=True)
    dup = df["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"image_id {df['image_id'][dup].iloc[0]!r} appears in more than one manifest")
    return df


class ManifestDataset(Dataset):
    """Images and class indices of the rows of a manifest.

    Args:
        manifest: rows to serve (any subset of a manifest, e.g. from `load_split`).
        classes: class names in label-index order.
        transform: applied to the (1, H, W) float32 tensor on every access (on-the-fly augmentation).
        cache: keep decoded images in memory after the first read (per DataLoader worker process);
            costs 4 bytes per pixel, e.g. ~100 kB per 256x96 image.
        root: directory the manifest paths are relative to (the project root).

    Returns per item:
        (image (1, H, W) float32 in [0, 1], label index int).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        classes: Sequence[str],
        transform: Transform | None = None,
        cache: bool = False,
        root: str | Path = ".",
    ):
        self.classes = list(classes)
        self.paths = [Path(root) / p for p in manifest["path"]]
        self.image_ids = list(manifest["image_id"])
        self._labels = label_indices(list(manifest["label"]), self.classes)
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> list[int]:
        """Class index of every item, in order."""
        return list(self._labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Images per class, in `classes` order (zeros included)."""
        return class_counts(self._labels, self.num_classes)

    def read(self, index: int) -> np.ndarray:
        """The (H, W) float32 image of item `index`, without the transform."""
        if self.cache and index in self._cache:
            return self._cache[index]
        image = read_png16(self.paths[index])
        if self.cache:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = torch.from_numpy(np.array(self.read(index), dtype=np.float32, copy=True))[None]  # (1, H, W)
        if self.transform is not None:
            image = self.transform(image)
        return image, self._labels[index]
