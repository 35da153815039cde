"""Specification of the patient-level cross-validation folds (cross-validation ensembles)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bonescan.data.folds import patient_folds
from tests.data.test_split import cohorts, make_manifest


def _foldable(cohort: dict[str, list[str]]) -> bool:
    """Three patients or more, two of them sharing a label (so some class has three images to stratify)."""
    first_labels = [labels[0] for labels in cohort.values()]
    return len(cohort) >= 3 and len(set(first_labels)) < len(first_labels)


@settings(max_examples=30, deadline=None)
@given(cohort=cohorts.filter(_foldable), seed=st.integers(0, 2**16))
def test_cross_validation_folds_hold_every_patient_once_whatever_the_row_order(cohort, seed):
    manifest = make_manifest(cohort)
    folds = patient_folds(manifest, 3, seed)
    assert len(folds) == 3 and all(folds)
    assert sorted(p for fold in folds for p in fold) == sorted(cohort)  # each patient in exactly one fold
    assert patient_folds(manifest.sample(frac=1.0, random_state=1), 3, seed) == folds


def test_cross_validation_folds_keep_the_minority_class_in_every_fold():
    cohort = {f"b{i:02d}": ["benign"] for i in range(5)} | {f"h{i:02d}": ["healthy"] for i in range(20)}
    folds = patient_folds(make_manifest(cohort), 5, seed=0)
    assert [sum(p.startswith("b") for p in fold) for fold in folds] == [1] * 5
    assert patient_folds(make_manifest(cohort), 5, seed=1) != folds  # the seed draws the folds


def test_more_folds_than_patients_is_an_error_saying_both_counts():
    with pytest.raises(ValueError, match="5 folds need at least 5 patients; the train and val splits have 2"):
        patient_folds(make_manifest({"a": ["healthy"], "b": ["benign"]}), 5, seed=0)
    with pytest.raises(ValueError, match="3 folds need a class with at least 3 images; the largest has 2"):
        patient_folds(make_manifest({"a": ["healthy"], "b": ["benign"], "c": ["metastasis"]}), 3, seed=0)
