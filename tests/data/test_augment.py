from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bonescan.config import AugmentConfig
from bonescan.data.augment import (
    RandomPoissonNoise,
    augment_dataset,
    augment_image,
    build_transform,
    copy_seed,
    parent_of,
)
from bonescan.data.dataset import ManifestDataset, load_split
from bonescan.data.manifest import read_manifest, write_manifest
from bonescan.dicom.read import read_png16, write_png16

CLASSES = ("healthy", "metastasis", "benign")


def _image(i: int) -> np.ndarray:
    """A 32x16 'body' with a bright spot whose row depends on i."""
    img = np.zeros((32, 16), dtype=np.float32)
    img[4:28, 4:12] = 0.3
    img[4 + i % 20, 6:10] = 0.9
    return img


def _write(root: Path, name: str, rows: list[dict], synthetic: bool = False) -> Path:
    records = []
    for i, row in enumerate(rows):
        image_id = f"{name}{i:03d}"
        rel = Path(name) / f"{image_id}.png"
        write_png16(_image(i), root / rel)
        records.append(
            dict(
                image_id=image_id,
                patient_id=row.get("patient", f"P{i}"),
                study_id=f"S{name}{i}",
                view="anterior",
                label=row["label"],
                split=row["split"],
                synthetic=synthetic,
                source="gan:test" if synthetic else "test",
                path=str(rel),
            )
        )
    return write_manifest(pd.DataFrame(records), root / name / "manifest.csv")


def _cohort(root: Path) -> None:
    rows = [
        {"label": "healthy", "split": "train", "patient": "A"},
        {"label": "healthy", "split": "train", "patient": "A"},
        {"label": "metastasis", "split": "train", "patient": "B"},
        {"label": "benign", "split": "train", "patient": "C"},
        {"label": "healthy", "split": "val", "patient": "D"},
        {"label": "benign", "split": "test", "patient": "E"},
    ]
    _write(root, "real", rows)


def _cfg(**kw) -> AugmentConfig:
    base = dict(
        manifest="real/manifest.csv", synthetic_manifest="synth/manifest.csv", out_dir="aug", factor=3
    )
    return AugmentConfig(**{**base, **kw})


def test_train_split_grows_by_the_factor_and_val_test_rows_are_unchanged(tmp_path):
    _cohort(tmp_path)
    summary = augment_dataset(_cfg(), CLASSES, root=tmp_path)
    out = read_manifest(tmp_path / "aug" / "manifest.csv")
    real = read_manifest(tmp_path / "real" / "manifest.csv")
    assert summary.written == 4 * 2
    assert (out["split"] == "train").sum() == 4 * 3
    assert summary.train_after == {"healthy": 6, "metastasis": 3, "benign": 3}
    pd.testing.assert_frame_equal(out[out["split"] != "train"].reset_index(drop=True),
                                  real[real["split"] != "train"].reset_index(drop=True))  # fmt: skip
    assert all((tmp_path / p).is_file() for p in out["path"])


def test_augmented_image_never_crosses_its_parents_split_or_patient(tmp_path):
    _cohort(tmp_path)
    augment_dataset(_cfg(factor=4), CLASSES, root=tmp_path)
    out = read_manifest(tmp_path / "aug" / "manifest.csv").set_index("image_id")
    children = out[out["source"].map(parent_of).notna()]
    assert len(children) == 4 * 3
    for _, child in children.iterrows():
        parent = out.loc[parent_of(child["source"])]
        assert (child["split"], child["patient_id"], child["study_id"], child["label"]) == (
            parent["split"], parent["patient_id"], parent["study_id"], parent["label"],
        )  # fmt: skip
        assert child["split"] == "train"
    # patient-level split containment still holds after augmentation
    assert out.groupby("patient_id")["split"].nunique().max() == 1


def test_augmentation_is_deterministic_for_a_seed_and_differs_across_seeds(tmp_path):
    _cohort(tmp_path)
    augment_dataset(_cfg(out_dir="a"), CLASSES, root=tmp_path)
    augment_dataset(_cfg(out_dir="b"), CLASSES, root=tmp_path)
    augment_dataset(_cfg(out_dir="c", seed=7), CLASSES, root=tmp_path)
    names = sorted(p.name for p in (tmp_path / "a" / "images").glob("*.png"))
    assert names and names == sorted(p.name for p in (tmp_path / "b" / "images").glob("*.png"))
    for name in names:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (
            tmp_path / "b" / "images" / name
        ).read_bytes()
    assert any(
        (tmp_path / "a" / "images" / n).read_bytes() != (tmp_path / "c" / "images" / n).read_bytes()
        for n in names
    )


def test_copies_do_not_depend_on_which_other_images_exist(tmp_path):
    _cohort(tmp_path)
    augment_dataset(_cfg(out_dir="full"), CLASSES, root=tmp_path)
    real = read_manifest(tmp_path / "real" / "manifest.csv")
    write_manifest(real.iloc[2:], tmp_path / "real" / "subset.csv")
    augment_dataset(_cfg(out_dir="subset", manifest="real/subset.csv"), CLASSES, root=tmp_path)
    name = f"{real['image_id'][2]}-aug01.png"
    assert (tmp_path / "full/images" / name).read_bytes() == (tmp_path / "subset/images" / name).read_bytes()


def test_admitted_synthetic_train_images_are_augmented_too_and_keep_their_flag(tmp_path):
    _cohort(tmp_path)
    _write(tmp_path, "synth", [{"label": "benign", "split": "train"}], synthetic=True)
    summary = augment_dataset(_cfg(), CLASSES, root=tmp_path)
    out = read_manifest(tmp_path / "aug" / "manifest.csv")
    assert summary.synthetic_included == 1
    children = out[out["source"] == "augment:synth000"]
    assert len(children) == 2 and children["synthetic"].all()
    no_synth = augment_dataset(_cfg(out_dir="aug2", include_synthetic=False), CLASSES, root=tmp_path)
    assert no_synth.synthetic_included == 0


def test_synthetic_rows_outside_train_are_rejected(tmp_path):
    _cohort(tmp_path)
    _write(tmp_path, "synth", [{"label": "benign", "split": "test"}], synthetic=True)
    with pytest.raises(ValueError, match="outside the train split"):
        augment_dataset(_cfg(), CLASSES, root=tmp_path)


def test_online_and_none_modes_write_no_images_but_list_every_row(tmp_path):
    _cohort(tmp_path)
    for mode in ("online", "none"):
        summary = augment_dataset(_cfg(mode=mode, out_dir=mode), CLASSES, root=tmp_path)
        assert summary.written == 0
        assert len(read_manifest(tmp_path / mode / "manifest.csv")) == 6
        assert not list((tmp_path / mode / "images").glob("*.png"))


def test_rerun_with_smaller_factor_removes_stale_copies(tmp_path):
    _cohort(tmp_path)
    augment_dataset(_cfg(factor=4), CLASSES, root=tmp_path)
    augment_dataset(_cfg(factor=2), CLASSES, root=tmp_path)
    assert len(list((tmp_path / "aug" / "images").glob("*.png"))) == 4


def test_online_transform_draws_exactly_what_offline_writes_for_the_same_seed(tmp_path):
    _cohort(tmp_path)
    cfg = _cfg()
    augment_dataset(cfg, CLASSES, root=tmp_path)
    rows = load_split(tmp_path / "real" / "manifest.csv", "train")
    online = ManifestDataset(rows, CLASSES, transform=build_transform(cfg), root=tmp_path)
    torch.manual_seed(copy_seed(cfg.seed, rows["image_id"][0], 1))
    drawn, _ = online[0]
    written = read_png16(tmp_path / "aug" / "images" / f"{rows['image_id'][0]}-aug01.png")
    np.testing.assert_allclose(drawn[0].numpy(), written, atol=1.0 / 65535)


def test_geometry_moves_pixels_but_keeps_shape_range_and_most_of_the_body():
    cfg = AugmentConfig(rotation=15, translation=(0.1, 0.1), hflip=1.0, poisson_p=0.0)
    image = torch.from_numpy(_image(3))[None]
    out = augment_image(image, build_transform(cfg), seed=1)
    assert out.shape == image.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, image)
    assert out.sum().item() == pytest.approx(image.sum().item(), rel=0.2)


def test_augment_image_leaves_the_global_rng_alone():
    image = torch.rand(1, 32, 16)
    torch.manual_seed(0)
    augment_image(image, build_transform(AugmentConfig()), seed=5)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_poisson_noise_is_unbiased_and_noisier_at_lower_counts():
    torch.manual_seed(0)
    flat = torch.full((1, 64, 64), 0.5)
    low = RandomPoissonNoise(peak=(50.0, 50.0))(flat)
    high = RandomPoissonNoise(peak=(5000.0, 5000.0))(flat)
    assert low.mean().item() == pytest.approx(0.5, abs=0.02)
    # Poisson: std of counts/peak = sqrt(x / peak)
    assert low.std().item() == pytest.approx((0.5 / 50) ** 0.5, rel=0.15)
    assert high.std().item() < low.std().item() / 5
    assert torch.equal(RandomPoissonNoise(p=0.0)(flat), flat)


def test_bad_poisson_range_fails_in_config():
    with pytest.raises(ValueError, match="poisson_peak"):
        AugmentConfig(poisson_peak=(100.0, 10.0))
