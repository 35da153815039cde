"""Patient-level cross-validation folds, for ensembles whose members each hold one fold out.

The train/val/test split (`bonescan split`, `data/split.py`) is a stage; these folds are drawn at
training time inside train + val and are never written, so they need no ledger: the same rows and
seed give the same folds.
"""

from __future__ import annotations

import logging
import warnings

import pandas as pd

__all__ = ["patient_folds"]

log = logging.getLogger(__name__)


def patient_folds(rows: pd.DataFrame, k: int, seed: int) -> list[frozenset[str]]:
    """The patients of `rows` in `k` class-stratified folds (scikit-learn's StratifiedGroupKFold).

    For cross-validation ensembles: every patient is in exactly one fold, and each fold's class mix
    stays near the whole's. Rows are ordered by image_id first, so the folds depend only on the rows
    and the seed.

    Raises:
        ValueError: fewer patients than folds, or no class with as many images as folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    ordered = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    patients = ordered["patient_id"].nunique()
    if patients < k:
        raise ValueError(f"{k} folds need at least {k} patients; the train and val splits have {patients}")
    largest = int(ordered["label"].value_counts().max())
    if largest < k:  # scikit-learn cannot stratify then
        raise ValueError(f"{k} folds need a class with at least {k} images; the largest has {largest}")
    per_class = ordered.groupby("label")["patient_id"].nunique()
    if per_class.min() < k:
        log.warning("class %r has %d patients for %d folds: some folds validate without it",
                    per_class.idxmin(), per_class.min(), k)  # fmt: skip
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn's own warning counts images; the one above counts patients
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        held_out = [held for _, held in splitter.split(ordered, ordered["label"], groups=ordered["patient_id"])]
    return [frozenset(ordered["patient_id"].iloc[held]) for held in held_out]
