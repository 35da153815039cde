from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bonescan.data.dataset import ManifestDataset, class_counts, load_manifests, load_split
from bonescan.data.manifest import write_manifest
from bonescan.dicom.read import write_png16

CLASSES = ("healthy", "metastasis", "benign")


def _manifest(root: Path, rows: list[tuple[str, str, bool]], name: str = "manifest.csv") -> Path:
    """rows: (label, split, synthetic); writes 32x16 images whose mean encodes the row number."""
    records = []
    for i, (label, split, synthetic) in enumerate(rows):
        image_id = f"{name[:3]}{i:03d}"
        rel = Path("images") / f"{image_id}.png"
        write_png16(np.full((32, 16), (i + 1) / 100.0), root / rel)
        records.append(
            dict(
                image_id=image_id,
                patient_id=f"P{i // 2}",
                study_id=f"S{i}",
                view="anterior",
                label=label,
                split=split,
                synthetic=synthetic,
                source="test",
                path=str(rel),
            )
        )
    return write_manifest(pd.DataFrame(records), root / name)


def test_items_are_one_channel_float_images_in_unit_range_with_class_indices(tmp_path):
    path = _manifest(tmp_path, [("benign", "train", False), ("healthy", "train", False)])
    ds = ManifestDataset(load_split(path, "train"), CLASSES, root=tmp_path)
    image, label = ds[0]
    assert image.shape == (1, 32, 16) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert image.mean().item() == pytest.approx(0.01, abs=1e-4)
    assert label == 2 and ds[1][1] == 0
    assert ds.labels == [2, 0]


def test_class_counts_include_empty_classes():
    assert class_counts([0, 0, 2], 3) == [2, 0, 1]
    with pytest.raises(ValueError, match="out of range"):
        class_counts([3], 3)


def test_dataset_class_counts_follow_class_order(tmp_path):
    path = _manifest(tmp_path, [("metastasis", "train", False)] * 3 + [("healthy", "train", False)])
    ds = ManifestDataset(load_split(path, "train"), CLASSES, root=tmp_path)
    assert ds.class_counts() == [1, 3, 0]


def test_unknown_label_fails_at_construction(tmp_path):
    path = _manifest(tmp_path, [("fracture", "train", False)])
    with pytest.raises(ValueError, match="fracture"):
        ManifestDataset(load_split(path, "train"), CLASSES, root=tmp_path)


def test_load_split_selects_split_and_can_drop_synthetic(tmp_path):
    path = _manifest(
        tmp_path,
        [
            ("healthy", "train", False),
            ("benign", "train", True),
            ("healthy", "val", False),
            ("benign", "test", False),
        ],
    )
    assert len(load_split(path, "train")) == 2
    assert len(load_split(path, "train", include_synthetic=False)) == 1
    assert list(load_split(path, ["val", "test"])["split"]) == ["val", "test"]


def test_transform_is_applied_and_cache_returns_same_pixels(tmp_path):
    path = _manifest(tmp_path, [("healthy", "train", False)])
    ds = ManifestDataset(
        load_split(path, "train"), CLASSES, transform=lambda x: 1.0 - x, cache=True, root=tmp_path
    )
    first, _ = ds[0]
    (tmp_path / ds.paths[0].relative_to(tmp_path)).unlink()  # a cached image no longer needs its file
    second, _ = ds[0]
    assert torch.equal(first, second)
    assert first.mean().item() == pytest.approx(0.99, abs=1e-4)


def test_transform_cannot_corrupt_the_cache(tmp_path):
    path = _manifest(tmp_path, [("healthy", "train", False)])

    def in_place(x):
        return x.mul_(0.0)

    ds = ManifestDataset(load_split(path, "train"), CLASSES, transform=in_place, cache=True, root=tmp_path)
    ds[0]
    assert ds.read(0).mean() == pytest.approx(0.01, abs=1e-4)


def test_load_manifests_accepts_missing_optional_file_and_rejects_duplicates(tmp_path):
    real = _manifest(tmp_path, [("healthy", "train", False)], name="real.csv")
    df = load_manifests([real], optional=[tmp_path / "absent.csv"])
    assert len(df) == 1
    with pytest.raises(ValueError, match="more than one manifest"):
        load_manifests([real, real])
