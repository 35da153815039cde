"""The DVC pipeline as a user runs it: `dvc repro` on a tiny phantom cohort, in a scratch project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

TINY = {
    "base": {"image_size": [64, 32]},
    "phantoms": {"patients": 12, "chest_patients": 8},
    "ingest": {"workers": 2},
    "gan": {
        "model": {"image_size": [32, 16], "z_dim": 16, "base_channels": 4},
        "train": {"batch_size": 4, "sample_every": 1, "samples_per_class": 2},
        "pretrain": {"epochs": 1},
        "finetune": {"epochs": 1},
        "quality": {"samples_per_class": 4, "classifier_epochs": 1},
    },
    "augment": {"factor": 2, "mode": "offline"},  # the written copies are what these tests check
    "clf": {
        "model": "soft_threshold_net",
        "pretrain": {"epochs": 1, "batch_size": 8},
        "finetune": {"epochs": 2, "batch_size": 8},
    },
    "evaluate": {"n_boot": 50, "gradcam_per_class": 1},
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def _run(args: list[str], cwd: Path) -> str:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "BONESCAN_SECRET": "e2e-test-key-0123456789"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch copy of the project (code, dvc.yaml, tiny params) with its own git and DVC repo."""
    path = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], path)
    _run(["dvc", "init", "-q"], path)
    _run(["dvc", "config", "core.analytics", "false"], path)
    _run(["dvc", "repro"], path)
    return path


def test_repro_builds_the_manifest_with_every_split(project):
    manifest = pd.read_csv(project / "data/processed/manifest.csv", dtype=str, keep_default_na=False)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert set(manifest["view"]) == {"anterior", "posterior"}
    assert all((project / p).is_file() for p in manifest["path"])
    source = pd.read_csv(project / "data/processed/source/manifest.csv", dtype=str, keep_default_na=False)
    assert set(source["view"]) == {"single"}


def test_repro_reports_no_phi_and_no_straddling_patient(project):
    assert json.loads((project / "reports/phi_scan.json").read_text())["leaks"] == 0
    assert json.loads((project / "metrics/split.json").read_text())["patients_in_two_splits"] == 0


def test_bad_files_are_quarantined_with_a_reason(project):
    quarantine = pd.read_csv(project / "reports/quarantine.csv", dtype=str)
    assert len(quarantine) >= 5
    assert quarantine["reason"].str.len().min() > 0


def test_no_identifying_value_reaches_the_manifest(project):
    raw_labels = pd.read_csv(project / "data/raw/phantoms/bone/labels.csv", dtype=str)
    manifest_text = (project / "data/processed/manifest.csv").read_text()
    assert not any(acc in manifest_text for acc in raw_labels["accession_number"])


def test_generated_and_augmented_images_only_join_the_training_split(project):
    augmented = pd.read_csv(project / "data/augmented/manifest.csv", dtype=str, keep_default_na=False)
    derived = augmented[(augmented["synthetic"] == "true") | augmented["source"].str.startswith("augment:")]
    assert len(derived) > 0
    assert set(derived["split"]) == {"train"}
    real = pd.read_csv(project / "data/processed/manifest.csv", dtype=str, keep_default_na=False)
    train_ids = set(real.loc[real["split"] == "train", "image_id"])
    parents = derived.loc[derived["source"].str.startswith("augment:"), "source"].str.removeprefix("augment:")
    assert set(parents) <= train_ids | set(derived["image_id"])


def test_gan_quality_report_covers_both_architectures(project):
    report = json.loads((project / "reports/gan_quality.json").read_text())
    assert set(report["archs"]) == {"mu_acgan", "acgan"}
    assert (project / "reports/gan_quality.md").is_file()


def test_evaluation_reports_metrics_with_intervals_on_real_test_images(project):
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    assert metrics["macro_f1_ci_low"] <= metrics["macro_f1"] <= metrics["macro_f1_ci_high"]
    assert (project / "reports/eval/confusion_matrix.png").is_file()


def test_repro_registers_the_classifier_and_records_the_decision(project):
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert promotion["registered_model"] == "bonescan-classifier"
    assert promotion["aliases_after"]["challenger"] == promotion["version"]
    assert (project / "reports/model_card.md").is_file()


def test_repro_ends_with_the_offline_html_report_of_every_stage(project):
    html = (project / "reports/index.html").read_text()
    assert "<title>bonescan pipeline report</title>" in html
    assert 'class="not-run"' not in html, "every stage ran, so every section has content"
    assert "http://" not in html and "https://" not in html and "<script" not in html
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert {"ece", "ece_ci_low", "brier", "brier_ci_high"} <= set(metrics)
    assert sorted(p.stem for p in (project / "plots/eval/roc").glob("*.csv")) == sorted(
        yaml.safe_load((project / "params.yaml").read_text())["datasets"]["target"]["classes"]
    )


def test_second_repro_does_nothing(project):
    out = _run(["dvc", "repro"], project)
    assert "Running stage" not in out
    assert "up to date" in _run(["dvc", "status"], project)


def test_changed_split_parameter_reruns_only_the_split(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["split"]["seed"] = params["split"]["seed"] + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], project)
    assert "Running stage 'split@target'" in out
    assert "Running stage 'ingest" not in out
    assert "Running stage 'phantoms'" not in out
