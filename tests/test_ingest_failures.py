"""Specification of how ingest fails loudly and cleans up: a run that writes nothing (or rejects nearly
everything) is an error naming the commonest reasons; image-set names also resolve beside the labels
file; patient ids of image sets are keyed; a killed run leaves no stale temp file (and no orphan worker:
tests/test_parallel.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bonescan.config import AnonymizeConfig, IngestConfig
from bonescan.data.manifest import read_manifest
from bonescan.ingest import IngestFailedError, ingest_dataset
from tests.chest_sets import copy_chest_set
from tests.test_ingest import SECRET, dataset_config

CLASSES = ("normal", "covid19", "viral_pneumonia")


def _chest_set(root: Path) -> pd.DataFrame:
    """raw/images/<file>.png, labels naming the files relative to images/ (the shared set's layout)."""
    return copy_chest_set(root / "images", labels=root.parent / "labels_elsewhere.csv")  # outside raw_dir


def _ingest(tmp: Path, labels: Path, secret: bytes | None = SECRET, **ingest):
    dataset = dataset_config(tmp, format="image_csv", labels=str(labels), classes=CLASSES, split_views=False)
    return ingest_dataset("source", dataset, IngestConfig(workers=1, **ingest), AnonymizeConfig(), (32, 32), secret)


def test_an_ingest_that_writes_no_image_fails_naming_the_commonest_reason(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _chest_set(tmp_path / "raw")
    table.to_csv(tmp_path / "labels_elsewhere.csv", index=False)  # names relative to images/, not to raw_dir
    with pytest.raises(IngestFailedError, match=r"6 files -> 0 images.*no_label: 6.*datasets\.source\.raw_dir"):
        _ingest(tmp_path, tmp_path / "labels_elsewhere.csv")
    assert (tmp_path / "out/reports/quarantine.csv").is_file()  # the reasons per file are written first


def test_names_in_the_labels_file_also_resolve_relative_to_the_labels_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _chest_set(tmp_path / "raw")
    table.to_csv(tmp_path / "raw" / "images" / "labels.csv", index=False)
    summary = _ingest(tmp_path, tmp_path / "raw" / "images" / "labels.csv")
    assert summary.images_written == len(table) and summary.quarantined == 0


def test_rejecting_more_than_the_allowed_fraction_fails_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _chest_set(tmp_path / "raw")
    table.iloc[:2].to_csv(tmp_path / "raw" / "images" / "labels.csv", index=False)  # 4 of 6 images unlabelled
    with pytest.raises(IngestFailedError, match="no_label: 4"):
        _ingest(tmp_path, tmp_path / "raw" / "images" / "labels.csv", max_quarantined_fraction=0.5)
    assert _ingest(tmp_path, tmp_path / "raw" / "images" / "labels.csv", max_quarantined_fraction=0.9).images_written == 2


def test_patient_ids_of_image_sets_are_keyed_and_a_key_is_required(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _chest_set(tmp_path / "raw")
    labels = tmp_path / "raw" / "images" / "labels.csv"
    table.to_csv(labels, index=False)
    _ingest(tmp_path, labels)
    first = set(read_manifest(tmp_path / "out/interim/manifest.csv")["patient_id"])
    _ingest(tmp_path, labels, secret=b"another-key-0123456789abcdefghij")
    second = set(read_manifest(tmp_path / "out/interim/manifest.csv")["patient_id"])
    assert first.isdisjoint(second)  # the key decides the pseudonyms, not the file name alone
    with pytest.raises(ValueError, match="needs the anonymization secret"):
        _ingest(tmp_path, labels, secret=None)


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = _chest_set(tmp_path / "raw")
    table.to_csv(tmp_path / "raw" / "images" / "labels.csv", index=False)
    stale = tmp_path / "out/processed/images/.deadbeef.png.4242.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a png")
    _ingest(tmp_path, tmp_path / "raw" / "images" / "labels.csv")
    assert not stale.exists()
