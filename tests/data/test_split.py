"""Specification of the patient-level, stratified, stable split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonescan.config import DatasetConfig, SplitConfig
from bonescan.data.manifest import write_manifest
from bonescan.data.split import (
    LedgerKeyError,
    PredefinedSplitError,
    assign_splits,
    key_fingerprint,
    patient_strata,
    predefined_patient_splits,
    run_split,
    split_manifest,
    split_metrics,
)

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}
SPLITS_ = ("train", "val", "test")
CLASSES = ["healthy", "metastasis", "benign"]

# A cohort: per patient a list of study labels, each study with two views.
cohorts = st.dictionaries(
    keys=st.text(alphabet="0123456789abcdef", min_size=6, max_size=12),
    values=st.lists(st.sampled_from(CLASSES), min_size=1, max_size=3),
    min_size=1,
    max_size=60,
)
ratio_sets = st.sampled_from(
    [RATIOS, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 0.6, "val": 0.2, "test": 0.2}, {"train": 1.0, "val": 0.0, "test": 0.0}]
)


def make_manifest(cohort: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for patient, labels in cohort.items():
        for s, label in enumerate(labels):
            for view in ("anterior", "posterior"):
                rows.append(
                    {
                        "image_id": f"{patient}-{s}-{view}",
                        "patient_id": patient,
                        "study_id": f"{patient}-{s}",
                        "view": view,
                        "label": label,
                        "split": "",
                        "synthetic": False,
                        "source": "dicom:NM",
                        "path": f"images/{patient}-{s}-{view}.png",
                    }
                )
    return pd.DataFrame(rows)


@settings(max_examples=60, deadline=None)
@given(cohort=cohorts, ratios=ratio_sets, seed=st.integers(0, 2**16))
def test_no_patient_in_two_splits(cohort, ratios, seed):
    manifest, _ = split_manifest(make_manifest(cohort), ratios, seed)
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert split_metrics(manifest, CLASSES)["patients_in_two_splits"] == 0


@settings(max_examples=60, deadline=None)
@given(cohort=cohorts, ratios=ratio_sets, seed=st.integers(0, 2**16))
def test_every_image_gets_a_configured_split(cohort, ratios, seed):
    manifest, _ = split_manifest(make_manifest(cohort), ratios, seed)
    assert set(manifest["split"]) <= set(ratios)
    assert manifest["split"].notna().all()


@settings(max_examples=60, deadline=None)
@given(cohort=cohorts, ratios=ratio_sets, seed=st.integers(0, 2**16))
def test_each_stratum_is_within_one_patient_of_the_ratios(cohort, ratios, seed):
    strata = patient_strata(make_manifest(cohort))
    assignment = assign_splits(strata, ratios, seed)
    for stratum in set(strata.values()):
        patients = [p for p, s in strata.items() if s == stratum]
        counts = Counter(assignment[p] for p in patients)
        for split, ratio in ratios.items():
            assert abs(counts[split] - ratio * len(patients)) < 1 + 1e-9


@settings(max_examples=40, deadline=None)
@given(old=cohorts, new=cohorts, seed=st.integers(0, 2**16))
def test_adding_patients_later_does_not_move_existing_ones(old, new, seed):
    first, ledger = split_manifest(make_manifest(old), RATIOS, seed)
    grown = {**new, **old}  # old patients keep their studies; new ones arrive
    second, _ = split_manifest(make_manifest(grown), RATIOS, seed, ledger)
    before = first.groupby("patient_id")["split"].first()
    after = second.groupby("patient_id")["split"].first()
    assert (after[before.index] == before).all()


@settings(max_examples=30, deadline=None)
@given(cohort=cohorts, seed=st.integers(0, 2**16))
def test_split_is_deterministic_for_a_seed(cohort, seed):
    a, _ = split_manifest(make_manifest(cohort), RATIOS, seed)
    b, _ = split_manifest(make_manifest(cohort).sample(frac=1.0, random_state=1), RATIOS, seed)
    assert a.set_index("image_id")["split"].sort_index().equals(b.set_index("image_id")["split"].sort_index())


def test_minority_class_reaches_every_split():
    cohort = {f"p{i:03d}": ["benign"] for i in range(10)} | {f"q{i:03d}": ["healthy"] for i in range(50)}
    manifest, _ = split_manifest(make_manifest(cohort), RATIOS, seed=0)
    benign_splits = Counter(manifest[manifest["label"] == "benign"].groupby("patient_id")["split"].first())
    assert benign_splits == {"train": 7, "val": 1, "test": 2}


def test_patient_stratum_is_their_rarest_label():
    cohort = {f"h{i}": ["healthy"] for i in range(5)} | {"mixed": ["healthy", "benign"]}
    assert patient_strata(make_manifest(cohort))["mixed"] == "benign"


def test_ledger_patient_absent_now_is_remembered():
    _, ledger = split_manifest(make_manifest({"a1": ["healthy"], "b2": ["benign"]}), RATIOS, seed=3)
    _, later = split_manifest(make_manifest({"c3": ["healthy"]}), RATIOS, seed=3, ledger=ledger)
    assert set(later["patient_id"]) == {"a1", "b2", "c3"}


def test_ledger_with_unknown_split_is_rejected():
    ledger = pd.DataFrame({"patient_id": ["a1"], "split": ["holdout"], "stratum": ["healthy"]})
    with pytest.raises(ValueError, match="unknown splits"):
        split_manifest(make_manifest({"a1": ["healthy"]}), RATIOS, seed=0, ledger=ledger)


# --------------------------------------------------------------------------- the key behind the ledger

KEY_A = b"cohort-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = b"cohort-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbb"
COHORT = {f"p{i:02d}": [CLASSES[i % 3]] for i in range(24)}


def stage(tmp_path) -> tuple[DatasetConfig, SplitConfig]:
    """A dataset whose ingested manifest holds COHORT, and a split config with its ledger under tmp_path."""
    dataset = DatasetConfig(
        raw_dir=str(tmp_path / "raw"), classes=CLASSES, interim_dir=str(tmp_path / "interim"),
        out_dir=str(tmp_path / "processed"), reports_dir=str(tmp_path / "reports"),
        metrics_dir=str(tmp_path / "metrics"),
    )  # fmt: skip
    write_manifest(make_manifest(COHORT), tmp_path / "interim" / "manifest.csv")
    return dataset, SplitConfig(ratios=RATIOS, seed=0, ledger_dir=str(tmp_path / "splits"))


def test_key_fingerprint_tells_keys_apart_and_never_contains_the_key():
    a, b = key_fingerprint(KEY_A), key_fingerprint(KEY_B)
    assert a == key_fingerprint(KEY_A) and a != b and len(a) == 16
    assert KEY_A.hex()[:8] not in a and KEY_A.decode() not in a
    assert key_fingerprint(None) == "unkeyed"


def test_ledger_made_under_another_key_is_refused_and_left_untouched(tmp_path):
    dataset, cfg = stage(tmp_path)
    first = run_split("target", dataset, cfg, secret=KEY_A)
    ledger_path = tmp_path / "splits" / "target.csv"
    written = ledger_path.read_text()
    assert set(first.ledger["key_fingerprint"]) == {key_fingerprint(KEY_A)}
    assert KEY_A.decode() not in written
    with pytest.raises(LedgerKeyError, match="another anonymization key") as exc:
        run_split("target", dataset, cfg, secret=KEY_B)
    assert key_fingerprint(KEY_A) in str(exc.value) and key_fingerprint(KEY_B) in str(exc.value)
    assert str(ledger_path) in str(exc.value)
    assert ledger_path.read_text() == written
    again = run_split("target", dataset, cfg, secret=KEY_A)  # the right key extends it as before
    assert again.manifest["split"].tolist() == first.manifest["split"].tolist()


def test_split_manifest_refuses_to_extend_a_ledger_of_another_key():
    _, ledger = split_manifest(make_manifest(COHORT), RATIOS, 0, fingerprint=key_fingerprint(KEY_A))
    with pytest.raises(LedgerKeyError):
        split_manifest(make_manifest(COHORT), RATIOS, 0, ledger, fingerprint=key_fingerprint(KEY_B))


def test_ledger_without_fingerprints_is_adopted_by_the_current_key():
    legacy = pd.DataFrame({"patient_id": ["p00"], "split": ["test"], "stratum": ["healthy"]})
    manifest, ledger = split_manifest(make_manifest(COHORT), RATIOS, 0, legacy, key_fingerprint(KEY_A))
    assert manifest.loc[manifest["patient_id"] == "p00", "split"].unique().tolist() == ["test"]
    assert set(ledger["key_fingerprint"]) == {key_fingerprint(KEY_A)}


def test_a_failed_ledger_write_leaves_the_previous_ledger_whole(tmp_path, monkeypatch):
    dataset, cfg = stage(tmp_path)
    run_split("target", dataset, cfg, secret=KEY_A)
    ledger_path = tmp_path / "splits" / "target.csv"
    before = ledger_path.read_text()
    real_to_csv = pd.DataFrame.to_csv

    def dies_half_way(self, path, *args, **kwargs):
        if Path(path).parent == ledger_path.parent:  # only the ledger's write fails
            Path(path).write_text("patient_id,split\np0")  # a write cut off by a crash
            raise OSError("disk full")
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_half_way)
    write_manifest(make_manifest({**COHORT, "zz": ["benign"]}), tmp_path / "interim" / "manifest.csv")
    with pytest.raises(OSError, match="disk full"):
        run_split("target", dataset, cfg, secret=KEY_A)
    assert ledger_path.read_text() == before
    assert [p.name for p in ledger_path.parent.iterdir()] == ["target.csv"]  # no temp file left behind


# --------------------------------------------------------------------------- predefined (official) splits


def test_predefined_split_is_honoured_and_other_patients_fill_the_ratios():
    official_test = {f"p{i:02d}": "test" for i in range(8)}  # 8 of 24 patients: more than the 20 % test ratio
    manifest, ledger = split_manifest(make_manifest(COHORT), RATIOS, 0, predefined=official_test)
    per_patient = manifest.groupby("patient_id")["split"].unique()
    assert all(list(per_patient[p]) == ["test"] for p in official_test)
    others = manifest[~manifest["patient_id"].isin(official_test)]
    assert set(others["split"]) <= {"train", "val", "test"} and (others["split"] == "train").sum() > 0
    assert set(ledger.loc[ledger["patient_id"].isin(official_test), "split"]) == {"test"}  # remembered


def test_a_patient_in_two_predefined_splits_is_an_error_naming_the_pseudonym():
    images = make_manifest({"a1b2c3": ["healthy", "benign"], "d4e5f6": ["healthy"]})
    images["split"] = ["train", "train", "test", "test", "test", "test"]  # a1b2c3's two studies disagree
    with pytest.raises(PredefinedSplitError, match="a1b2c3") as exc:
        predefined_patient_splits(images)
    assert "d4e5f6" not in str(exc.value)


def test_predefined_split_that_contradicts_the_ledger_is_an_error():
    _, ledger = split_manifest(make_manifest(COHORT), RATIOS, 0)
    patient = ledger["patient_id"].iloc[0]
    other = next(s for s in SPLITS_ if s != ledger["split"].iloc[0])
    with pytest.raises(PredefinedSplitError, match=patient):
        split_manifest(make_manifest(COHORT), RATIOS, 0, ledger, predefined={patient: other})


def test_run_split_takes_the_ingested_split_column_as_predefined_and_counts_it(tmp_path):
    dataset, cfg = stage(tmp_path)
    ingested = make_manifest(COHORT)
    ingested.loc[ingested["patient_id"].isin(["p00", "p01"]), "split"] = "test"
    write_manifest(ingested, tmp_path / "interim" / "manifest.csv")
    result = run_split("target", dataset, cfg, secret=KEY_A)
    assert set(result.manifest.loc[result.manifest["patient_id"].isin(["p00", "p01"]), "split"]) == {"test"}
    assert json.loads((tmp_path / "metrics" / "split.json").read_text())["predefined_patients"] == 2
