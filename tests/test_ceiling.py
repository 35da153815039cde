"""Specification of the phantom task's ceiling: lesion truth joined to the manifest through ingest's own
pseudonyms, features a reader would use, a visibility check at the model input, aggregates only out."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from bonescan.ceiling import FEATURE_NAMES, lesion_cnr, run_ceiling, study_features
from bonescan.config import (
    AnonymizeConfig,
    CeilingConfig,
    DatasetConfig,
    IngestConfig,
    PhantomConfig,
    SplitConfig,
)
from bonescan.data.split import run_split
from bonescan.dicom.anatomy import BONE_CLASSES
from bonescan.dicom.phantom import GROUND_TRUTH, write_cohort
from bonescan.ingest import ingest_dataset
from bonescan.summary import ceiling_line

SECRET = b"ceiling-test-secret-0123456789"
SIZE = (128, 48)


def _lesions(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["site", "x_mm", "y_rel", "contrast", "sigma_mm"])


def _feature(values: np.ndarray, name: str) -> float:
    return float(values[FEATURE_NAMES.index(name)])


def test_features_tell_a_symmetric_joint_pair_from_one_sided_axial_spots():
    knees = study_features(_lesions([("knee", -80.0, 0.70, 1.5, 8.0), ("knee", 82.0, 0.70, 1.4, 8.0)]), False)
    spots = study_features(_lesions([("rib", 90.0, 0.30, 2.0, 7.0), ("spine", 3.0, 0.35, 2.5, 9.0),
                                     ("pelvis", 60.0, 0.45, 3.0, 8.0)]), False)  # fmt: skip
    assert _feature(knees, "mirrored") == 1.0 and _feature(knees, "asymmetry") < 0.1
    assert _feature(spots, "mirrored") == 0.0 and _feature(spots, "asymmetry") == 1.0
    assert _feature(spots, "n_axial") == 3 and _feature(knees, "n_joint") == 2
    assert study_features(_lesions([]), False).sum() == 0  # a study without findings


def test_a_coarser_model_input_averages_more_counts_but_leaves_a_lesion_fewer_pixels():
    lesions = pd.DataFrame({"sigma_mm": [6.0], "anterior_own": [20.0], "anterior_other": [40.0],
                            "posterior_own": [30.0], "posterior_other": [60.0]})  # fmt: skip
    geometry = pd.Series(
        {"spacing_mm": 2.26, "view_rows": 1024, "view_cols": 256, "body_rows": 780, "body_cols": 230}
    )
    (fine, fine_px), (coarse, coarse_px) = (lesion_cnr(lesions, geometry, IngestConfig(), size)
                                            for size in ((512, 128), (128, 48)))  # fmt: skip
    assert coarse[0] > fine[0] > 0  # peak over Poisson noise per input pixel
    assert fine_px[0] > 2.5 * coarse_px[0]  # but the lesion shrinks to a pixel or two


@pytest.fixture(scope="module")
def ceiling_run(tmp_path_factory):
    """A small phantom cohort, ingested and split under a key, then `run_ceiling`."""
    tmp = tmp_path_factory.mktemp("ceiling")
    write_cohort(PhantomConfig(patients=30, chest_patients=0, bone_size=(512, 128), seed=3), tmp / "raw")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        dataset = DatasetConfig(raw_dir=str(tmp / "raw/bone"), labels=str(tmp / "raw/bone/labels.csv"),
                                classes=BONE_CLASSES, interim_dir="interim", out_dir="processed",
                                reports_dir="reports", metrics_dir="metrics")  # fmt: skip
        ingest_dataset("target", dataset, IngestConfig(workers=1), AnonymizeConfig(), SIZE, SECRET)
        run_split("target", dataset, SplitConfig(ledger_dir="splits"), secret=SECRET)
        metrics = run_ceiling(CeilingConfig(), tmp / "raw" / GROUND_TRUTH, tmp / "processed/manifest.csv",
                              BONE_CLASSES, IngestConfig(), SIZE, AnonymizeConfig(), SECRET)  # fmt: skip
    finally:
        os.chdir(cwd)
    return tmp, metrics


def test_every_ingested_study_finds_its_truth_through_the_keyed_pseudonyms(ceiling_run):
    tmp, metrics = ceiling_run
    manifest = pd.read_csv(tmp / "processed/manifest.csv", dtype=str)
    assert metrics["available"] == 1
    assert metrics["studies"] == manifest["study_id"].nunique()
    assert metrics["test_studies"] == manifest.loc[manifest["split"] == "test", "study_id"].nunique()
    assert 0.0 <= metrics["ceiling_balanced_accuracy"] <= 1.0
    assert 0.0 <= metrics["visible_fraction"] <= 1.0 and metrics["lesions"] > 0


def test_a_wrong_key_joins_nothing(ceiling_run):
    tmp, _ = ceiling_run
    with pytest.raises(ValueError):  # no study matches: nothing to fit
        run_ceiling(CeilingConfig(), tmp / "raw" / GROUND_TRUTH, tmp / "processed/manifest.csv", BONE_CLASSES,
                    IngestConfig(), SIZE, AnonymizeConfig(), b"another-key-0123456789abcdef")  # fmt: skip


def test_the_ceiling_metrics_hold_no_identifier(ceiling_run):
    tmp, metrics = ceiling_run
    truth = pd.read_csv(tmp / "raw" / GROUND_TRUTH, dtype=str, keep_default_na=False)
    manifest = pd.read_csv(tmp / "processed/manifest.csv", dtype=str)
    text = json.dumps(metrics)
    for value in {*truth["study_instance_uid"], *truth["accession_number"], *manifest["study_id"],
                  *manifest["patient_id"]}:  # fmt: skip
        assert value not in text


def test_without_ground_truth_there_is_no_ceiling(tmp_path):
    metrics = run_ceiling(CeilingConfig(), tmp_path / "none.csv", tmp_path / "manifest.csv", BONE_CLASSES,
                          IngestConfig(), SIZE, AnonymizeConfig(), SECRET)  # fmt: skip
    assert metrics == {"available": 0}


def test_summary_line_puts_the_model_against_the_ceiling(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"balanced_accuracy": 0.72}))
    (tmp_path / "ceiling.json").write_text(json.dumps({
        "available": 1, "ceiling_balanced_accuracy": 0.9, "ceiling_model": "forest",
        "ceiling_metastasis_vs_benign": 0.85, "visible_fraction": 0.97,
    }))  # fmt: skip
    line = ceiling_line(tmp_path / "eval.json", tmp_path / "ceiling.json")
    assert "model 0.720 of ceiling 0.900" in line and "80 %" in line
    assert "none" in ceiling_line(tmp_path / "eval.json", tmp_path / "missing.json")
