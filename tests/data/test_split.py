"""Specification of the patient-level, stratified, stable split."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonescan.data.split import assign_splits, patient_strata, split_manifest, split_metrics

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}
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
