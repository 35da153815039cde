"""Specification of predefined splits end to end: a `split` column in the labels file (an official test
set) reaches the manifest through ingest and is honoured by the split stage, patient by patient."""

from __future__ import annotations

import pandas as pd
import pytest

from bonescan.config import AnonymizeConfig, IngestConfig, SplitConfig
from bonescan.data.manifest import read_manifest
from bonescan.data.split import PredefinedSplitError, run_split
from bonescan.ingest import ingest_dataset
from tests.chest_sets import CHEST_CLASSES, copy_chest_set
from tests.test_ingest import SECRET, dataset_config


def _ingest(tmp_path, table: pd.DataFrame):
    raw = tmp_path / "raw"
    table.to_csv(raw / "labels.csv", index=False)
    dataset = dataset_config(tmp_path, format="image_csv", labels=str(raw / "labels.csv"), classes=CHEST_CLASSES,
                             split_views=False)  # fmt: skip
    ingest_dataset("source", dataset, IngestConfig(workers=1), AnonymizeConfig(), (32, 32), SECRET)
    return dataset


def test_a_split_column_in_the_labels_file_fixes_those_patients_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = copy_chest_set(tmp_path / "raw", per_class=4)
    official = table["filename"].iloc[::3].tolist()  # an official test set of every third image
    table["split"] = ["test" if name in official else "" for name in table["filename"]]
    dataset = _ingest(tmp_path, table)
    result = run_split("source", dataset, SplitConfig(ledger_dir="ledger"), secret=SECRET)
    manifest = read_manifest(tmp_path / "out/processed/manifest.csv")
    ingested = read_manifest(tmp_path / "out/interim/manifest.csv")
    fixed = set(ingested.loc[ingested["split"] == "test", "patient_id"])
    assert fixed and set(manifest.loc[manifest["patient_id"].isin(fixed), "split"]) == {"test"}
    assert result.metrics["predefined_patients"] == len(fixed)


def test_a_patient_in_two_predefined_splits_is_an_error_naming_its_pseudonym(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = copy_chest_set(tmp_path / "raw", per_class=2)
    table["patient_id"] = "same-patient"
    table["split"] = ["train", "test"] + [""] * (len(table) - 2)
    dataset = _ingest(tmp_path, table)
    pseudonym = read_manifest(tmp_path / "out/interim/manifest.csv")["patient_id"].iloc[0]
    with pytest.raises(PredefinedSplitError, match=pseudonym):
        run_split("source", dataset, SplitConfig(ledger_dir="ledger"), secret=SECRET)
