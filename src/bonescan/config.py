"""params.yaml -> typed, validated, immutable config objects (one per stage).

Every knob of the pipeline lives in params.yaml; this module is the only place that parses it.
Unknown keys and ill-typed values fail loudly with the dotted key that is wrong, so a typo never
silently falls back to a default (nanoGPT's "typos fail" rule).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml is missing, unreadable, or holds an unknown or ill-typed key."""


class _Section(BaseModel):
    """Base of every config section: frozen, no extra keys, no silent type coercion of strings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


Size = tuple[int, int]  # (height, width) in pixels


class BaseConfig(_Section):
    """Settings shared by every stage."""

    seed: int = 42
    image_size: Size = (256, 96)  # (H, W) every dataset is resized to; whole-body views are tall
    classes: tuple[str, ...] = ("healthy", "metastasis", "benign")

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v: Size) -> Size:
        if min(v) < 8:
            raise ValueError(f"image_size must be at least 8x8 pixels, got {v}")
        return v


class PhantomConfig(_Section):
    """The embedded default cohort written by `bonescan phantoms`."""

    out_dir: str = "data/raw/phantoms"
    patients: int = Field(120, ge=1)
    chest_patients: int = Field(80, ge=0)
    seed: int = 2023
    bone_size: Size = (1024, 256)  # matrix of a real whole-body NM acquisition (pydicom-data NM1)
    chest_size: Size = (256, 256)
    class_proportions: dict[str, float] = {"healthy": 0.468, "metastasis": 0.364, "benign": 0.168}
    studies_per_patient: tuple[int, int] = (1, 3)
    counts_per_view: tuple[float, float] = (1.0e6, 4.0e6)  # real NM1 scan: ~3.5 M counts per view
    bad_files: bool = True

    @field_validator("class_proportions")
    @classmethod
    def _proportions_sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        total = sum(v.values())
        if not v or any(p < 0 for p in v.values()) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"class_proportions must be non-negative and sum to 1, got sum {total:.4f}")
        return v


DatasetFormat = Literal["dicom", "image_folder", "image_csv"]


class DatasetConfig(_Section):
    """One input dataset: where its raw files are and where its ingested outputs go."""

    format: DatasetFormat = "dicom"
    raw_dir: str
    labels: str | None = None  # dicom: CSV accession_number,label; image_csv: filename,label[,patient_id]
    classes: tuple[str, ...]
    modalities: tuple[str, ...] = ("NM",)  # accepted DICOM Modality values; others are quarantined
    split_views: bool = True  # whole-body: anterior + posterior; chest: one view
    image_size: Size | None = None  # None -> base.image_size
    interim_dir: str  # anonymized DICOM (named by new SOPInstanceUID)
    out_dir: str  # decoded images/ and manifest.csv
    reports_dir: str  # quarantine.csv, phi_scan.json, ingest.json
    metrics_dir: str  # split.json (DVC metrics, committed to git: counts only, no identifiers)


class IngestConfig(_Section):
    """Decoding and preprocessing shared by all datasets."""

    mirror_posterior: bool = True  # flip posterior views so the patient's left is on the same side
    crop_threshold: float = Field(0.02, gt=0, lt=1)  # body mask: fraction of the robust maximum
    crop_margin: float = Field(0.02, ge=0, lt=0.5)  # margin around the body, fraction of the view
    intensity_percentile: float = Field(99.5, gt=50, le=100)  # counts above it saturate to white
    workers: int = Field(2, ge=1)  # processes
    chunksize: int = Field(4, ge=1)  # files handed to a worker at once
    image_extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")


class AnonymizeConfig(_Section):
    """PS3.15 Annex E Basic Profile + Retain Longitudinal Temporal Information, Modified Dates."""

    secret_env: str = "BONESCAN_SECRET"  # environment variable holding the key (takes precedence)
    secret_file: str = ".secrets/anonymize.key"  # git-ignored; `make demo` creates one
    allow_burned_in: bool = False  # BurnedInAnnotation=YES images are quarantined unless True
    max_date_shift_days: int = Field(365, ge=1)  # per-patient shift drawn from [-max, -1] days
    uid_root: str = "2.25."  # UUID-derived UIDs (PS3.5 B.2) need no registered root


class SplitConfig(_Section):
    """Patient-level, class-stratified, stable train/val/test split."""

    ratios: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
    seed: int = 42
    ledger_dir: str = "data/splits"  # persisted assignments keep existing patients where they are

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError(f"ratios needs exactly train, val, test; got {sorted(v)}")
        if any(r < 0 for r in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be non-negative and sum to 1, got {v}")
        return v


class Params(_Section):
    """The whole of params.yaml."""

    base: BaseConfig = BaseConfig()
    phantoms: PhantomConfig = PhantomConfig()
    datasets: dict[str, DatasetConfig]
    ingest: IngestConfig = IngestConfig()
    anonymize: AnonymizeConfig = AnonymizeConfig()
    split: SplitConfig = SplitConfig()

    @model_validator(mode="after")
    def _target_dataset_exists(self) -> Params:
        if "target" not in self.datasets:
            raise ValueError("datasets needs a 'target' entry (the bone scans to classify)")
        return self

    def dataset(self, name: str) -> DatasetConfig:
        """The named dataset, with a clear error listing the configured ones."""
        try:
            return self.datasets[name]
        except KeyError:
            raise ConfigError(f"unknown dataset {name!r}; params.yaml defines {sorted(self.datasets)}") from None

    def image_size(self, dataset: str) -> Size:
        return self.dataset(dataset).image_size or self.base.image_size


def _describe(err: dict, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        hint = _closest_key(err["loc"], model)
        if hint:
            msg += f" (did you mean {hint!r}?)"
    return f"{loc}: {msg}" + ("" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})")


def _closest_key(loc: tuple, model: type[BaseModel]) -> str | None:
    """Walk the model along `loc` and suggest the nearest valid field name for its last part."""
    current: object = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]  # `part` is a key of a mapping such as `datasets`
        else:
            return None
    if get_origin(current) is dict:
        current = get_args(current)[1]
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return None
    matches = difflib.get_close_matches(str(loc[-1]), list(current.model_fields), n=1)
    return matches[0] if matches else None


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e, Params) for e in exc.errors())
        raise ConfigError(f"{source}: invalid parameters:\n  {problems}") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw or {}, source=str(path))
