"""The image manifest: one row per image, the table every stage after ingest reads.

Columns (in this order): image_id, patient_id, study_id, view, label, split, synthetic, source, path.
`patient_id` and `study_id` are pseudonymous; `split` is empty until the split stage fills it;
`synthetic` marks GAN-generated images; `path` is relative to the project root. Reading validates the
schema, so a stage never trains on a table with a missing column or a duplicated image.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path
from types import TracebackType

import pandas as pd

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_id",
    "view",
    "label",
    "split",
    "synthetic",
    "source",
    "path",
)
VIEWS: frozenset[str] = frozenset({"anterior", "posterior", "single"})
SPLITS: frozenset[str] = frozenset({"", "train", "val", "test"})
_REQUIRED = ("image_id", "patient_id", "study_id", "view", "label", "source", "path")  # never empty
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


class ManifestError(ValueError):
    """A manifest does not follow the schema (columns, empty ids, duplicate images, bad values)."""


@dataclass(frozen=True)
class ManifestRow:
    """One image; field order is the column order of the CSV."""

    image_id: str
    patient_id: str
    study_id: str
    view: str
    label: str
    split: str = ""
    synthetic: bool = False
    source: str = ""
    path: str = ""

    def as_csv(self) -> list[str]:
        return [_format(v) for v in astuple(self)]


def _format(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ManifestError(f"synthetic must be true/false, got {value!r}")


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    """Check the schema and normalise dtypes; return the manifest with columns in canonical order.

    Raises:
        ManifestError: naming the first problem found (missing/unknown column, empty required value,
            duplicate image_id, unknown view or split, non-boolean synthetic).
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    if missing or extra:
        raise ManifestError(
            f"{source}: expected columns {list(MANIFEST_COLUMNS)}; missing {missing}, unknown {extra}"
        )
    out = df.loc[:, list(MANIFEST_COLUMNS)].copy()
    for column in MANIFEST_COLUMNS:
        if column == "synthetic":
            out[column] = [_parse_bool(v) for v in out[column]]
            out[column] = out[column].astype(bool)
        else:
            out[column] = out[column].fillna("").astype(str)
    for column in _REQUIRED:
        empty = out[column].str.strip() == ""
        if empty.any():
            raise ManifestError(
                f"{source}: {int(empty.sum())} row(s) with an empty {column} (first at row {int(empty.idxmax())})"
            )
    duplicated = out["image_id"].duplicated()
    if duplicated.any():
        raise ManifestError(
            f"{source}: image_id {out['image_id'][duplicated].iloc[0]!r} appears more than once"
        )
    bad_views = sorted(set(out["view"]) - VIEWS)
    if bad_views:
        raise ManifestError(f"{source}: unknown view(s) {bad_views}; allowed {sorted(VIEWS)}")
    bad_splits = sorted(set(out["split"]) - SPLITS)
    if bad_splits:
        raise ManifestError(
            f"{source}: unknown split(s) {bad_splits}; allowed {sorted(SPLITS - {''})} or empty"
        )
    return out.reset_index(drop=True)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load and validate a manifest CSV (all columns str except `synthetic`: bool; empty split is "")."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run `bonescan ingest` first)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    return validate_manifest(df, source=str(path))


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and the right columns and dtypes."""
    return validate_manifest(pd.DataFrame({c: pd.Series(dtype=str) for c in MANIFEST_COLUMNS}))


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write atomically (temp file + rename): readers never see a half-written manifest."""
    path = Path(path)
    valid = validate_manifest(df, source=str(path))
    with ManifestWriter(path) as writer:
        writer.write_many(ManifestRow(**row) for row in valid.to_dict(orient="records"))
    return path


class ManifestWriter:
    """Stream rows to a manifest CSV as they are produced; the file appears atomically on close.

    Memory stays flat however many images are written. On an exception inside the `with` block the
    temporary file is removed and any existing manifest at `path` is left untouched.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = 0
        self._tmp: Path | None = None
        self._file = None
        self._csv = None

    def __enter__(self) -> ManifestWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = self._tmp.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(MANIFEST_COLUMNS)
        return self

    def write(self, row: ManifestRow) -> None:
        self._csv.writerow(row.as_csv())
        self.rows += 1

    def write_many(self, rows: Iterable[ManifestRow]) -> None:
        for row in rows:
            self.write(row)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
