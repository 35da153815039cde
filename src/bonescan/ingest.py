"""The ingest stage: a raw folder (DICOM or PNG/JPEG) -> anonymized DICOM, model-ready PNGs and a manifest.

Per DICOM file, in a worker process: read (read-only) -> look the label up by the raw accession number
(in memory, before anonymization) -> anonymize -> write `{interim_dir}/dicom/<SOPInstanceUID>.dcm` ->
scan what was written for residual PHI -> decode the anonymized file -> views -> crop/resize -> PNGs.
Image datasets (`image_folder`: <class>/<file>.png, `image_csv`: a filename,label[,patient_id] table)
skip the DICOM steps and get keyed-hash patient ids.

Bad input never stops the stage and never disappears: every rejected file is a row of
`{reports_dir}/quarantine.csv` with a reason. Files stream through a process pool with a bounded number of
chunks in flight and come back in input order as small rows (never pixels), so memory stays flat as the
cohort grows and the output does not depend on the number of workers. Every output file is written
atomically (temp + rename) from deterministic names, so an interrupted run is repaired by running again.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import pandas as pd

from bonescan.config import AnonymizeConfig, DatasetConfig, IngestConfig, Preprocessing, Size
from bonescan.data.manifest import ManifestRow, ManifestWriter
from bonescan.dicom.anonymize import Anonymizer
from bonescan.dicom.phi_scan import PhiScanReport, scan_dataset
from bonescan.dicom.read import ImageReadError, read_dicom, write_png16
from bonescan.intake import (
    FileRejected,
    FileResult,
    IngestFailedError,
    QuarantineWriter,
    ResidualPHIError,
    anonymize_dicom,
    check_dicom,
    check_image_name,
    check_regular_file,
    dicom_inputs,
    image_pseudonym,
    iter_files,
    match_class,
    open_dicom,
    parse_patient_id,
    prepare_image,
    pseudonym,
    rejection,
    study_pseudonym,
)
from bonescan.parallel import ordered_map
from bonescan.progress import progress
from bonescan.runtime import atomic_write_json

log = logging.getLogger(__name__)

_CONFLICT = "\0conflict"  # label-map marker: the labels file gives one accession two labels


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did; `metrics()` is the flat dict written to ingest.json."""

    dataset: str
    files_seen: int
    images_written: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    labels: dict[str, int]
    patients: int
    studies: int
    phi_files: int
    phi_leaks: int
    seconds: float
    manifest: str
    quarantine: str

    def metrics(self) -> dict[str, int | float | str]:
        flat: dict[str, int | float | str] = {
            "dataset": self.dataset,
            "files_seen": self.files_seen,
            "images_written": self.images_written,
            "quarantined": self.quarantined,
            "patients": self.patients,
            "studies": self.studies,
            "phi_files": self.phi_files,
            "phi_leaks": self.phi_leaks,
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files_seen / self.seconds, 3) if self.seconds > 0 else 0.0,
        }
        flat.update({f"quarantined_{code}": n for code, n in sorted(self.quarantine_reasons.items())})
        flat.update({f"images_{label}": n for label, n in sorted(self.labels.items())})
        return flat




@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, sent once per worker process (the label map can be large)."""

    format: str
    raw_dir: Path
    dataset: DatasetConfig
    ingest: IngestConfig
    image_size: Size
    preprocessing: Preprocessing
    images_dir: Path
    dicom_dir: Path
    cwd: Path
    labels: dict[str, str] = field(default_factory=dict)  # accession (dicom) / relpath (image_csv) -> label
    splits: dict[str, str] = field(default_factory=dict)  # the same keys -> a predefined split (labels' `split`)
    patients: dict[str, str] = field(default_factory=dict)  # relpath -> raw patient id (image_csv)
    anonymizer: Anonymizer | None = None
    secret: bytes | None = None


# --------------------------------------------------------------------------- labels and ids


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: needs columns {list(required)}, missing {missing} (found {list(table.columns)})"
        )
    return table


def _label_map(keys: Iterable[str], labels: Iterable[str]) -> dict[str, str]:
    """key -> label; a key listed twice with different labels maps to a conflict marker."""
    out: dict[str, str] = {}
    for key, label in zip(keys, labels, strict=True):
        key, label = key.strip(), label.strip()
        if key:
            out[key] = label if out.get(key, label) == label else _CONFLICT
    return out


# --------------------------------------------------------------------------- per-file work


def _write_views(ctx: _Context, images, key: str, base: ManifestRow) -> tuple[ManifestRow, ...]:
    """Write each prepared view's PNG, return one manifest row per view (all or nothing)."""
    rows = []
    for index, (name, image) in enumerate(images):
        image_id = image_pseudonym(key, name, index)
        png = write_png16(image, ctx.images_dir / f"{image_id}.png")
        path = PurePosixPath(Path(os.path.relpath(png, ctx.cwd)).as_posix())
        rows.append(
            ManifestRow(
                image_id, base.patient_id, base.study_id, name, base.label, base.split, source=base.source,
                path=str(path),
            )
        )
    return tuple(rows)


def _dicom_label(ctx: _Context, ds) -> str:
    accession = str(ds.get("AccessionNumber", "") or "").strip()
    if not accession:
        raise FileRejected("no_label", "no label for this study (no accession number)")
    return _table_label(ctx, accession, "study")


def _table_label(ctx: _Context, key: str, what: str) -> str:
    """The labels file's class for `key` (an accession number or a file name), or a rejection."""
    label = ctx.labels.get(key)
    if label is None:
        raise FileRejected("no_label", f"no label for this {what}")
    if label == _CONFLICT:
        raise FileRejected("no_label", f"conflicting labels for this {what} in the labels file")
    if label not in ctx.dataset.classes:
        raise FileRejected(
            "unknown_label", f"label {label!r} is not one of the classes {list(ctx.dataset.classes)}"
        )
    return label


def _ingest_dicom(ctx: _Context, relpath: str) -> FileResult:
    identifying: frozenset[str] = frozenset()
    try:
        path = ctx.raw_dir / relpath
        check_regular_file(path, ctx.raw_dir, ctx.ingest.max_pixel_bytes)
        ds, identifying = open_dicom(path, ctx.ingest.max_pixel_bytes)
        return _ingest_dataset_file(ctx, relpath, ds, identifying)
    except Exception as exc:  # never let one file stop the stage; the type name carries no patient data
        if not isinstance(exc, FileRejected | ImageReadError):
            log.debug("unexpected %s while ingesting a file", type(exc).__name__)
        return rejection(relpath, exc, identifying)


def _ingest_dataset_file(ctx: _Context, relpath: str, ds, identifying: frozenset[str]) -> FileResult:
    modality = check_dicom(ds, ctx.preprocessing)  # a truncated transfer is reported as such, even unlabelled
    label = _dicom_label(ctx, ds)
    anonymized, hints = anonymize_dicom(ds, ctx.anonymizer)
    sop_uid = str(anonymized.SOPInstanceUID)
    target = ctx.dicom_dir / f"{sop_uid}.dcm"
    # Written under a temp name and renamed only when everything below succeeded: a failing file can
    # never remove or half-replace the output of another file that maps to the same instance.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        anonymized.save_as(tmp, enforce_file_format=True)
        written = read_dicom(tmp)
        leaks = scan_dataset(written, set(identifying), Path(os.path.relpath(target, ctx.cwd)).as_posix(), ds)
        if leaks:  # the output is dropped: nothing that still identifies the patient is kept
            return FileResult(
                relpath,
                code="phi_leak",
                reason=f"residual PHI after anonymization in {len(leaks)} place(s)",
                phi_scanned=True,
                leaks=tuple(leaks),
                identifying=identifying,
            )
        study_id = study_pseudonym(str(written.StudyInstanceUID))
        accession = str(ds.get("AccessionNumber", "") or "").strip()
        base = ManifestRow("", str(written.PatientID), study_id, "", label, ctx.splits.get(accession, ""),
                           source=f"dicom:{modality}")  # fmt: skip
        try:
            views = dicom_inputs(written, ctx.preprocessing, hints)  # decoded from what was scanned
        except ImageReadError as exc:  # scanned, then found undecodable: counted in phi_scan.json
            return FileResult(
                relpath, code=exc.code, reason=exc.reason, phi_scanned=True, identifying=identifying
            )
        rows = _write_views(ctx, views, sop_uid, base)
        os.replace(tmp, target)  # committed only now: a leak above leaves no output under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return FileResult(relpath, rows=rows, phi_scanned=True, identifying=identifying)


def _ingest_image(ctx: _Context, relpath: str) -> FileResult:
    path = PurePosixPath(relpath)
    try:
        check_regular_file(ctx.raw_dir / relpath, ctx.raw_dir, ctx.ingest.max_pixel_bytes)
        check_image_name(path, ctx.preprocessing)
        if ctx.format == "image_folder":
            if len(path.parts) < 2:
                raise FileRejected("no_label", "not inside a class folder")
            if any(part.lower() == "masks" for part in path.parts[1:-1]):
                raise FileRejected("mask", "segmentation mask, not an image")
            label = match_class(path.parts[0], ctx.dataset.classes)
            if label is None:
                raise FileRejected(
                    "no_label", f"class folder {path.parts[0]!r} matches none of {list(ctx.dataset.classes)}"
                )
            raw_patient = parse_patient_id(path.stem) or path.stem
        else:
            label = _table_label(ctx, relpath, "image")
            raw_patient = ctx.patients.get(relpath) or parse_patient_id(path.stem) or path.stem
        base = ManifestRow(
            "",
            "p" + pseudonym(raw_patient, ctx.secret),
            "s" + pseudonym(relpath, ctx.secret),
            "",
            label,
            ctx.splits.get(relpath, ""),
            source="image",
        )
        views = prepare_image(ctx.raw_dir / relpath, ctx.preprocessing)
        rows = _write_views(ctx, views, pseudonym(relpath, ctx.secret), base)
    except Exception as exc:  # one bad file never stops the stage
        return rejection(relpath, exc)
    return FileResult(relpath, rows=rows)


def _process(ctx: _Context, relpath: str) -> FileResult:
    return _ingest_dicom(ctx, relpath) if ctx.format == "dicom" else _ingest_image(ctx, relpath)


# --------------------------------------------------------------------------- parallel streaming

_WORKER_CONTEXT: _Context | None = None  # set once per worker process by the pool initializer


def _init_worker(ctx: _Context) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ctx


def _process_in_worker(relpath: str) -> FileResult:
    return _process(_WORKER_CONTEXT, relpath)


def _crashed(relpath: str) -> FileResult:
    return FileResult(
        relpath, code="worker_crash", reason="decoder crashed (worker process died on this file)"
    )


# --------------------------------------------------------------------------- the stage


def _is_within(path: Path, root: Path) -> bool:
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def _context(
    dataset: DatasetConfig,
    ingest: IngestConfig,
    anonymize: AnonymizeConfig,
    image_size: Size,
    secret: bytes | None,
) -> tuple[_Context, list[Path]]:
    raw_dir = Path(dataset.raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw_dir {raw_dir} is not a directory")
    for out in (dataset.interim_dir, dataset.out_dir, dataset.reports_dir):
        if _is_within(Path(out), raw_dir):
            raise ValueError(f"output folder {out} lies inside raw_dir {raw_dir}: raw inputs are read-only")
    labels_path = Path(dataset.labels) if dataset.labels else None
    common = dict(
        format=dataset.format,
        raw_dir=raw_dir.resolve(),
        dataset=dataset,
        ingest=ingest,
        image_size=tuple(image_size),
        preprocessing=Preprocessing(
            ingest=ingest, modalities=dataset.modalities, split_views=dataset.split_views, image_size=image_size
        ),
        images_dir=(Path(dataset.out_dir) / "images").resolve(),
        dicom_dir=(Path(dataset.interim_dir) / "dicom").resolve(),
        cwd=Path.cwd().resolve(),
    )
    if not secret:  # patient ids of image datasets are keyed too: a plain hash of a file name can be guessed
        raise ValueError(f"a {dataset.format} dataset needs the anonymization secret (see `bonescan secret`)")
    if dataset.format == "dicom":
        if labels_path is None:
            raise ValueError("a dicom dataset needs `labels` (CSV accession_number,label)")
        table = _read_table(labels_path, ("accession_number", "label"))
        ctx = _Context(
            **common,
            labels=_label_map(table["accession_number"], table["label"]),
            splits=_predefined_splits(table["accession_number"], table),
            anonymizer=Anonymizer(secret, anonymize),
            secret=secret,
        )
    elif dataset.format == "image_csv":
        if labels_path is None:
            raise ValueError("an image_csv dataset needs `labels` (CSV filename,label[,patient_id])")
        table = _read_table(labels_path, ("filename", "label"))
        names = [
            _listed_relpath(PurePosixPath(n.strip().replace("\\", "/")).as_posix(), raw_dir, labels_path.parent)
            for n in table["filename"]
        ]
        patients = dict(zip(names, table["patient_id"], strict=True)) if "patient_id" in table.columns else {}
        ctx = _Context(**common, labels=_label_map(names, table["label"]), patients=patients,
                       splits=_predefined_splits(names, table), secret=secret)  # fmt: skip
    else:
        ctx = _Context(**common, secret=secret)
    return ctx, [labels_path] if labels_path else []


def _predefined_splits(keys: Iterable[str], table: pd.DataFrame) -> dict[str, str]:
    """key -> split from the labels file's optional `split` column (an official or regulatory test set)."""
    if "split" not in table.columns:
        return {}
    splits = {str(k).strip(): str(s).strip().lower() for k, s in zip(keys, table["split"], strict=True)}
    return {k: s for k, s in splits.items() if k and s}


def _listed_relpath(name: str, raw_dir: Path, labels_dir: Path) -> str:
    """A labels-file name as a path relative to raw_dir: as given, else relative to the labels file."""
    if (raw_dir / name).exists() or not (labels_dir / name).exists():
        return name
    beside = os.path.realpath(labels_dir / name)
    root = os.path.realpath(raw_dir)
    if os.path.commonpath([beside, root]) != root:
        return name  # outside the input tree: never read, reported as unlisted
    return Path(os.path.relpath(beside, root)).as_posix()


def ingest_dataset(
    name: str,
    dataset: DatasetConfig,
    ingest: IngestConfig,
    anonymize: AnonymizeConfig,
    image_size: Size,
    secret: bytes | None,
) -> IngestSummary:
    """Run the ingest stage for one dataset (see the module docstring for what is written where).

    Args:
        name: dataset name (for reports).
        dataset: where the raw files are and where outputs go; `format` picks DICOM or image reading.
        ingest: preprocessing and parallelism knobs.
        anonymize: anonymization profile (DICOM only).
        image_size: (H, W) of the output PNGs.
        secret: anonymization key: UIDs, dates and keyed pseudonyms of patients, studies and images.

    Raises:
        ResidualPHIError: after all reports are written, when any anonymized output still held PHI.
        IngestFailedError: after all reports are written, when no image was written or more than
            `ingest.max_quarantined_fraction` of the files were rejected (a wrong raw_dir or labels file
            must stop here, not two stages later).
    """
    start = time.perf_counter()
    ctx, skip = _context(dataset, ingest, anonymize, image_size, secret)
    for folder in (ctx.images_dir, *((ctx.dicom_dir,) if ctx.format == "dicom" else ())):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a killed run; every output is rewritten whole
            stale.unlink(missing_ok=True)
    reports_dir = Path(dataset.reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(dataset.interim_dir) / "manifest.csv"

    files = iter_files(ctx.raw_dir, skip)
    total = sum(1 for _ in iter_files(ctx.raw_dir, skip))  # a second walk of names only: for the ETA
    if ingest.workers > 1:
        results = ordered_map(
            _process_in_worker,
            files,
            workers=ingest.workers,
            chunksize=ingest.chunksize,
            on_crash=_crashed,
            initializer=_init_worker,
            initargs=(ctx,),
            workers_key="ingest.workers",
        )
    else:
        results = (_process(ctx, relpath) for relpath in files)

    seen, written = 0, 0
    phi = PhiScanReport()
    reasons: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    patients: set[str] = set()  # pseudonymous ids: a few dozen bytes per image
    studies: set[str] = set()
    image_ids: set[str] = set()
    quarantine_path = reports_dir / "quarantine.csv"
    with ManifestWriter(manifest_path) as manifest, QuarantineWriter(
        quarantine_path, mask_unknown=ctx.format == "dicom"
    ) as quarantine, progress(f"ingest {name}", total, unit="files", logger=log) as bar:
        for result in results:
            seen += 1
            bar.update(seen, f"{written} images, {quarantine.rows} quarantined")  # before this file's own
            if result.phi_scanned:
                phi.add(list(result.leaks))
            if not result.code and any(row.image_id in image_ids for row in result.rows):
                # The same instance exported twice: the outputs are the same files, listed once.
                reason = "duplicate SOPInstanceUID (an earlier file is the same instance)"
                result = replace(result, rows=(), code="duplicate", reason=reason)
            quarantine.add(result)
            if result.code:
                reasons[result.code] += 1
                continue
            image_ids.update(row.image_id for row in result.rows)
            manifest.write_many(result.rows)
            written += len(result.rows)
            for row in result.rows:
                labels[row.label] += 1
                patients.add(row.patient_id)
                studies.add(row.study_id)
        bar.update(seen, f"{written} images, {quarantine.rows} quarantined")

    # Written for image datasets too (files: 0), so every dataset's stage has the same outputs.
    atomic_write_json(reports_dir / "phi_scan.json", phi.to_dict())
    summary = IngestSummary(
        dataset=name,
        files_seen=seen,
        images_written=written,
        quarantined=quarantine.rows,
        quarantine_reasons=dict(reasons),
        labels=dict(labels),
        patients=len(patients),
        studies=len(studies),
        phi_files=phi.files,
        phi_leaks=phi.leaks,
        seconds=time.perf_counter() - start,
        manifest=manifest_path.as_posix(),
        quarantine=quarantine_path.as_posix(),
    )
    atomic_write_json(reports_dir / "ingest.json", summary.metrics())
    log.info(
        "%s: %d files -> %d images, %d quarantined (%s)", name, seen, written, quarantine.rows, dict(reasons)
    )
    if phi.leaks:
        raise ResidualPHIError(
            f"residual PHI in {phi.leaks} place(s) of anonymized output (those files were removed and "
            f"quarantined); see {reports_dir / 'phi_scan.json'}"
        )
    if written == 0 or quarantine.rows > ingest.max_quarantined_fraction * seen:
        commonest = ", ".join(f"{code}: {n}" for code, n in reasons.most_common(3)) or "no files found"
        raise IngestFailedError(
            f"dataset {name!r}: {seen} files -> {written} images, {quarantine.rows} rejected ({commonest}); "
            f"check datasets.{name}.raw_dir ({dataset.raw_dir}) and labels, or raise "
            f"ingest.max_quarantined_fraction ({ingest.max_quarantined_fraction}); reasons per file in "
            f"{quarantine_path}"
        )
    return summary
