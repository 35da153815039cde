"""Phantom cohorts in the layout ingest writes (16-bit PNGs plus a manifest), made in the test.

Shared by the classifier and GAN tests: each class puts a hot spot at its own height in a noisy
body-like column, so a few training steps are enough to tell the classes apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bonescan.data.manifest import write_manifest
from bonescan.dicom.read import write_png16

SIZE = (32, 16)


def class_image(k: int, rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A noisy body-like column with a hot spot whose height depends on the class index `k`."""
    h, w = size
    image = np.zeros(size, dtype=np.float32)
    image[2 : h - 2, w // 4 : 3 * w // 4] = 0.3
    row = 4 + (k * (h - 8)) // 3
    image[row : row + 4, w // 2 - 2 : w // 2 + 2] = 1.0
    return np.clip(image + rng.normal(0, 0.05, size), 0, 1).astype(np.float32)


def write_cohort(
    root: Path, out_dir: str, classes: list[str], counts: dict[str, dict[str, int]], seed: int = 0
) -> Path:
    """Write PNGs and a manifest under root/out_dir (one patient per image); counts = {split: {class: n}}.

    Returns the manifest path.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for split, per_class in counts.items():
        for name, n in per_class.items():
            for i in range(n):
                image_id = f"{out_dir}-{split}-{name}-{i}"
                rel = f"{out_dir}/images/{image_id}.png"
                write_png16(class_image(classes.index(name), rng), root / rel)
                rows.append(
                    {
                        "image_id": image_id,
                        "patient_id": f"P-{split}-{name}-{i}",
                        "study_id": f"S-{split}-{name}-{i}",
                        "view": "anterior",
                        "label": name,
                        "split": split,
                        "synthetic": False,
                        "source": "test",
                        "path": rel,
                    }
                )
    return write_manifest(pd.DataFrame(rows), root / out_dir / "manifest.csv")
