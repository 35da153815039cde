"""Patient-level, class-stratified, stable train/val/test split.

Three properties matter for small medical datasets and are guaranteed here:

* patient level: every image of a patient lands in one split, so no anatomy leaks into the test set;
* stratified: within each patient stratum (the patient's rarest label) split counts stay within one
  patient of the configured ratios, so a 17 % minority class still reaches val and test;
* stable: assignments are kept in a ledger of pseudonymous patient ids; patients already in it never
  move when new patients arrive, and new patients fill each stratum's deficits in a keyed-hash order.

The pseudonyms are keyed by the anonymization key, so a ledger is only meaningful under the key that
made it: each row records a fingerprint of that key (an HMAC of a fixed label, never the key), and a
ledger made under another key is refused instead of silently re-splitting every patient.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bonescan.config import DatasetConfig, SplitConfig
from bonescan.data.manifest import read_manifest, write_manifest
from bonescan.runtime import atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LEDGER_COLUMNS = ["patient_id", "split", "stratum", "key_fingerprint"]
_LEGACY_COLUMNS = LEDGER_COLUMNS[:3]  # ledgers written before key fingerprints were recorded
_FINGERPRINT_LABEL = b"bonescan split ledger: anonymization key fingerprint v1"
UNKEYED = "unkeyed"  # fingerprint of datasets whose pseudonyms take no key (image folders)


class LedgerKeyError(ValueError):
    """The split ledger was made under another anonymization key than the one given."""


class PredefinedSplitError(ValueError):
    """A predefined split puts one patient in two splits, names an unknown split, or contradicts the ledger."""


def predefined_patient_splits(image_splits: pd.DataFrame) -> dict[str, str]:
    """patient_id -> split from per-image predefined splits (an official test set, say).

    Args:
        image_splits: rows with `patient_id` and `split`; an empty split means "not predefined".
            A patient with some images predefined and others not takes the predefined split.

    Raises:
        PredefinedSplitError: a patient has images in two predefined splits (named by pseudonym).
    """
    given = image_splits[image_splits["split"].fillna("").astype(str) != ""]
    per_patient = given.groupby("patient_id")["split"].unique()
    straddling = sorted(str(p) for p, splits in per_patient.items() if len(splits) > 1)
    if straddling:
        detail = "; ".join(f"{p}: {sorted(per_patient[p])}" for p in straddling[:10])
        raise PredefinedSplitError(
            f"{len(straddling)} patient(s) in two predefined splits (a patient-level split cannot honour "
            f"that): {detail}"
        )
    return {str(p): str(splits[0]) for p, splits in per_patient.items()}


def key_fingerprint(secret: bytes | None) -> str:
    """16 hex digits identifying an anonymization key: HMAC-SHA256 of a fixed label under it.

    It tells keys apart without revealing anything about them (the key is never stored or logged).
    """
    if not secret:
        return UNKEYED
    return hmac.new(secret, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def check_ledger_key(ledger: pd.DataFrame, fingerprint: str, where: str = "the split ledger") -> None:
    """Refuse a ledger any of whose rows was written under another key than `fingerprint`.

    Rows without a fingerprint (ledgers older than this check) pass; they are adopted by the caller.

    Raises:
        LedgerKeyError: naming both fingerprints and what to do.
    """
    if "key_fingerprint" not in ledger.columns:
        return
    recorded = set(ledger["key_fingerprint"].dropna().astype(str)) - {"", "nan"}
    other = sorted(recorded - {fingerprint})
    if other:
        raise LedgerKeyError(
            f"{where} was made under another anonymization key (fingerprint {', '.join(other)}; this key: "
            f"{fingerprint}). Its pseudonymous patient ids do not match this key's, so extending it would "
            "move patients between splits (test patients into train). Use the key the ledger was made "
            "with, or, to start a new split on purpose, move the ledger aside and re-run."
        )


@dataclass(frozen=True)
class SplitResult:
    manifest: pd.DataFrame
    ledger: pd.DataFrame
    metrics: dict[str, int]


def patient_strata(manifest: pd.DataFrame) -> dict[str, str]:
    """Stratum of each patient: the rarest (by image count) of the labels among their images.

    Stratifying on the rarest label keeps minority-class patients spread over all splits even when
    the same patient also has studies of a common class.
    """
    frequency = manifest["label"].value_counts()
    rarest = manifest.assign(_freq=manifest["label"].map(frequency)).sort_values(["_freq", "label"])
    return rarest.groupby("patient_id", sort=True)["label"].first().to_dict()


def _hash_order(patient_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def assign_splits(
    strata: Mapping[str, str],
    ratios: Mapping[str, float],
    seed: int,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every patient to a split.

    Args:
        strata: patient_id -> stratum label.
        ratios: split name -> fraction (sums to 1).
        seed: orders new patients (keyed hash), so the result is deterministic.
        previous: patient_id -> split already decided; these patients keep their split.

    Returns:
        patient_id -> split for every patient in `strata` (and nothing else).
    """
    previous = dict(previous or {})
    unknown = set(previous.values()) - set(ratios)
    if unknown:
        raise ValueError(f"split ledger names unknown splits {sorted(unknown)}; configured: {sorted(ratios)}")
    # Ties go to the larger ratio, then to the fixed split order, so the result never depends on dict order.
    preference = sorted(ratios, key=lambda s: (-ratios[s], SPLITS.index(s) if s in SPLITS else 99, s))
    assignment: dict[str, str] = {}
    by_stratum: dict[str, list[str]] = {}
    for patient, stratum in strata.items():
        by_stratum.setdefault(stratum, []).append(patient)

    for stratum in sorted(by_stratum):
        patients = by_stratum[stratum]
        counts = Counter({s: 0 for s in ratios})
        kept = [p for p in patients if p in previous]
        for p in kept:
            assignment[p] = previous[p]
            counts[previous[p]] += 1
        new = sorted((p for p in patients if p not in previous), key=lambda p: _hash_order(p, seed))
        for p in new:
            total = sum(counts.values()) + 1
            # largest deficit between the ideal share of `total` patients and what the split already has
            chosen = max(preference, key=lambda s: ratios[s] * total - counts[s])
            assignment[p] = chosen
            counts[chosen] += 1
    return assignment


def split_metrics(manifest: pd.DataFrame, classes: Iterable[str]) -> dict[str, int]:
    """Flat DVC metrics: images and patients per split and class, and the leakage check."""
    metrics: dict[str, int] = {}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        metrics[f"{split}_images"] = len(part)
        metrics[f"{split}_patients"] = int(part["patient_id"].nunique())
        for cls in classes:
            metrics[f"{split}_{cls}_images"] = int((part["label"] == cls).sum())
    splits_per_patient = manifest.groupby("patient_id")["split"].nunique()
    metrics["patients_in_two_splits"] = int((splits_per_patient > 1).sum())
    metrics["unassigned_images"] = int(manifest["split"].isna().sum() + (manifest["split"] == "").sum())
    return metrics


def split_manifest(
    manifest: pd.DataFrame,
    ratios: Mapping[str, float],
    seed: int,
    ledger: pd.DataFrame | None = None,
    fingerprint: str = UNKEYED,
    predefined: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pure core of the stage: (manifest with `split` filled, updated ledger).

    Patients in the ledger but absent from the manifest stay in the ledger, so a patient who returns
    later returns to the same split.

    Args:
        fingerprint: `key_fingerprint` of the key the manifest's pseudonyms were made with; written
            on new ledger rows and on rows that had none.
        predefined: patient_id -> split fixed by the dataset (`predefined_patient_splits`); these
            patients take that split (and enter the ledger), the others fill each stratum's deficits.

    Raises:
        LedgerKeyError: the ledger records another key's fingerprint.
        PredefinedSplitError: an unknown split, or a patient the ledger already put elsewhere.
    """
    ledger = ledger.copy() if ledger is not None else pd.DataFrame(columns=LEDGER_COLUMNS)
    check_ledger_key(ledger, fingerprint)
    predefined = dict(predefined or {})
    unknown = sorted(set(predefined.values()) - set(ratios))
    if unknown:
        raise PredefinedSplitError(f"predefined split names unknown splits {unknown}; configured: {sorted(ratios)}")
    recorded = dict(zip(ledger["patient_id"].astype(str), ledger["split"].astype(str), strict=True))
    moved = sorted(p for p, split in predefined.items() if p in recorded and recorded[p] != split)
    if moved:
        detail = "; ".join(f"{p}: ledger {recorded[p]}, predefined {predefined[p]}" for p in moved[:10])
        raise PredefinedSplitError(
            f"{len(moved)} patient(s) have a predefined split other than the one the ledger gave them "
            f"(patients never move): {detail}"
        )
    if "key_fingerprint" not in ledger.columns:
        ledger["key_fingerprint"] = ""
    unrecorded = ledger["key_fingerprint"].isna() | ledger["key_fingerprint"].astype(str).isin(["", "nan"])
    if unrecorded.any():
        log.warning(
            "%d split ledger rows carry no key fingerprint (written before it was recorded); "
            "they are taken to belong to this key from now on",
            int(unrecorded.sum()),
        )
        ledger.loc[unrecorded, "key_fingerprint"] = fingerprint
    previous = dict(zip(ledger["patient_id"].astype(str), ledger["split"].astype(str), strict=True))
    strata = patient_strata(manifest)
    fixed = {**{p: split for p, split in predefined.items() if p in strata}, **previous}
    assignment = assign_splits(strata, ratios, seed, fixed)

    out = manifest.copy()
    out["split"] = out["patient_id"].map(assignment)

    new_rows = pd.DataFrame(
        [(p, assignment[p], strata[p], fingerprint) for p in sorted(assignment) if p not in previous],
        columns=LEDGER_COLUMNS,
    )
    parts = [df for df in (ledger[LEDGER_COLUMNS], new_rows) if len(df)]
    updated = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=LEDGER_COLUMNS)
    return out, updated.sort_values("patient_id", ignore_index=True)


def write_ledger(ledger: pd.DataFrame, path: Path) -> None:
    """Write the ledger atomically: a temp file in the same folder, then os.replace (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ledger[LEDGER_COLUMNS].to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_split(name: str, dataset: DatasetConfig, cfg: SplitConfig, *, secret: bytes | None) -> SplitResult:
    """The `split` stage: ingested manifest + ledger -> split manifest, ledger, metrics.

    Args:
        secret: the anonymization key the dataset was ingested with (None for unkeyed image
            datasets); only its `key_fingerprint` is used and stored.

    Raises:
        LedgerKeyError: the ledger was made under another key.
    """
    ingested = read_manifest(Path(dataset.interim_dir) / "manifest.csv")
    ledger_path = Path(cfg.ledger_dir) / f"{name}.csv"
    ledger = pd.read_csv(ledger_path, dtype=str, keep_default_na=False) if ledger_path.is_file() else None
    if ledger is not None and list(ledger.columns) not in (LEDGER_COLUMNS, _LEGACY_COLUMNS):
        raise ValueError(f"{ledger_path}: expected columns {LEDGER_COLUMNS}, found {list(ledger.columns)}")
    if ledger is not None:
        check_ledger_key(ledger, key_fingerprint(secret), str(ledger_path))

    predefined = predefined_patient_splits(ingested)  # ingest fills `split` from a dataset's own split
    manifest, updated = split_manifest(
        ingested, cfg.ratios, cfg.seed, ledger, key_fingerprint(secret), predefined=predefined
    )
    metrics = split_metrics(manifest, dataset.classes)
    metrics["predefined_patients"] = len(predefined)
    metrics["ledger_patients_kept"] = 0 if ledger is None else int(ledger["patient_id"].isin(manifest["patient_id"]).sum())
    if metrics["patients_in_two_splits"]:
        raise RuntimeError(f"{metrics['patients_in_two_splits']} patients straddle splits: the split is broken")

    write_manifest(manifest, Path(dataset.out_dir) / "manifest.csv")
    write_ledger(updated, ledger_path)
    metrics_path = Path(dataset.metrics_dir) / "split.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_path, metrics)
    log.info("split %s: %s", name, {s: metrics[f"{s}_patients"] for s in SPLITS})
    return SplitResult(manifest, updated, metrics)
