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

import csv
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path, PurePosixPath

import pandas as pd
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bonescan.config import AnonymizeConfig, DatasetConfig, IngestConfig, Size
from bonescan.data.manifest import ManifestRow, ManifestWriter
from bonescan.dicom.anonymize import AnonymizationError, Anonymizer, BurnedInAnnotationError
from bonescan.dicom.phi_scan import Leak, PhiScanReport, identifying_values, scan_dataset
from bonescan.dicom.read import (
    ImageReadError,
    check_pixel_data,
    preprocess_view,
    read_dicom,
    read_views,
    text_views,
    write_png16,
)

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ("file", "reason")
_CONFLICT = "\0conflict"  # label-map marker: the labels file gives one accession two labels
# Kermany et al. 2018 file names carry the patient: person123_virus_456.png, IM-0001-0001.png,
# NORMAL2-IM-0777-0001.png (COVID-19 Radiography Database names do not: COVID-1.png -> one patient each).
_PATIENT_PATTERNS = (re.compile(r"^(person\d+)_"), re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+"))


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


class ResidualPHIError(RuntimeError):
    """Anonymized output still contains identifying values (details in phi_scan.json, without the values)."""


@dataclass(frozen=True)
class FileResult:
    """What a worker sends back for one input file: manifest rows or a quarantine reason, never pixels.

    `identifying` carries the input's identifying values back to the main process (in memory only, for
    one export folder at a time) so that quarantine.csv can mask them out of paths; never written.
    """

    relpath: str
    rows: tuple[ManifestRow, ...] = ()
    code: str = ""
    reason: str = ""
    phi_scanned: bool = False
    leaks: tuple[Leak, ...] = ()
    identifying: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, sent once per worker process (the label map can be large)."""

    format: str
    raw_dir: Path
    dataset: DatasetConfig
    ingest: IngestConfig
    image_size: Size
    images_dir: Path
    dicom_dir: Path
    cwd: Path
    labels: dict[str, str] = field(default_factory=dict)  # accession (dicom) / relpath (image_csv) -> label
    patients: dict[str, str] = field(default_factory=dict)  # relpath -> raw patient id (image_csv)
    anonymizer: Anonymizer | None = None
    secret: bytes | None = None


class _Rejected(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


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


def match_class(folder: str, classes: Iterable[str]) -> str | None:
    """Class folder name -> configured class: case/separator-insensitive, else a unique prefix.

    "Viral Pneumonia" -> viral_pneumonia and "COVID" -> covid19, so the COVID-19 Radiography Database
    works as shipped.
    """

    def norm(text: str) -> str:
        return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")

    key = norm(folder)
    by_norm = {norm(c): c for c in classes}
    if key in by_norm:
        return by_norm[key]
    prefixed = [c for n, c in by_norm.items() if key and n.startswith(key)]
    return prefixed[0] if len(prefixed) == 1 else None


def parse_patient_id(stem: str) -> str | None:
    """Patient part of a file name when its naming scheme has one (Kermany et al. 2018), else None."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return None


def pseudonym(text: str, secret: bytes | None, length: int = 16) -> str:
    """Short hex id: keyed (HMAC-SHA256) when a secret is given, so names cannot be guessed back."""
    if secret:
        return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:length]
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def image_pseudonym(key: str, view: str, index: int) -> str:
    """The manifest's image_id of view `index` of a file (key: its anonymized SOPInstanceUID or keyed path)."""
    return pseudonym(f"{key}|{view}|{index}", None)


def study_pseudonym(study_uid: str) -> str:
    """The manifest's study_id of an anonymized StudyInstanceUID (already keyed, so hashed without a key)."""
    return pseudonym(study_uid, None)


# --------------------------------------------------------------------------- per-file work


def _write_views(ctx: _Context, views, key: str, base: ManifestRow) -> tuple[ManifestRow, ...]:
    """Preprocess each view, write its PNG, return one manifest row per view (all or nothing)."""
    images = [(view.name, preprocess_view(view, ctx.ingest, ctx.image_size)) for view in views]
    rows = []
    for index, (name, image) in enumerate(images):
        image_id = image_pseudonym(key, name, index)
        png = write_png16(image, ctx.images_dir / f"{image_id}.png")
        path = PurePosixPath(Path(os.path.relpath(png, ctx.cwd)).as_posix())
        rows.append(
            ManifestRow(
                image_id, base.patient_id, base.study_id, name, base.label, source=base.source, path=str(path)
            )
        )
    return tuple(rows)


def _dicom_label(ctx: _Context, ds) -> str:
    accession = str(ds.get("AccessionNumber", "") or "").strip()
    if not accession:
        raise _Rejected("no_label", "no label for this study (no accession number)")
    label = ctx.labels.get(accession)
    if label is None:
        raise _Rejected("no_label", "no label for this study")
    if label == _CONFLICT:
        raise _Rejected("no_label", "conflicting labels for this study in the labels file")
    if label not in ctx.dataset.classes:
        raise _Rejected(
            "unknown_label", f"label {label!r} is not one of the classes {list(ctx.dataset.classes)}"
        )
    return label


def _ingest_dicom(ctx: _Context, relpath: str) -> FileResult:
    try:
        ds = read_dicom(ctx.raw_dir / relpath)
    except InvalidDicomError:
        return FileResult(relpath, code="not_dicom", reason="not a DICOM file")
    except ImageReadError as exc:  # a deflated data set inflating past ingest.max_pixel_bytes
        return FileResult(relpath, code=exc.code, reason=exc.reason)
    except Exception as exc:  # pydicom signals damage with many types; the name is enough (no values)
        return FileResult(relpath, code="unreadable", reason=f"truncated / unreadable: {type(exc).__name__}")
    try:
        identifying = frozenset(identifying_values(ds))
    except Exception as exc:  # a half-parsed header: cannot know what to scan for, so it cannot pass
        return FileResult(
            relpath, code="unreadable", reason=f"truncated / unreadable header ({type(exc).__name__})"
        )
    try:
        return _ingest_dataset_file(ctx, relpath, ds, identifying)
    except _Rejected as rejected:
        return FileResult(relpath, code=rejected.code, reason=rejected.reason, identifying=identifying)
    except ImageReadError as exc:
        return FileResult(relpath, code=exc.code, reason=exc.reason, identifying=identifying)
    except Exception as exc:  # never let one file stop the stage; the type name carries no patient data
        log.debug("unexpected %s while ingesting a file", type(exc).__name__)
        return FileResult(
            relpath,
            code="unexpected",
            reason=f"unexpected error ({type(exc).__name__})",
            identifying=identifying,
        )


def _ingest_dataset_file(ctx: _Context, relpath: str, ds, identifying: frozenset[str]) -> FileResult:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in ctx.dataset.modalities:
        accepted = ", ".join(ctx.dataset.modalities)
        raise _Rejected(
            "unsupported_modality", f"unsupported modality {modality or '(none)'} (accepted: {accepted})"
        )
    check_pixel_data(ds)  # a truncated transfer is reported as such, even when it also lacks a label
    label = _dicom_label(ctx, ds)
    hints = text_views(ds)  # anonymization removes the free text that names views (ImageComments ...)
    try:
        anonymized = ctx.anonymizer.anonymize(ds)
    except BurnedInAnnotationError:
        raise _Rejected("burned_in", "burned-in annotation") from None
    except AnonymizationError as exc:
        raise _Rejected("anonymization", f"anonymization refused: {exc}") from None

    sop_uid = str(anonymized.SOPInstanceUID)
    target = ctx.dicom_dir / f"{sop_uid}.dcm"
    # Written under a temp name and renamed only when everything below succeeded: a failing file can
    # never remove or half-replace the output of another file that maps to the same instance.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        anonymized.save_as(tmp, enforce_file_format=True)
        written = read_dicom(tmp)
        leaks = scan_dataset(written, set(identifying), Path(os.path.relpath(target, ctx.cwd)).as_posix())
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
        base = ManifestRow("", str(written.PatientID), study_id, "", label, source=f"dicom:{modality}")
        try:
            rows = _write_views(ctx, read_views(written, ctx.dataset.split_views, hints), sop_uid, base)
        except ImageReadError as exc:  # scanned, then found undecodable: counted in phi_scan.json
            return FileResult(
                relpath, code=exc.code, reason=exc.reason, phi_scanned=True, identifying=identifying
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return FileResult(relpath, rows=rows, phi_scanned=True, identifying=identifying)


def _ingest_image(ctx: _Context, relpath: str) -> FileResult:
    path = PurePosixPath(relpath)
    try:
        if path.suffix.lower() not in ctx.ingest.image_extensions:
            raise _Rejected("not_image", f"not an image file ({path.suffix or 'no extension'})")
        if ctx.format == "image_folder":
            if len(path.parts) < 2:
                raise _Rejected("no_label", "not inside a class folder")
            if any(part.lower() == "masks" for part in path.parts[1:-1]):
                raise _Rejected("mask", "segmentation mask, not an image")
            label = match_class(path.parts[0], ctx.dataset.classes)
            if label is None:
                raise _Rejected(
                    "no_label", f"class folder {path.parts[0]!r} matches none of {list(ctx.dataset.classes)}"
                )
            raw_patient = parse_patient_id(path.stem) or path.stem
        else:
            label = ctx.labels.get(relpath)
            if label is None:
                raise _Rejected("no_label", "no label for this image")
            if label == _CONFLICT:
                raise _Rejected("no_label", "conflicting labels for this image in the labels file")
            if label not in ctx.dataset.classes:
                raise _Rejected(
                    "unknown_label", f"label {label!r} is not one of the classes {list(ctx.dataset.classes)}"
                )
            raw_patient = ctx.patients.get(relpath) or parse_patient_id(path.stem) or path.stem
        base = ManifestRow(
            "",
            "p" + pseudonym(raw_patient, ctx.secret),
            "s" + pseudonym(relpath, ctx.secret),
            "",
            label,
            source="image",
        )
        views = read_views(ctx.raw_dir / relpath, ctx.dataset.split_views)
        rows = _write_views(ctx, views, pseudonym(relpath, ctx.secret), base)
    except _Rejected as rejected:
        return FileResult(relpath, code=rejected.code, reason=rejected.reason)
    except ImageReadError as exc:
        return FileResult(relpath, code=exc.code, reason=exc.reason)
    except Exception as exc:
        return FileResult(relpath, code="unexpected", reason=f"unexpected error ({type(exc).__name__})")
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


def _run_chunk(func: Callable, chunk: list) -> list:
    return [func(item) for item in chunk]


def ordered_map(
    func: Callable,
    items: Iterable,
    *,
    workers: int,
    chunksize: int,
    on_crash: Callable,
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> Iterator:
    """`map(func, items)` over a process pool: lazy input, bounded in-flight work, results in input order.

    Unlike `Pool.imap` (whose feeder thread drains the whole input at once) at most `4 * workers`
    chunks are in flight, so memory does not grow with the number of items. When a worker process
    dies (a codec segfault on a malformed stream), the files of the lost chunks are re-run one at a
    time in a fresh pool; a file that kills its worker again yields `on_crash(item)` instead.
    """
    iter_items = iter(items)
    chunks = iter(lambda: list(islice(iter_items, chunksize)), [])
    window = 4 * workers
    suspects: deque = deque()
    context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads (torch, BLAS)
    while True:
        pending: deque[tuple[list, Future]] = deque()
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs)
        try:
            _check_pool(pool)
            while suspects:  # isolate: one file, one task, nothing else in flight
                try:
                    result = pool.submit(_run_chunk, func, [suspects[0]]).result()[0]
                except BrokenProcessPool:
                    yield on_crash(suspects.popleft())
                    break
                suspects.popleft()
                yield result
            else:
                for chunk in chunks:
                    pending.append((chunk, pool.submit(_run_chunk, func, chunk)))
                    while pending and (len(pending) >= window or pending[0][1].done()):
                        results = pending[0][1].result()
                        pending.popleft()
                        yield from results
                while pending:
                    results = pending[0][1].result()
                    pending.popleft()
                    yield from results
                return
        except BrokenProcessPool:
            log.warning(
                "a worker process died; re-running %d file(s) one at a time", sum(len(c) for c, _ in pending)
            )
            suspects.extend(item for chunk, _ in pending for item in chunk)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True


def _check_pool(pool: ProcessPoolExecutor) -> None:
    """Fail loudly when workers cannot even start, instead of quarantining every file as a crash."""
    try:
        pool.submit(_ready).result()
    except BrokenProcessPool:
        raise RuntimeError(
            "ingest worker processes failed to start (see their traceback above); "
            "run from a script or the CLI, or set ingest.workers: 1"
        ) from None


def _crashed(relpath: str) -> FileResult:
    return FileResult(
        relpath, code="worker_crash", reason="decoder crashed (worker process died on this file)"
    )


# --------------------------------------------------------------------------- the stage


def iter_files(root: Path, skip: Iterable[Path] = ()) -> Iterator[str]:
    """Relative POSIX paths of all files under `root`, in sorted (deterministic) order, lazily."""
    skip_set = {p.resolve() for p in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.resolve() in skip_set:
                continue
            yield path.relative_to(root).as_posix()


def _mask(relpath: str, values: set[str] | frozenset[str]) -> str:
    """`relpath` with every identifying value replaced by *** (phi_scan's token matching)."""
    leaks = scan_dataset(Dataset(), set(values), relpath) if values else []
    return leaks[0].file if leaks else relpath


def _mask_all(relpath: str) -> str:
    """Every part of `relpath` as ***, the file's extension kept: nothing of an unverifiable name survives."""
    path = PurePosixPath(relpath)
    return "/".join(["***"] * (len(path.parts) - 1) + [f"***{path.suffix}"])


class QuarantineWriter:
    """Streams quarantine.csv (file, reason), masking identifying values out of the file paths.

    Export folders are often named after the patient, and a non-DICOM file in such a folder has no
    header to say so. Inputs arrive in sorted order, so the files under one top-level folder (one
    patient of a typical export) are contiguous: rejected rows of a folder are held until the folder
    ends, then masked with the identifying values of every DICOM file read in it. Memory is bounded
    by one folder; a rejected file whose folder holds no readable DICOM is listed unmasked (the file
    is `push: false` in dvc.yaml for that reason) unless `strict`. The file appears atomically on close.

    Args:
        path: the CSV to write.
        strict: for files meant to leave the site (predict's rejected.csv): a rejected file whose
            folder yields no identifying values to check it against is listed as `***/***.ext`.
        index: add a `file_index` column, the position of the file among all files `add`ed (the
            sorted listing), so a fully masked row still points at its file.
    """

    def __init__(self, path: Path, *, strict: bool = False, index: bool = False):
        self.path = path
        self.strict, self.index = strict, index
        self.rows = 0
        self._seen = 0  # files added, accepted or not
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._folder: str | None = None
        self._values: set[str] = set()  # in memory only
        self._pending: list[tuple[int, str, str, frozenset[str]]] = []

    def __enter__(self) -> QuarantineWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._tmp.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow((("file_index",) if self.index else ()) + QUARANTINE_COLUMNS)
        return self

    def add(self, result: FileResult) -> None:
        """Record one processed file (accepted files only contribute identifying values)."""
        folder = result.relpath.split("/", 1)[0] if "/" in result.relpath else None
        if folder != self._folder:
            self._flush()
            self._folder = folder
        if folder is not None:
            self._values |= result.identifying
        if result.code:
            self._pending.append((self._seen, result.relpath, result.reason, result.identifying))
            self.rows += 1
        self._seen += 1

    def _flush(self) -> None:
        for position, relpath, reason, own in self._pending:
            values = self._values | own
            shown = _mask_all(relpath) if self.strict and not values else _mask(relpath, values)
            self._csv.writerow(((position,) if self.index else ()) + (shown, reason))
        self._pending.clear()
        self._values.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._flush()
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def _is_within(path: Path, root: Path) -> bool:
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


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
        images_dir=(Path(dataset.out_dir) / "images").resolve(),
        dicom_dir=(Path(dataset.interim_dir) / "dicom").resolve(),
        cwd=Path.cwd().resolve(),
    )
    if dataset.format == "dicom":
        if labels_path is None:
            raise ValueError("a dicom dataset needs `labels` (CSV accession_number,label)")
        if not secret:
            raise ValueError("a dicom dataset needs the anonymization secret (see `bonescan secret`)")
        table = _read_table(labels_path, ("accession_number", "label"))
        ctx = _Context(
            **common,
            labels=_label_map(table["accession_number"], table["label"]),
            anonymizer=Anonymizer(secret, anonymize),
            secret=secret,
        )
    elif dataset.format == "image_csv":
        if labels_path is None:
            raise ValueError("an image_csv dataset needs `labels` (CSV filename,label[,patient_id])")
        table = _read_table(labels_path, ("filename", "label"))
        names = [PurePosixPath(n.strip().replace("\\", "/")).as_posix() for n in table["filename"]]
        patients = dict(zip(names, table["patient_id"], strict=True)) if "patient_id" in table.columns else {}
        ctx = _Context(**common, labels=_label_map(names, table["label"]), patients=patients, secret=secret)
    else:
        ctx = _Context(**common, secret=secret)
    return ctx, [labels_path] if labels_path else []


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
        secret: anonymization key; required for DICOM, optional for image datasets (keyed patient ids).

    Raises:
        ResidualPHIError: after all reports are written, when any anonymized output still held PHI.
    """
    start = time.perf_counter()
    ctx, skip = _context(dataset, ingest, anonymize, image_size, secret)
    for folder in (ctx.images_dir, *((ctx.dicom_dir,) if ctx.format == "dicom" else ())):
        folder.mkdir(parents=True, exist_ok=True)
    reports_dir = Path(dataset.reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(dataset.interim_dir) / "manifest.csv"

    files = iter_files(ctx.raw_dir, skip)
    if ingest.workers > 1:
        results = ordered_map(
            _process_in_worker,
            files,
            workers=ingest.workers,
            chunksize=ingest.chunksize,
            on_crash=_crashed,
            initializer=_init_worker,
            initargs=(ctx,),
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
    with ManifestWriter(manifest_path) as manifest, QuarantineWriter(quarantine_path) as quarantine:
        for result in results:
            seen += 1
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
            if seen % 500 == 0:
                log.info("%s: %d files, %d images, %d quarantined", name, seen, written, quarantine.rows)

    # Written for image datasets too (files: 0), so every dataset's stage has the same outputs.
    _write_json(reports_dir / "phi_scan.json", phi.to_dict())
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
    _write_json(reports_dir / "ingest.json", summary.metrics())
    log.info(
        "%s: %d files -> %d images, %d quarantined (%s)", name, seen, written, quarantine.rows, dict(reasons)
    )
    if phi.leaks:
        raise ResidualPHIError(
            f"residual PHI in {phi.leaks} place(s) of anonymized output (those files were removed and "
            f"quarantined); see {reports_dir / 'phi_scan.json'}"
        )
    return summary
