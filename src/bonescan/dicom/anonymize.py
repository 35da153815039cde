"""De-identification by DICOM PS3.15 Annex E: Basic Profile + Retain Longitudinal Temporal Information
with Modified Dates Option.

Every attribute of Table E.1-1 (``profile_e1_1.ROWS``) gets its action at every depth of the dataset:

* ``X`` remove; ``Z`` zero-length; ``D`` a VR-conforming dummy ("ANONYMOUS", 0, 19000101, a remapped
  UID, or for a sequence its items cleaned recursively); ``U`` keyed UID remapping.
* Compound codes let the implementation choose; the choice here is the least information that still
  keeps the IODs bonescan handles (NM, CR, DX, SC) valid: ``X/Z``, ``X/D``, ``X/Z/D`` -> ``X``;
  ``Z/D`` -> ``Z``; ``X/Z/U*`` (Referenced/Source Image Sequence) -> kept with the instance UIDs
  inside remapped, so references between anonymized instances stay intact.
* ``C`` of the Modified Dates Option (PS3.15 E.3.6: dates *and times* are modified): every DA, DT and
  TM, inside sequences and outside the table too, moves by one keyed, per-patient offset
  (``TemporalShift``): [-max_date_shift_days, -1] days plus a time of day in (-1 day, 0] with
  microsecond resolution. A DA moves with its paired TM (StudyDate/StudyTime ...) as one instant, a
  DT as an instant with its UTC offset and precision kept, a lone TM by the same time of day, so
  every interval within a patient is kept (to the precision of its values) and no date or time stays
  as it was. A value that cannot be shifted (OB timestamps, partial DT such as "2023") falls back to
  its Basic Profile action.
* PatientID (``Z/D``) becomes the keyed pseudonym (a ``D`` dummy); PatientName (``Z``) the same
  pseudonym (``Z`` allows a dummy), so patients stay linkable without identity.

Rules the table states in words, and extensions that only remove more:

* private attributes (odd groups) are removed (the table's "Private Attributes" row, action X);
* whole curve (50xx) and overlay (60xx) groups are removed (the table lists their data and comments);
* standard attributes not in the table follow ``beyond_e1_1`` (per-attribute decisions for
  ContentLabel, ContentDescription, DocumentTitle, ImageID, CodingSchemeUID ...; long free text and
  local codes' meanings dummied; instance UIDs remapped; PN and comments removed); DA/DT/TM are
  shifted -- "dates everywhere move together" is what makes the longitudinal option safe; public tags
  no dictionary knows are removed;
* DeidentificationMethod and its code sequence are written from scratch (nothing of the input's);
* unused high bits of native pixel data (above BitsStored, where old devices keep overlays) are
  cleared (``clear_unused_high_bits``); images from sources that commonly burn in text
  (``burned_in_prone``) are refused unless ``burned_in_policy`` is "allow", like BurnedInAnnotation=YES
  unless ``allow_burned_in``. Text drawn into the pixels of other images is not detected.

UIDs map to ``<uid_root><int>`` where the integer is an HMAC-SHA256 of the UID under the secret:
the same input UID gives the same output UID in every file and every run with the same secret, and
nothing without it. Well-known UIDs (SOP classes, transfer syntaxes, registered coding schemes) and
class or syntax UIDs (SOPClassUID, ReferencedSOPClassUID ...) are kept.

Re-running on bonescan's own output changes nothing: such a dataset carries a keyed marker in
DeidentificationMethod (an HMAC of its SOPInstanceUID), and then dates and UIDs are kept as they
are. A marker made under another secret does not verify, so that data is de-identified again.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import dcmread, dcmwrite
from pydicom.datadict import dictionary_has_tag, repeater_has_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from bonescan.config import AnonymizeConfig
from bonescan.dicom import beyond_e1_1, profile_e1_1
from bonescan.dicom.phi_scan import Leak, PhiScanReport, identifying_values, scan_dataset

logger = logging.getLogger(__name__)

REPORT_NAME = "anonymization_report.json"
MIN_SECRET_BYTES = 16  # shorter keys make the keyed hashes guessable by brute force

# Compound Basic Profile codes -> the action taken (see module docstring for why).
_RESOLVE = {"X": "X", "Z": "Z", "D": "D", "U": "U", "Z/D": "Z", "X/Z": "X", "X/D": "X", "X/Z/D": "X",
            "X/Z/U*": "U*"}  # fmt: skip
_TEXT_DUMMY = "ANONYMOUS"
_DUMMY_BY_VR: dict[str, Any] = {
    "AE": _TEXT_DUMMY, "AS": "000Y", "CS": _TEXT_DUMMY, "DA": "19000101", "DS": "0", "DT": "19000101000000",
    "IS": "0", "LO": _TEXT_DUMMY, "LT": _TEXT_DUMMY, "PN": _TEXT_DUMMY, "SH": _TEXT_DUMMY, "ST": _TEXT_DUMMY,
    "TM": "000000", "UC": _TEXT_DUMMY, "UR": _TEXT_DUMMY, "UT": _TEXT_DUMMY,
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0,
}  # fmt: skip
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR",
             "UT"}  # fmt: skip
_FREE_TEXT_VRS = {"LO", "LT", "SH", "ST", "UC", "UT"}
_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")  # YYYYMMDD, or ACR-NEMA YYYY.MM.DD
_DT = re.compile(r"(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")  # complete date part
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")  # HH[MM[SS[.F]]], ACR-NEMA colons

_BASIC_CODE = (profile_e1_1.BASIC_CODE, "DCM", "Basic Application Confidentiality Profile")
_OPTION_CODE = (
    profile_e1_1.OPTION_CODE,
    "DCM",
    "Retain Longitudinal Temporal Information Modified Dates Option",
)
_MARKER_PREFIX = f"bonescan PS3.15 E.1-1 {profile_e1_1.EDITION} 113100+113107 mac="  # LO: 64 chars at most


class AnonymizationError(Exception):
    """A dataset that must not pass de-identification (the message never carries patient data)."""


class BurnedInAnnotationError(AnonymizationError):
    """BurnedInAnnotation=YES: identifying text is in the pixels, which header cleaning cannot remove."""


BURNED_IN_POLICIES = ("quarantine", "allow")
# SOP classes whose pixels are screens, scans of paper or photographs (PS3.4 B.5): the classic carriers
# of burned-in names. Secondary Capture (single- and multi-frame), VL photographic, video.
_PRONE_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.77.1")
_PRONE_MODALITIES = frozenset({"US", "OT", "SC", "XC", "ES", "GM", "SM", "IVUS"})
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ACQUISITION_MODALITIES = frozenset({"NM", "PT", "CR", "DX", "MG", "CT", "MR", "RF", "XA", "IO", "PX"})
_PRONE_CONVERSIONS = frozenset({"DV", "DF", "SD", "SI", "DRW"})  # video, film, scanned paper/image, drawing
_PRONE_IMAGE_TYPES = frozenset({"SECONDARY", "SCREEN SAVE", "SCREENSHOT", "CAPTURE"})


class MissingSecretError(RuntimeError):
    """No anonymization key was found in the environment or on disk."""


# ----------------------------------------------------------------------------------------- secret
def load_secret(cfg: AnonymizeConfig) -> bytes:
    """The anonymization key: env var ``cfg.secret_env`` if set, else the file ``cfg.secret_file``.

    Raises:
        MissingSecretError: neither exists (the message says how to create one), or the key is too
            short. The key itself is never logged.
    """
    env = os.environ.get(cfg.secret_env, "").strip()
    if env:
        key, origin = env.encode(), f"environment variable {cfg.secret_env}"
    else:
        path = Path(cfg.secret_file)
        if not path.is_file():
            raise MissingSecretError(
                f"no anonymization key: set the environment variable {cfg.secret_env} or create the file "
                f"{path}, e.g. `bonescan secret` or "
                f'`mkdir -p {path.parent} && python -c "import secrets;print(secrets.token_hex(32))" > {path}` '
                "(keep it out of git and back it up: the same key is needed to link future data)"
            )
        key, origin = path.read_bytes().strip(), f"file {path}"
    if len(key) < MIN_SECRET_BYTES:
        raise MissingSecretError(f"anonymization key from {origin} is shorter than {MIN_SECRET_BYTES} bytes")
    logger.info("anonymization key loaded from %s", origin)
    return key


def create_secret(path: Path) -> bool:
    """Write a random 256-bit key (hex) to ``path`` with mode 0600 unless the file exists.

    Returns:
        True if a key was created, False if one was already there (it is never overwritten).
    """
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    logger.info("created anonymization key file %s", path)
    return True


def file_id(relpath: str, secret: bytes) -> str:
    """Keyed, non-identifying id of an input path (hospital export paths often hold names)."""
    return _mac(secret, "file", relpath)[:16]


def _mac(secret: bytes, domain: str, value: str) -> str:
    """HMAC-SHA256 hex digest, domain-separated so a UID hash never equals a patient hash."""
    return hmac.new(secret, f"{domain}\0{value}".encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------ dates
DAY_US = 86_400_000_000  # microseconds in a day
_UNIT_US = (3_600_000_000, 60_000_000, 1_000_000)  # precision of HH, HHMM, HHMMSS


@dataclass(frozen=True)
class TemporalShift:
    """One patient's offset: ``days`` whole days plus ``micros`` (-1 day < micros <= 0) of time of day.

    An instant (a DT, or a DA with its paired TM) moves by ``days * DAY_US + micros``; a DA alone moves
    by ``days`` (where the last instant of its day moves); a TM alone moves by ``micros`` modulo one
    day, which is where it moves with any date. So every interval within a patient is kept, to the
    precision of the values it is measured between, and with ``days <= -1`` no date stays as it was.
    """

    days: int
    micros: int = 0

    @property
    def is_zero(self) -> bool:
        return self.days == 0 and self.micros == 0


def _as_shift(shift: TemporalShift | int) -> TemporalShift:
    return shift if isinstance(shift, TemporalShift) else TemporalShift(int(shift), 0)


def _parse_tm(value: str) -> tuple[int, int, int] | None:
    """(microseconds since midnight, precision unit in us, fraction digits) of a TM, None if invalid."""
    m = _TM.fullmatch(value.strip())
    if not m:
        return None
    hh, mm, ss, frac = int(m[1]), int(m[2] or 0), int(m[3] or 0), m[4] or ""
    if hh > 23 or mm > 59 or ss > 60:
        return None
    ss = min(ss, 59)  # a leap second has no place in a shifted clock
    parts = sum(g is not None for g in (m[1], m[2], m[3]))
    unit = _UNIT_US[parts - 1] if not frac else 10 ** (6 - len(frac))
    micros = ((hh * 60 + mm) * 60 + ss) * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)
    return micros, unit, len(frac)


def _format_tm(micros: int, unit: int, digits: int) -> str:
    micros -= micros % unit  # never more precise than the input: a truncated clock, not a rounded one
    seconds, frac = divmod(micros, 1_000_000)
    text = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    if unit >= _UNIT_US[0]:
        return text[:2]
    if unit >= _UNIT_US[1]:
        return text[:4]
    return text + (f".{frac:06d}"[: digits + 1] if digits else "")


def shift_time(value: str, shift: TemporalShift | int) -> str | None:
    """Shift one TM value (or TM range "A-B") by the time-of-day part of ``shift``, modulo one day.

    The output has the input's precision (HH, HHMM, HHMMSS or its number of fraction digits; ACR-NEMA
    "HH:MM:SS" is written as HHMMSS). None if the value is not a valid time.
    """
    value, shift = value.strip(), _as_shift(shift)
    if not value:
        return value
    if "-" in value:
        parts = [shift_time(p, shift) if p else "" for p in value.split("-")]
        return None if any(p is None for p in parts) or len(parts) != 2 else "-".join(parts)  # type: ignore[arg-type]
    parsed = _parse_tm(value)
    if parsed is None:
        return None
    micros, unit, digits = parsed
    return _format_tm((micros + shift.micros) % DAY_US, unit, digits)


def shift_date(value: str, days: int, time: str | None = None, micros: int = 0) -> str | None:
    """Shift one DA value (or DA range "A-B") by ``days``; None if it is not a parseable date.

    With ``time`` (the paired TM, e.g. StudyTime for StudyDate), the date is where the instant
    date + time moves under ``days`` and ``micros``, so it can be one day later than ``days`` alone.
    """
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        parts = [shift_date(p, days) if p else "" for p in value.split("-")]
        return None if any(p is None for p in parts) or len(parts) != 2 else "-".join(parts)  # type: ignore[arg-type]
    m = _DA.fullmatch(value)
    if not m:
        return None
    carry = 0
    if time is not None:
        parsed = _parse_tm(time)
        if parsed is not None:
            carry = (parsed[0] + micros) // DAY_US
    try:
        shifted = date(int(m[1]), int(m[2]), int(m[3])) + timedelta(days=days + carry)
    except (ValueError, OverflowError):
        return None
    return shifted.strftime("%Y%m%d")


def shift_datetime(value: str, shift: TemporalShift | int) -> str | None:
    """Shift one DT value as an instant (date and time together), keeping its precision and UTC offset.

    A DT of a date only moves like a DA; a DT without a complete date ("2023", "202301") is None (not
    shiftable; the attribute then gets its Basic Profile action). An int ``shift`` means whole days.
    """
    value, shift = value.strip(), _as_shift(shift)
    if not value:
        return value
    m = _DT.fullmatch(value)
    if not m:
        return None
    day, clock, zone = m[1], m[2], m[3] or ""
    if not clock:
        shifted_day = shift_date(day, shift.days)
        return None if shifted_day is None else shifted_day + zone
    parsed = _parse_tm(clock)
    if parsed is None:
        return None
    micros, unit, digits = parsed
    shifted_day = shift_date(day, shift.days, clock, shift.micros)
    if shifted_day is None:
        return None
    return shifted_day + _format_tm((micros + shift.micros) % DAY_US, unit, digits) + zone


# ----------------------------------------------------------------------------------------- pixels
def burned_in_prone(ds: Dataset) -> str | None:
    """Why ``ds`` comes from a source that commonly burns text into its pixels, or None.

    The rule, for instances with pixel data (header only; no text is looked for in the pixels):

    * Modality US, OT, SC, XC, ES, GM, SM or IVUS: devices that annotate their frames;
    * ImageType with SECONDARY (value 2) or a value SCREEN SAVE / SCREENSHOT / CAPTURE: derived
      screenshots of a viewer;
    * ConversionType DV, DF, SD, SI or DRW: converted from video, film, scanned paper or drawings;
    * SOP class Secondary Capture (any of 1.2.840.10008.5.1.4.1.1.7[.x]) or Visible Light
      (1.2.840.10008.5.1.4.1.1.77.1.x) unless the header says it holds an acquisition's primary
      image (Modality NM, PT, CR, DX, MG, CT, MR, RF, XA, IO or PX and ImageType value 2 PRIMARY):
      old workstations export scans that way (pydicom's real bone scan JPEG2000.dcm is one: SC,
      NM, DERIVED\\PRIMARY, ConversionType WSD), while screens, photographs and reports are not.

    BurnedInAnnotation=NO does not lift the rule: on these sources it is what the device writes by
    default, not a check. The caller decides what to do (``burned_in_policy``).
    """
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        return None  # an SR or an encapsulated document: its content is header data, handled as such
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _PRONE_MODALITIES:
        return f"modality {modality}"
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else [str(v).strip().upper() for v in image_type]
    if (len(image_type) > 1 and image_type[1] == "SECONDARY") or _PRONE_IMAGE_TYPES & set(image_type[2:]):
        return "ImageType " + "\\".join(image_type[:2])
    conversion = str(ds.get("ConversionType", "") or "").strip().upper()
    if conversion in _PRONE_CONVERSIONS:
        return f"ConversionType {conversion}"
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    primary = modality in _ACQUISITION_MODALITIES and len(image_type) > 1 and image_type[1] == "PRIMARY"
    if sop_class.startswith(_PRONE_CLASS_PREFIXES) and not primary:
        return f"SOP class {UID(sop_class).name}"
    return None


def clear_unused_high_bits(ds: Dataset, syntax: UID) -> bool:
    """Zero the bits above HighBit (and below HighBit - BitsStored + 1) of native PixelData, in place.

    Old devices store overlays (a drawn name, a region) in the unused high bits of each pixel word;
    removing the 60xx description leaves the drawing there. Returns True if any bit was cleared.
    Encapsulated (compressed) pixel data is left as it is: its codec's precision is normally
    BitsStored, and re-encoding would change the image.
    """
    if "PixelData" not in ds or syntax.is_compressed:
        return False
    allocated, stored = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
    high_bit = int(ds.get("HighBit", stored - 1) if ds.get("HighBit") is not None else stored - 1)
    if allocated not in (8, 16, 32) or not 0 < stored < allocated:
        return False
    dtype = np.dtype(f"u{allocated // 8}").newbyteorder("<" if syntax.is_little_endian else ">")
    raw = bytes(ds.PixelData)
    n = len(raw) // dtype.itemsize
    words = np.frombuffer(raw, dtype=dtype, count=n)
    mask = ((1 << stored) - 1) << max(high_bit + 1 - stored, 0)
    cleared = (words & mask).astype(dtype)  # the byte order of the file, whatever numpy computed in
    if np.array_equal(cleared, words):
        return False
    ds.PixelData = cleared.tobytes() + raw[n * dtype.itemsize :]
    logger.debug("cleared pixel bits outside BitsStored")
    return True


# ------------------------------------------------------------------------------------- anonymizer
@dataclass(frozen=True)
class _Context:
    """Per-dataset state of one anonymization (one patient)."""

    shift: TemporalShift  # zero when the dataset is already ours
    remap_uids: bool
    pseudonym: str | None  # None: keep PatientID/PatientName (already pseudonymous)


class Anonymizer:
    """Pure, picklable PS3.15 de-identifier: ``anonymize(ds)`` returns a new dataset.

    Args:
        secret: key of every keyed hash (UIDs, pseudonyms, date shifts); see ``load_secret``.
        cfg: the ``anonymize`` section of params.yaml.
    """

    def __init__(self, secret: bytes, cfg: AnonymizeConfig, burned_in_policy: str | None = None) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise MissingSecretError(f"anonymization key is shorter than {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.cfg = cfg
        self.burned_in_policy = burned_in_policy or cfg.burned_in_policy  # params `anonymize.burned_in_policy`
        if self.burned_in_policy not in BURNED_IN_POLICIES:
            raise ValueError(f"burned_in_policy must be one of {BURNED_IN_POLICIES}, got {self.burned_in_policy!r}")
        self._root = cfg.uid_root if cfg.uid_root.endswith(".") else cfg.uid_root + "."
        if len(self._root) > 40 or not re.fullmatch(r"([1-9]\d*|0)(\.([1-9]\d*|0))*\.", self._root):
            raise ValueError(
                f"uid_root must be a short dotted numeric root such as '2.25.', got {cfg.uid_root!r}"
            )

    def __repr__(self) -> str:  # never show the key
        return f"Anonymizer(uid_root={self._root!r}, max_date_shift_days={self.cfg.max_date_shift_days})"

    # keyed hashes ---------------------------------------------------------------------------------
    def pseudonym(self, patient_id: str) -> str:
        """Keyed pseudonym written as PatientID and PatientName (16 hex digits, upper case)."""
        return _mac(self._secret, "patient", patient_id.strip())[:16].upper()

    def date_shift_days(self, patient_id: str) -> int:
        """The patient's date offset in days, in [-max_date_shift_days, -1]."""
        h = int(_mac(self._secret, "date-shift", patient_id.strip())[:16], 16)
        return -(1 + h % self.cfg.max_date_shift_days)

    def time_shift_micros(self, patient_id: str) -> int:
        """The patient's time-of-day offset in (-1 day, 0] microseconds, keyed like the date offset.

        Microseconds rather than whole seconds so that fractional seconds (a near-unique key back to
        the source archive) change too; values are truncated to their own precision, so a value
        without fraction moves by whole seconds.
        """
        return -(int(_mac(self._secret, "time-shift", patient_id.strip())[:16], 16) % DAY_US)

    def temporal_shift(self, patient_id: str) -> TemporalShift:
        """The patient's offset of every date and time: ``date_shift_days`` + ``time_shift_micros``."""
        return TemporalShift(self.date_shift_days(patient_id), self.time_shift_micros(patient_id))

    def remap_uid(self, uid: str) -> str:
        """Keyed, consistent UID replacement; well-known UIDs (classes, syntaxes) are returned as is."""
        uid = str(uid).strip().rstrip("\0")
        if uid and UID(uid).name != uid:  # registered in PS3.6 Annex A
            return uid
        n = int(_mac(self._secret, "uid", uid)[:32], 16)  # 128 bits, like a UUID under 2.25
        digits = str(n % 10 ** (64 - len(self._root)))
        return self._root + digits

    def _marker(self, sop_instance_uid: str) -> str:
        return _MARKER_PREFIX + _mac(self._secret, "marker", sop_instance_uid)[:12]

    def is_deidentified_by_us(self, ds: Dataset) -> bool:
        """True if ``ds`` is bonescan output made under this secret (then dates and UIDs stay)."""
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            return False
        if str(ds.get("LongitudinalTemporalInformationModified", "")).upper() != "MODIFIED":
            return False
        codes = {str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", [])}
        if not {profile_e1_1.BASIC_CODE, profile_e1_1.OPTION_CODE} <= codes:
            return False
        methods = ds.get("DeidentificationMethod", [])
        methods = [methods] if isinstance(methods, str) else list(methods)
        expected = self._marker(str(ds.get("SOPInstanceUID", "")))
        return any(hmac.compare_digest(str(m), expected) for m in methods)

    # public entry -----------------------------------------------------------------------------------
    def anonymize(self, ds: Dataset) -> Dataset:
        """Return a de-identified copy of ``ds`` (never modified) with file meta for writing.

        Raises:
            BurnedInAnnotationError: BurnedInAnnotation is YES and ``cfg.allow_burned_in`` is False.
            AnonymizationError: no SOPInstanceUID, or a DICOMDIR (its records point at raw paths).
        """
        if not str(ds.get("SOPInstanceUID", "")).strip():
            raise AnonymizationError("no SOPInstanceUID")
        if ds.get("SOPClassUID") == MediaStorageDirectoryStorage:
            raise AnonymizationError("media storage directory (DICOMDIR), not an instance")
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES" and not self.cfg.allow_burned_in:
            raise BurnedInAnnotationError("burned-in annotation (BurnedInAnnotation=YES)")
        prone = burned_in_prone(ds)
        if prone and self.burned_in_policy == "quarantine":
            raise BurnedInAnnotationError(f"source that commonly burns in text ({prone})")
        if self.is_deidentified_by_us(ds):
            ctx = _Context(shift=TemporalShift(0), remap_uids=False, pseudonym=None)
        else:
            key = _patient_key(ds)
            ctx = _Context(self.temporal_shift(key), True, self.pseudonym(key))
        out = self._clean_dataset(ds, ctx, top=True)
        if ctx.pseudonym and "PatientID" not in out:  # Type 2; ingest and split group by it
            out.PatientID = ctx.pseudonym
        clear_unused_high_bits(out, _encoding_syntax(ds, getattr(ds, "file_meta", None)))
        self._mark(out)
        out.file_meta = self._file_meta(ds, out)
        return out

    # recursion --------------------------------------------------------------------------------------
    def _clean_dataset(self, ds: Dataset, ctx: _Context, top: bool = False) -> Dataset:
        out = Dataset()
        for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
            try:
                elem = ds[tag]  # converts the raw value; odd files fail here, never with PHI in the message
            except Exception as exc:  # noqa: BLE001
                raise AnonymizationError(f"unreadable element {tag} ({type(exc).__name__})") from exc
            new = self._clean_element(elem, ctx, top, ds)
            if new is not None:
                out.add(new)
        return out

    def _clean_element(
        self, elem: DataElement, ctx: _Context, top: bool, parent: Dataset
    ) -> DataElement | None:
        tag: BaseTag = elem.tag
        if tag.is_private or tag.element == 0 or (tag.group & 0xFF00) in (0x5000, 0x6000):
            return None  # private, group lengths (stale after removals), curves, overlays
        row = profile_e1_1.BY_TAG.get(int(tag))
        if row is None:
            return self._unlisted(elem, ctx, parent)
        if row.keyword == "PatientID":
            return self._patient_id(elem, ctx, top)
        if row.keyword == "PatientName" and top:
            return _element(elem, ctx.pseudonym) if ctx.pseudonym else _copy(elem)
        if row.modified_dates == "C":
            cleaned = self._temporal(elem, ctx, parent)
            if cleaned is not None:
                return cleaned
        action = _RESOLVE[row.basic]
        if action in ("X", "Z", "D"):
            return self._remove_empty_or_dummy(action, elem, ctx)
        if action == "U":
            return self._uid(elem, ctx)
        # U*: keep the referencing structure, remap the instance UIDs inside it
        if elem.VR == "SQ":
            return self._sequence(elem, ctx)
        return self._uid(elem, ctx) if elem.VR == "UI" else _empty(elem)

    def _remove_empty_or_dummy(self, action: str, elem: DataElement, ctx: _Context) -> DataElement | None:
        """PS3.15 actions X (remove), Z (zero length) and D (dummy value), wherever the rule came from."""
        if action == "X":
            return None
        return _empty(elem) if action == "Z" else self._dummy(elem, ctx)

    def _unlisted(self, elem: DataElement, ctx: _Context, parent: Dataset) -> DataElement | None:
        """Attributes outside Table E.1-1: the rules of ``beyond_e1_1`` (they only remove more)."""
        vr, keyword = elem.VR, elem.keyword or ""
        action = beyond_e1_1.ACTIONS.get(keyword)
        if action in ("X", "Z", "D"):
            return self._remove_empty_or_dummy(action, elem, ctx)
        if vr == "SQ":
            return self._sequence(elem, ctx)
        if vr in ("DA", "DT", "TM"):
            return self._temporal(elem, ctx, parent)  # None (removed) if it cannot be shifted
        if vr == "PN" or (not dictionary_has_tag(elem.tag) and not repeater_has_tag(elem.tag)):
            return None
        if vr in _FREE_TEXT_VRS and "Comment" in keyword:
            return None
        if vr in beyond_e1_1.LONG_TEXT_VRS:  # e.g. SR TextValue, free text anywhere
            return _element(elem, _TEXT_DUMMY)
        if keyword in ("CodeMeaning", "CodingSchemeDesignator") and beyond_e1_1.is_local_code(
            str(parent.get("CodingSchemeDesignator", ""))
        ):
            return _element(elem, _TEXT_DUMMY if keyword == "CodeMeaning" else beyond_e1_1.LOCAL_SCHEME_DUMMY)
        if vr == "UI" and (action == "U" or not beyond_e1_1.keeps_uid(keyword)):
            return self._uid(elem, ctx)  # well-known UIDs are returned unchanged by remap_uid
        return _copy(elem)

    def _sequence(self, elem: DataElement, ctx: _Context) -> DataElement:
        items = [self._clean_dataset(item, ctx) for item in (elem.value or [])]
        return DataElement(elem.tag, "SQ", Sequence(items))

    def _patient_id(self, elem: DataElement, ctx: _Context, top: bool) -> DataElement:
        if ctx.pseudonym is None:
            return _copy(elem)
        if top:
            return _element(elem, ctx.pseudonym)
        value = str(elem.value or "").strip()  # another patient's ID inside a sequence: its own pseudonym
        return _element(elem, self.pseudonym(value) if value else "")

    def _temporal(self, elem: DataElement, ctx: _Context, parent: Dataset) -> DataElement | None:
        """Action C: move DA/DT/TM by the patient's offset (see ``TemporalShift``); keep the UTC offset.

        A DA moves with its paired TM (StudyDate with StudyTime, "...Date" with "...Time" in the same
        dataset), so date and time stay one instant. None if a value cannot be shifted.
        """
        vr = elem.VR
        if vr == "SH":  # TimezoneOffsetFromUTC: the shift moves local time, the zone stays
            return _copy(elem)
        if vr not in ("DA", "DT", "TM"):
            return None
        values = _values(elem)
        if not values or ctx.shift.is_zero:
            return _copy(elem)
        shift = ctx.shift
        if vr == "TM":
            shifted = [shift_time(str(v), shift) for v in values]
        elif vr == "DT":
            shifted = [shift_datetime(str(v), shift) for v in values]
        else:
            times = _paired_times(elem, parent, len(values))
            shifted = [shift_date(str(v), shift.days, t, shift.micros) for v, t in zip(values, times, strict=True)]
        if any(s is None for s in shifted):
            return None
        return _element(elem, shifted if len(shifted) != 1 else shifted[0])

    def _uid(self, elem: DataElement, ctx: _Context) -> DataElement:
        if elem.VR != "UI":
            return _empty(elem)
        if not ctx.remap_uids:
            return _copy(elem)
        mapped = [self.remap_uid(str(v)) for v in _values(elem) if str(v).strip()]
        return _element(elem, mapped if len(mapped) != 1 else mapped[0]) if mapped else _empty(elem)

    def _dummy(self, elem: DataElement, ctx: _Context) -> DataElement:
        vr = elem.VR.split(" or ")[0]
        if vr == "SQ":
            return self._sequence(elem, ctx)  # its free text is dummied like free text everywhere
        if vr == "UI":
            return self._uid(elem, ctx) if not elem.is_empty else _element(elem, self.remap_uid(""), vr)
        if vr in _BINARY_VRS:
            return _element(elem, b"\0\0", vr)
        return _element(elem, _DUMMY_BY_VR.get(vr, _TEXT_DUMMY), vr)

    # additions ------------------------------------------------------------------------------------
    def _mark(self, out: Dataset) -> None:
        """PS3.15 E.1.1 6: record that (and how) the identity was removed.

        Both attributes are written from scratch: an input's method text and code items could carry
        anything (names, raw dates, private tags), so nothing of them is copied.
        """
        out.PatientIdentityRemoved = "YES"
        out.LongitudinalTemporalInformationModified = "MODIFIED"
        out.DeidentificationMethod = self._marker(str(out.SOPInstanceUID))
        items = []
        for value, scheme, meaning in (_BASIC_CODE, _OPTION_CODE):
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
            items.append(code)
        out.DeidentificationMethodCodeSequence = Sequence(items)

    def _file_meta(self, ds_in: Dataset, out: Dataset) -> FileMetaDataset:
        """Fresh file meta: class and transfer syntax kept, instance UID = new SOPInstanceUID, no AE titles."""
        meta_in = getattr(ds_in, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = meta_in.get("MediaStorageSOPClassUID") or out.get("SOPClassUID", "")
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        meta.TransferSyntaxUID = meta_in.get("TransferSyntaxUID") or _encoding_syntax(ds_in)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
        return meta


def _patient_key(ds: Dataset) -> str:
    """What identifies the patient: PatientID, else name + birth date, else the study."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return pid
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}|{str(ds.get('PatientBirthDate', '') or '').strip()}"
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if study:
        return f"study:{study}"
    raise AnonymizationError("no PatientID, PatientName or StudyInstanceUID to key the patient pseudonym on")


def _paired_times(elem: DataElement, parent: Dataset, n: int) -> list[str | None]:
    """The TM values that make one instant with the DA ``elem`` ("StudyDate" -> "StudyTime"), or Nones."""
    keyword = elem.keyword or ""
    if "Date" not in keyword:
        return [None] * n
    head, _, tail = keyword.rpartition("Date")
    partner_tag = tag_for_keyword(head + "Time" + tail)
    partner = parent.get(partner_tag) if partner_tag is not None else None
    if partner is None or partner.VR != "TM":
        return [None] * n
    times = [str(t) for t in _values(partner)]
    return times if len(times) == n else [None] * n  # type: ignore[return-value]


def _encoding_syntax(ds: Dataset, meta: FileMetaDataset | None = None) -> UID:
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(meta.TransferSyntaxUID)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian


def _values(elem: DataElement) -> list[Any]:
    if elem.is_empty:
        return []
    return list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]


def _copy(elem: DataElement) -> DataElement:
    new = DataElement(elem.tag, elem.VR, copy.deepcopy(elem.value), already_converted=True)  # as read
    new.is_undefined_length = elem.is_undefined_length  # encapsulated pixel data
    return new


def _element(elem: DataElement, value: Any, vr: str | None = None) -> DataElement:
    return DataElement(elem.tag, vr or elem.VR, value)


def _empty(elem: DataElement) -> DataElement:
    vr = elem.VR
    if vr == "SQ":
        return DataElement(elem.tag, vr, Sequence())
    if vr in _TEXT_VRS:
        return DataElement(elem.tag, vr, "")
    if vr in _BINARY_VRS:
        return DataElement(elem.tag, vr, b"")
    return DataElement(elem.tag, vr, None)


# -------------------------------------------------------------------------------------------- tree
@dataclass
class AnonymizationReport:
    """Outcome of ``anonymize_tree``; safe to print and store (no paths or values of the input)."""

    files: int = 0  # input files seen
    anonymized: int = 0  # instances written to dst
    already_deidentified: int = 0  # inputs that were bonescan output under this key (kept as they were)
    quarantined: list[dict[str, str]] = field(default_factory=list)  # {"file_id", "reason"}
    leaks: int = 0  # residual-PHI hits in the written files (should be 0)
    details: list[dict[str, str]] = field(default_factory=list)  # where the leaks are, never what
    profile: str = f"PS3.15 E.1-1 ({profile_e1_1.EDITION}) basic profile + retain longitudinal modified dates"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def anonymize_tree(src: Path, dst: Path, cfg: AnonymizeConfig, secret: bytes) -> AnonymizationReport:
    """De-identify every DICOM file under ``src`` into ``dst/<new SOPInstanceUID>.dcm``.

    ``src`` is only ever opened read-only. Files that are not DICOM, cannot be read, carry burned-in
    annotation (or come from a burned-in-prone source under ``burned_in_policy="quarantine"``) or
    cannot be written are quarantined with a reason (listed by a keyed ``file_id``, because export
    paths often hold patient names). Each file is written under a temporary name, read back and scanned
    for values of its input's identity (``phi_scan``); a file with residual PHI is deleted, quarantined
    and counted in ``leaks`` (so the CLI exits non-zero), and only clean files get their final name.
    The report is also written to ``dst/REPORT_NAME``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if dst.resolve() == src.resolve():
        raise ValueError("destination must differ from the source folder (raw files are never modified)")
    anon = Anonymizer(secret, cfg)
    dst.mkdir(parents=True, exist_ok=True)
    report, phi = AnonymizationReport(), PhiScanReport()
    written: set[str] = set()
    from bonescan.intake import FileRejected, check_regular_file  # the intake imports this module

    for path in _walk(src, dst):
        report.files += 1
        rel = path.relative_to(src).as_posix()
        try:  # a FIFO would block the read forever; a link may lead out of SRC or loop
            check_regular_file(path, src)
        except FileRejected as rejected:
            report.quarantined.append({"file_id": file_id(rel, secret), "reason": rejected.reason})
            continue
        reason = _anonymize_file(path, dst, anon, written, phi, report)
        if reason:
            report.quarantined.append({"file_id": file_id(rel, secret), "reason": reason})
    report.leaks, report.details = phi.leaks, phi.details
    (dst / REPORT_NAME).write_text(report.to_json())
    logger.info("anonymized %d of %d files (%d quarantined, %d residual-PHI hits)",
                report.anonymized, report.files, len(report.quarantined), report.leaks)  # fmt: skip
    return report


def _walk(src: Path, dst: Path) -> Iterable[Path]:
    """Every entry under `src` but folders (links and FIFOs included, for the caller to reject), not DST's."""
    from bonescan.intake import iter_files

    inside_dst = os.path.realpath(dst) + os.sep
    for rel in iter_files(src):
        path = src / rel
        if not os.path.realpath(path).startswith(inside_dst) and path.name != REPORT_NAME:
            yield path


def _anonymize_file(
    path: Path,
    dst: Path,
    anon: Anonymizer,
    written: set[str],
    phi: PhiScanReport,
    report: AnonymizationReport,
) -> str | None:
    """Anonymize one file; return a quarantine reason (free of patient data) or None on success."""
    try:
        with path.open("rb") as fh:  # read-only; every value is loaded before the file closes
            ds = dcmread(fh)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # noqa: BLE001 - any parser failure is a quarantine reason, never a crash
        return f"unreadable DICOM ({type(exc).__name__})"
    try:
        already = anon.is_deidentified_by_us(ds)
        values = identifying_values(ds)
        if already:  # its PatientID/PatientName are our pseudonym, kept on purpose
            values -= {str(ds.get("PatientID", "")), str(ds.get("PatientName", ""))}
        out = anon.anonymize(ds)
    except AnonymizationError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001
        return f"cannot anonymize ({type(exc).__name__})"
    name = f"{out.SOPInstanceUID}.dcm"
    if name in written:
        return "duplicate SOPInstanceUID (an earlier file was written under the same UID)"
    target = dst / name
    tmp = dst / f".{name}.{os.getpid()}.tmp"  # the file gets its name only once it scanned clean
    try:
        dcmwrite(tmp, out, enforce_file_format=True)
        back = dcmread(tmp, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        return f"cannot write anonymized DICOM ({type(exc).__name__})"
    leaks: list[Leak] = scan_dataset(back, values, name, ds)
    phi.add(leaks)
    if leaks:  # nothing that still identifies the patient stays in dst
        tmp.unlink()
        return f"residual PHI after anonymization in {len(leaks)} place(s); output removed"
    os.replace(tmp, target)
    written.add(name)
    report.anonymized += 1
    report.already_deidentified += int(already)
    return None
