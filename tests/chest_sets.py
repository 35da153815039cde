"""Small real image sets made in a test from the shared CC BY chest radiographs (an image_csv dataset)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

CHEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_cc_by"
CHEST_CLASSES = ("normal", "covid19", "viral_pneumonia")


def copy_chest_set(images_dir: Path, per_class: int = 2, labels: Path | None = None) -> pd.DataFrame:
    """Copy `per_class` images of each class into `images_dir`; write their labels table to `labels`
    (default `images_dir/labels.csv`; None-like paths elsewhere let a test misplace it on purpose)."""
    table = pd.read_csv(CHEST / "labels.csv").groupby("label").head(per_class)
    images_dir.mkdir(parents=True, exist_ok=True)
    for name in table["filename"]:
        shutil.copy(CHEST / "images" / name, images_dir / name)
    table.to_csv(labels or images_dir / "labels.csv", index=False)
    return table
