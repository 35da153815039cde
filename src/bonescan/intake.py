"""File intake: one raw file -> checks -> anonymization -> views -> model input, or a rejection with a reason.

The one path shared by the ingest stage (which writes what it produces), `bonescan predict` and the
served MLflow model (which keep it in memory), so that a model is applied to exactly what it was trained on: the same checks
reject the same files, the same anonymization runs before any pixel is decoded for the model, and
the same preprocessing (`Preprocessing`, saved with each classifier) makes the same arrays. Also here:
walking an input tree without following links out of it, the quarantine list with identifying path
parts masked, and the pseudonyms that name patients, studies and images.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bonescan.config import Preprocessing
from bonescan.data.manifest import ManifestRow
from bonescan.dicom.anonymize import AnonymizationError, Anonymizer, BurnedInAnnotationError
from bonescan.dicom.phi_scan import Leak, identifying_values, names_anyone, scan_dataset
from bonescan.dicom.read import (
    ImageReadError,
    check_pixel_data,
    max_file_bytes,
    preprocess_view,
    read_dicom,
    read_views,
    text_views,
)

__all__ = [
    "QUARANTINE_COLUMNS",
    "FileRejected",
    "IngestFailedError",
    "ResidualPHIError",
    "FileResult",
    "PreparedDicom",
    "PreparedFile",
    "QuarantineWriter",
    "as_training_input",
    "anonymize_dicom",
    "check_dicom",
    "dicom_inputs",
    "file_suffix",
    "check_image_name",
    "check_regular_file",
    "image_pseudonym",
    "iter_files",
    "match_class",
    "open_dicom",
    "parse_patient_id",
    "prepare_dicom",
    "prepare_file",
    "prepare_image",
    "pseudonym",
    "rejection",
    "study_pseudonym",
]

QUARANTINE_COLUMNS = ("file", "reason")
WHOLE_BODY = "WHOLE BODY"  # NM Image Type value 3 (PS3.3 C.8.4.7) of a whole-body sweep
# Kermany et al. 2018 file names carry the patient: person123_virus_456.png, IM-0001-0001.png,
# NORMAL2-IM-0777-0001.png (COVID-19 Radiography Database names do not: COVID-1.png -> one patient each).
_PATIENT_PATTERNS = (re.compile(r"^(person\d+)_"), re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+"))


class IngestFailedError(RuntimeError):
    """Ingest wrote no image, or rejected more files than `ingest.max_quarantined_fraction` allows."""


class ResidualPHIError(RuntimeError):
    """Anonymized output still contains identifying values (details in phi_scan.json, without the values)."""


class FileRejected(Exception):
    """One input file cannot be used; `code` is the short reason class, `reason` the sentence shown."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class FileResult:
    """What processing one input file gave: manifest rows or a quarantine reason, never pixels.

    `identifying` carries the input's identifying values back to the main process (in memory only, for
    one export folder at a time) so that the quarantine list can mask them out of paths; never written.
    """

    relpath: str
    rows: tuple[ManifestRow, ...] = ()
    code: str = ""
    reason: str = ""
    phi_scanned: bool = False
    leaks: tuple[Leak, ...] = ()
    identifying: frozenset[str] = frozenset()


def rejection(relpath: str, exc: Exception, identifying: frozenset[str] = frozenset()) -> FileResult:
    """The quarantine record of a file whose processing raised `exc` (its type name only: no values)."""
    if isinstance(exc, FileRejected | ImageReadError):
        return FileResult(relpath, code=exc.code, reason=exc.reason, identifying=identifying)
    return FileResult(relpath, code="unexpected", reason=f"unexpected error ({type(exc).__name__})",
                      identifying=identifying)  # fmt: skip


# --------------------------------------------------------------------------- the input tree


def iter_files(root: Path, skip: Iterable[Path] = ()) -> Iterator[str]:
    """Relative POSIX paths of every entry under `root` that is not a real folder, sorted, lazily.

    Links to folders are listed (and rejected by `check_regular_file`), never walked: a link may
    lead out of the tree or into a loop. Nothing here resolves a path, so a link loop cannot raise.
    """
    skip_set = {os.path.realpath(p) for p in skip}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = sorted(d for d in dirnames if d not in linked)
        for name in sorted([*filenames, *linked]):
            path = os.path.join(dirpath, name)
            if skip_set and os.path.realpath(path) in skip_set:
                continue
            yield Path(path).relative_to(root).as_posix()


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def check_regular_file(path: Path, root: Path, max_bytes: int | None = None) -> None:
    """Refuse anything but a regular file inside `root`, of a size the pixel ceiling allows, before it is opened.

    A FIFO would block the reader forever, a device could stream without end, and a link may point
    out of the input tree (to another patient's export) or nowhere. A path named by someone else (a
    served request) may also climb out with `..`, be absolute, or pass through a linked folder: it is
    judged by where it leads, resolved without opening or stat-ing the target, so a refusal says
    nothing about what exists outside `root`.

    Args:
        max_bytes: `ingest.max_pixel_bytes`; a file larger than `max_file_bytes` of it is refused unread.

    Raises:
        FileRejected: a path outside `root`, a link out of it, a broken or looping link, a non-regular
            file, or a file too large to hold pixel data within the ceiling.
    """
    try:
        if not _inside(os.path.abspath(path), os.path.abspath(root)):  # `..` or an absolute path elsewhere
            raise FileRejected("outside_root", "outside the input folder (not opened)")
        if not _inside(os.path.realpath(path), os.path.realpath(root)):  # a link on the way, or the file one
            raise FileRejected("link", "symbolic link out of the input folder (not followed)")
        info = os.lstat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise FileRejected("unreadable", f"cannot be read ({type(exc).__name__})") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:  # dangling, or a loop (ELOOP)
            raise FileRejected("link", "broken or looping symbolic link") from None
    if stat.S_ISDIR(info.st_mode):
        raise FileRejected("link", "symbolic link to a folder (not followed)")
    if not stat.S_ISREG(info.st_mode):
        raise FileRejected("not_regular", "not a regular file (FIFO, socket or device)")
    if max_bytes is not None and info.st_size > max_file_bytes(max_bytes):
        raise FileRejected(
            "too_large",
            f"file of {info.st_size / 2**20:,.1f} MiB, larger than pixel data within the limit "
            f"ingest.max_pixel_bytes = {max_bytes / 2**20:,.1f} MiB and a header can take (not read)",
        )


# --------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class PreparedDicom:
    """An accepted DICOM file after anonymization, with its model inputs.

    Attributes:
        anonymized: the de-identified dataset (what ingest writes; never the input).
        modality: its Modality.
        views: (view name, (H, W) float32 in [0, 1]) per view, before the PNG quantization.
    """

    anonymized: Dataset
    modality: str
    views: tuple[tuple[str, np.ndarray], ...]

    @property
    def study_uid(self) -> str:
        return str(self.anonymized.get("StudyInstanceUID", "") or "")

    @property
    def sop_uid(self) -> str:
        return str(self.anonymized.SOPInstanceUID)


def open_dicom(path: Path, max_bytes: int | None = None) -> tuple[Dataset, frozenset[str]]:
    """Read a DICOM file (read-only) and the identifying values the anonymized output is checked against.

    Args:
        max_bytes: `ingest.max_pixel_bytes`; a deflated data set inflating past it is refused while read.

    Raises:
        FileRejected: not DICOM, or too damaged to read or to tell what identifies the patient.
        ImageReadError: a deflated data set larger than the ceiling.
    """
    try:
        ds = read_dicom(path, max_bytes) if max_bytes is not None else read_dicom(path)
    except ImageReadError:
        raise
    except InvalidDicomError:
        raise FileRejected("not_dicom", "not a DICOM file") from None
    except MemoryError:
        raise FileRejected("too_large", "header too large to read (out of memory)") from None
    except Exception as exc:  # pydicom signals damage with many types; the name is enough (no values)
        raise FileRejected("unreadable", f"truncated / unreadable: {type(exc).__name__}") from None
    try:
        identifying = frozenset(identifying_values(ds))
    except Exception as exc:  # a half-parsed header: cannot know what to scan for, so it cannot pass
        raise FileRejected("unreadable", f"truncated / unreadable header ({type(exc).__name__})") from None
    return ds, identifying


def check_dicom(ds: Dataset, preprocessing: Preprocessing) -> str:
    """The checks every DICOM input passes before anything else: modality, whole body, pixel data.

    Returns:
        The file's Modality.

    Raises:
        FileRejected: a truncated header, another modality, an NM image that is not a whole-body sweep.
        ImageReadError: pixel data shorter than the header declares.
    """
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not modality and "PixelData" not in ds:  # pydicom reads a header cut short without complaint
        raise FileRejected("unreadable", "truncated / unreadable: no Modality and no pixel data")
    if modality not in preprocessing.modalities:
        accepted = ", ".join(preprocessing.modalities)
        raise FileRejected(
            "unsupported_modality", f"unsupported modality {modality or '(none)'} (accepted: {accepted})"
        )
    image_type = ds.get("ImageType")
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    kind = str(values[2]).strip().upper() if len(values) > 2 else ""
    if modality == "NM" and kind and kind != WHOLE_BODY:
        raise FileRejected("not_whole_body", f"not a whole-body acquisition (NM image type {kind})")
    check_pixel_data(ds, preprocessing.ingest.max_pixel_bytes)  # before any decode: bombs never inflate
    return modality


def anonymize_dicom(ds: Dataset, anonymizer: Anonymizer) -> tuple[Dataset, list[str]]:
    """(the de-identified dataset, the view names its free text gave before anonymization removed it).

    Raises:
        FileRejected: burned-in annotation, or anonymization refused.
    """
    hints = text_views(ds)  # anonymization removes the free text that names views (ImageComments ...)
    try:
        return anonymizer.anonymize(ds), hints
    except BurnedInAnnotationError:
        raise FileRejected("burned_in", "burned-in annotation") from None
    except AnonymizationError as exc:
        raise FileRejected("anonymization", f"anonymization refused: {exc}") from None


def dicom_inputs(
    anonymized: Dataset, preprocessing: Preprocessing, hints: list[str]
) -> tuple[tuple[str, np.ndarray], ...]:
    """Anonymized dataset -> (view name, (H, W) float32 in [0, 1]) per view: decode, split, crop, scale, resize.

    Raises:
        ImageReadError: pixel data that cannot be decoded.
    """
    ceiling = preprocessing.ingest.max_pixel_bytes
    views = read_views(anonymized, preprocessing.split_views, hints, max_bytes=ceiling)
    # Every view becomes an (H, W) float32 model input, however small its frame: 100 000 frames of 8 x 8
    # pass the pixel ceiling at 12 MiB, then would resize to gigabytes. The inputs share that ceiling.
    inputs = len(views) * preprocessing.image_size[0] * preprocessing.image_size[1] * 4
    if inputs > ceiling:
        raise ImageReadError(
            "too_large",
            f"{len(views)} views make {inputs / 2**20:,.1f} MiB of model input, more than the "
            f"limit ingest.max_pixel_bytes = {ceiling / 2**20:,.1f} MiB",
        )
    return tuple((view.name, preprocess_view(view, preprocessing.ingest, preprocessing.image_size)) for view in views)


def prepare_dicom(ds: Dataset, anonymizer: Anonymizer, preprocessing: Preprocessing) -> PreparedDicom:
    """Checked input -> anonymized dataset -> views -> model inputs, in memory (predict's path).

    Ingest takes the same three steps (`check_dicom`, `anonymize_dicom`, `dicom_inputs`) with the
    anonymized file written and scanned for residual PHI between the last two.

    Raises:
        FileRejected: a failed check, burned-in annotation, or anonymization refused.
        ImageReadError: pixel data that cannot be decoded.
    """
    modality = check_dicom(ds, preprocessing)
    anonymized, hints = anonymize_dicom(ds, anonymizer)
    return PreparedDicom(anonymized, modality, dicom_inputs(anonymized, preprocessing, hints))


# --------------------------------------------------------------------------- image files


def check_image_name(path: PurePosixPath | Path, preprocessing: Preprocessing) -> None:
    """Refuse a file whose extension is not an accepted image type (before any label lookup or decode)."""
    suffix = path.suffix.lower()
    if suffix not in preprocessing.ingest.image_extensions:
        raise FileRejected("not_image", f"not an image file ({suffix or 'no extension'})")


def prepare_image(path: Path, preprocessing: Preprocessing) -> tuple[tuple[str, np.ndarray], ...]:
    """A PNG/JPEG file -> (view name, (H, W) float32 in [0, 1]) per view, as for DICOM views.

    Raises:
        FileRejected: an extension that is not an accepted image type.
        ImageReadError: the file cannot be decoded.
    """
    check_image_name(path, preprocessing)
    views = read_views(path, preprocessing.split_views, max_bytes=preprocessing.ingest.max_pixel_bytes)
    return tuple((view.name, preprocess_view(view, preprocessing.ingest, preprocessing.image_size)) for view in views)


def as_training_input(image: np.ndarray) -> np.ndarray:
    """[0, 1] image -> the values `read_png16(write_png16(image))` gives, i.e. what training saw."""
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16).astype(np.float32) / 65535.0


# --------------------------------------------------------------------------- one input file, either kind


@dataclass(frozen=True)
class PreparedFile:
    """The model inputs of one accepted file, keyed by anonymized UIDs or keyed name pseudonyms (never raw).

    Attributes:
        study_uid: anonymized StudyInstanceUID ("" when the file has none, and for image files).
        sop_uid: anonymized SOPInstanceUID; for an image file the keyed pseudonym of its name, as in ingest.
        views: (view name, (H, W) float32 in [0, 1]) per view, as training read them from ingest's PNGs.
        study_id: the manifest's study id when the file itself gives it (an image file is its own study).
    """

    study_uid: str
    sop_uid: str
    views: tuple[tuple[str, np.ndarray], ...]
    study_id: str = ""


def _input_kind(relpath: str, preprocessing: Preprocessing) -> str:
    """"image" for an accepted image extension, else "dicom"; refuses what the model was not trained on."""
    is_image = PurePosixPath(relpath).suffix.lower() in preprocessing.ingest.image_extensions
    trained = preprocessing.input_format
    if trained == "dicom" and is_image:
        raise FileRejected("wrong_format", "an image file, but the model was trained on DICOM studies")
    if trained in ("image_folder", "image_csv") and not is_image:
        accepted = ", ".join(preprocessing.ingest.image_extensions)
        raise FileRejected("wrong_format", f"not an image file ({accepted}): the model was trained on images")
    return "image" if is_image else "dicom"


_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))


def file_suffix(content: bytes) -> str:
    """The extension a file of these bytes would carry: ".png" or ".jpg" by signature, else ".dcm".

    Bytes sent without a name (a served request) are named by it, so that `prepare_file` takes the
    same image-or-DICOM branch as for a file on disk; a non-DICOM rest is rejected by the DICOM reader.
    """
    for magic, suffix in _MAGIC:
        if content.startswith(magic):
            return suffix
    return ".dcm"


def prepare_file(
    path: Path,
    relpath: str,
    anonymizer: Anonymizer,
    preprocessing: Preprocessing,
    root: Path | None = None,
    name_key: bytes | None = None,
) -> tuple[FileResult, PreparedFile | None]:
    """One input file -> (its quarantine record, its model inputs or None when rejected). Never raises.

    `prepare_dicom` or `prepare_image` (the steps ingest takes), then the 16-bit quantization of
    ingest's PNGs: what predict and the MLflow pyfunc feed the model. The record carries the file's identifying values in
    memory only, so rejected paths can be masked.

    Args:
        name_key: the key of image files' name pseudonyms (the anonymization key, or this run's).
    """
    identifying: frozenset[str] = frozenset()
    try:
        check_regular_file(path, root if root is not None else path.parent, preprocessing.ingest.max_pixel_bytes)
        if _input_kind(relpath, preprocessing) == "image":
            instance = pseudonym(relpath, name_key)
            images = prepare_image(path, preprocessing)
            views = tuple((name, as_training_input(image)) for name, image in images)
            study_id = "s" + pseudonym(relpath, name_key)  # == ingest's study id of this file
            return FileResult(relpath), PreparedFile("", instance, views, study_id)
        ds, identifying = open_dicom(path, preprocessing.ingest.max_pixel_bytes)
        prepared = prepare_dicom(ds, anonymizer, preprocessing)
    except Exception as exc:  # one bad file never stops the run; the type name carries no patient data
        return rejection(relpath, exc, identifying), None
    views = tuple((name, as_training_input(image)) for name, image in prepared.views)
    return FileResult(relpath, identifying=identifying), PreparedFile(prepared.study_uid, prepared.sop_uid, views)


# --------------------------------------------------------------------------- labels from names


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


# --------------------------------------------------------------------------- pseudonyms


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


# --------------------------------------------------------------------------- the quarantine list


def _mask(relpath: str, values: set[str] | frozenset[str]) -> str:
    """`relpath` with every identifying value replaced by *** (phi_scan's token matching)."""
    leaks = scan_dataset(Dataset(), set(values), relpath) if values else []
    return leaks[0].file if leaks else relpath


# Dates in any common order and separator (20230114, 2023-01-14, 14.01.2023, 01_14_2023): a study date in a
# folder name identifies a patient as well as a name does, and no header is needed to recognise one.
_DATE = re.compile(
    r"(?<!\d)(?:(?:19|20)\d{2}[-_./]?(?:0[1-9]|1[0-2])[-_./]?(?:0[1-9]|[12]\d|3[01])"
    r"|(?:0[1-9]|[12]\d|3[01])[-_./](?:0[1-9]|1[0-2])[-_./](?:19|20)\d{2}"
    r"|(?:0[1-9]|1[0-2])[-_./](?:0[1-9]|[12]\d|3[01])[-_./](?:19|20)\d{2})(?!\d)"
)
# Path parts an export tool writes whatever the patient (DICOMDIR layouts, PACS exports): kept as they are.
_SAFE_PART = re.compile(
    r"(?:DICOM|DICOMDIR|IMAGES?|IMG|IM|I|SE|SER|SERIES|ST|STUDY|STUDIES|S|EXPORT|DATA|RAW|NM|CT|PT|MR|CR|DX)?"
    r"[_-]?\d{0,5}",
    re.IGNORECASE,
)


def _mask_dates(relpath: str) -> str:
    return _DATE.sub("***", relpath)


def _mask_unknown(relpath: str) -> str:
    """Every path part that is not a known-safe export structure as ***, extensions kept, dates masked."""
    path = PurePosixPath(relpath)
    parts = [p if _SAFE_PART.fullmatch(p) else "***" for p in path.parts[:-1]]
    stem, suffix = path.stem, path.suffix
    parts.append((stem if _SAFE_PART.fullmatch(stem) else "***") + suffix)
    return _mask_dates("/".join(parts))


def _mask_all(relpath: str) -> str:
    """Every part of `relpath` as ***, the file's extension kept: nothing of an unverifiable name survives."""
    path = PurePosixPath(relpath)
    return "/".join(["***"] * (len(path.parts) - 1) + [f"***{path.suffix}"])


class QuarantineWriter:
    """Streams the quarantine list (file, reason), masking identifying values out of the file paths.

    Export folders are often named after the patient, and a non-DICOM file in such a folder has no
    header to say so. Inputs arrive in sorted order, so the files under one top-level folder (one
    patient of a typical export) are contiguous: rejected rows of a folder are held until the folder
    ends, then masked with the identifying values of every DICOM file read in it. Memory is bounded
    by one folder; a rejected file whose folder holds no readable DICOM is listed unmasked (ingest's
    quarantine.csv is `push: false` in dvc.yaml for that reason) unless `strict`. The file appears
    atomically on close.

    Dates of any common format are masked in every path. A rejected file whose folder yields no
    identifying values to check it against is listed with every part that is not a known-safe export
    structure (`DICOM/`, `IMG0001.dcm`, `SE3/`, ...) masked, when `mask_unknown`.

    Args:
        path: the CSV to write.
        strict: for files meant to leave the site (predict's rejected.csv): a rejected file whose
            folder yields no identifying values to check it against is listed as `***/***.ext`.
        mask_unknown: for DICOM exports, whose folders are named after patients and accessions.
        index: add a `file_index` column, the position of the file among all files `add`ed (the
            sorted listing), so a fully masked row still points at its file.
    """

    def __init__(self, path: Path, *, strict: bool = False, index: bool = False, mask_unknown: bool = False):
        self.path = path
        self.strict, self.index, self.mask_unknown = strict, index, mask_unknown
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
            if names_anyone(values):  # a header cut short may give dates only: those do not say who
                shown = _mask_dates(_mask(relpath, values))
            elif self.strict:
                shown = _mask_all(relpath)
            else:
                shown = _mask_unknown(relpath) if self.mask_unknown else _mask_dates(relpath)
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
