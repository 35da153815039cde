"""Residual-PHI scan: does an anonymized dataset, or its file name, still carry its input's identity?

The anonymizer follows a table; this module checks the outcome independently. From the INPUT it
collects the values that identify the patient (``identifying_values``), then searches every element
of the OUTPUT -- sequences, private tags, file meta -- and the output's relative path for them
(``scan_dataset``). Reports say where a value was found (tag, keyword, location), never the value.

Matching works on tokens (runs of letters/digits, case-insensitive): "DOE^JOHN", "Doe John",
"DOE_JOHN_4711" and "john doe" all contain the tokens DOE, JOHN. A value matches when its tokens
occur consecutively and whole (so "LEE" does not match "SLEEP", "4711" does not match "47110").

What counts as identifying:

* always searched: full person names (every PN element anywhere -- patient, physicians, operators --
  as written, "Last First" and "First Last"), patient IDs, other IDs, accession and study/procedure
  IDs, addresses and phone numbers, the birth date and every other raw date (each DA, and the date
  part of each DT, at any depth) in the formats YYYYMMDD, YYYY-MM-DD, YYYY/MM/DD, DD.MM.YYYY,
  DD/MM/YYYY, MM/DD/YYYY, every raw time of day given to the second or finer (TM, and the time part of
  DT) and every complete DT as written -- the output must hold only shifted dates and times (not
  searched when the input declares PatientIdentityRemoved=YES with modified dates: then they are
  shifted already);
* searched unless the same tokens occur in a value the anonymizer keeps (which the standard judges
  non-identifying, so a hit there is a coincidence, not a leak): single name components, institution,
  department, station, device serial, issuer; every PN/LO/SH/LT/ST/UT/UC value that Table E.1-1
  removes, empties or replaces, and those that ``beyond_e1_1`` cleans outside the table (free text,
  ContentLabel, ImageID, CodeMeaning of local codes ...); every text value of a private tag, binary
  (OB/UN) ones included when they are printable text, inside sequences too. Examples of coincidences
  this avoids: InstitutionName "TOSHIBA" vs Manufacturer "TOSHIBA_MEC", a test patient "Perfusion^MCA
  Stroke" vs ImageType PERFUSION, ProtocolName "WHOLE BODY" vs ImageType WHOLE BODY.

The skip rule for values too generic to mean anything: fewer than 3 letters/digits in all, a pure
number with fewer than 4 digits, or a stop word (ANON, ANONYMOUS, UNKNOWN, NONE, YES, NO, TEST,
name titles such as DR/MR ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from bonescan.dicom import beyond_e1_1, profile_e1_1

MIN_CHARS = 3  # letters/digits; shorter values ("Y", "M", "01") occur everywhere
MIN_DIGITS = 4  # pure numbers: "1", "001", "512" are image sizes and counters, not identities
MAX_BINARY_SCAN = 64 * 2**20  # bytes of an OB/UN value decoded and searched (a whole encapsulated PDF)
MAX_PRIVATE_TEXT = 256  # a private binary value this short and printable is text (an ID, a name)
MAX_PRIVATE_UN = 65536  # bytes of an input's binary value read for identities (longer: data, not text)
MIN_TIME_DIGITS = 6  # HHMMSS: coarser times ("10", "1015") are too common to search for

STOP_WORDS = frozenset({
    "ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED", "UNKNOWN", "NONE", "NULL", "NA", "N A", "YES", "NO",
    "TEST", "PATIENT", "DOCTOR", "DR", "MD", "PHD", "MR", "MRS", "MS", "MISS", "JR", "SR", "REMOVED",
    "NOT APPLICABLE", "BONESCAN", "19000101",
})  # fmt: skip

# Identify the patient whatever else the dataset holds: always searched.
_PATIENT_KEYWORDS = frozenset({
    "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "MedicalRecordLocator", "AccessionNumber", "StudyID", "AdmissionID", "RequestedProcedureID",
    "PerformedProcedureStepID", "ScheduledProcedureStepID", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "PatientAddress", "PatientTelephoneNumbers",
    "PatientTelecomInformation", "PersonAddress", "PersonTelephoneNumbers", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
})  # fmt: skip
# Identify the site or device; they often share words with kept values (InstitutionName "TOSHIBA",
# Manufacturer "TOSHIBA_MEC"), so they are searched only where they are not part of a kept value.
_SITE_KEYWORDS = frozenset({
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "IssuerOfPatientID", "MilitaryRank",
})  # fmt: skip
_DESCRIPTIVE_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
_KEPT_ACTIONS = frozenset({"U", "X/Z/U*"})  # UID rows: remapped references, not text to search for
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" separates like a space
_PIXEL_GROUP = 0x7FE0


@dataclass(frozen=True)
class Leak:
    """One place where an identifying value of the input was found in the output.

    Attributes:
        file: the output's relative path (path parts that matched are masked with ***).
        location: keyword path such as ``RadiopharmaceuticalInformationSequence[0].PatientName``,
            ``file_meta.SourceApplicationEntityTitle`` or ``path``.
        tag: "(gggg,eeee)" of the element ("" for the path).
        keyword: the element's keyword ("" for private tags and the path).
    """

    file: str
    location: str
    tag: str
    keyword: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PhiScanReport:
    """Accumulated scan result; serialises to ``{"files": N, "leaks": 0, "details": [...]}``."""

    files: int = 0
    leaks: int = 0
    details: list[dict[str, str]] = field(default_factory=list)

    def add(self, leaks: list[Leak]) -> None:
        """Record the scan of one file."""
        self.files += 1
        self.leaks += len(leaks)
        self.details.extend(leak.to_dict() for leak in leaks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ------------------------------------------------------------------------------ identifying values
def identifying_values(ds: Dataset) -> set[str]:
    """Identifying values of an INPUT dataset (see module docstring for what and why)."""
    strict: set[str] = set()  # always searched
    soft: set[str] = set()  # searched unless part of a value the anonymizer keeps
    kept: list[str] = []
    dates_modified = _already_shifted(ds)
    for _, elem, parent in _walk_with_parent(ds):
        texts = _texts(elem, MAX_PRIVATE_UN)  # an input's large binaries are data, not identities
        if not texts:
            continue
        keyword = elem.keyword or ""
        row = profile_e1_1.BY_TAG.get(int(elem.tag))
        if elem.VR in ("DA", "DT", "TM"):
            if not dates_modified:
                strict.update(v for text in texts for v in _temporal_forms(elem.VR, text))
        elif elem.VR == "PN":
            for value in _values(elem):
                whole, parts = _name_forms(value)
                strict.update(whole)
                soft.update(parts)
        elif keyword == "PatientBirthDate":
            strict.update(v for text in texts for v in _date_forms(text))
        elif keyword in _PATIENT_KEYWORDS:
            strict.update(texts)
        elif keyword in _SITE_KEYWORDS:
            soft.update(texts)
        elif elem.tag.is_private:
            if elem.tag.element >= 0x100:  # not the creator id
                soft.update(_private_texts(elem, texts))
        elif row is not None:
            if elem.VR in _DESCRIPTIVE_VRS and row.basic not in _KEPT_ACTIONS and row.modified_dates != "C":
                soft.update(texts)
        elif _cleaned_outside_table(elem, keyword, parent):
            soft.update(texts)
        elif elem.tag.group & 0xFF00 not in (0x5000, 0x6000):
            kept.append(" | ".join(_normalize(t) for t in texts))
    kept_text = f" {' | '.join(kept)} "
    soft = {v for v in soft if f" {_normalize(v)} " not in kept_text}
    return {v for v in strict | soft if is_meaningful(v)}


def _already_shifted(ds: Dataset) -> bool:
    """The input says its dates and times are already modified (PS3.15 E.1-1 longitudinal option).

    Then its dates are no longer the patient's, and they are not searched for (the anonymizer still
    shifts them unless the data is its own output).
    """
    return (
        str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"
        and str(ds.get("LongitudinalTemporalInformationModified", "")).strip().upper() == "MODIFIED"
    )


def _cleaned_outside_table(elem: DataElement, keyword: str, parent: Dataset) -> bool:
    """Descriptive text outside Table E.1-1 that bonescan's extra rules (``beyond_e1_1``) clean."""
    if elem.VR not in _DESCRIPTIVE_VRS | {"CS"}:
        return False
    if beyond_e1_1.ACTIONS.get(keyword) in ("X", "Z", "D"):
        return True
    if keyword in ("CodeMeaning", "CodingSchemeDesignator"):
        return beyond_e1_1.is_local_code(str(parent.get("CodingSchemeDesignator", "")))
    return elem.VR in beyond_e1_1.LONG_TEXT_VRS or (elem.VR != "CS" and "Comment" in keyword)


def _private_texts(elem: DataElement, texts: list[str]) -> list[str]:
    """A private element's values that can identify: text values as they are, printable binaries."""
    if elem.VR not in ("OB", "OW", "UN"):
        return texts if elem.VR in _DESCRIPTIVE_VRS | {"CS", "DS", "IS", "AE", "UR"} else []
    out = []
    for text in texts:  # decoded as Latin-1 by _texts; a backslash separates values
        stripped = text.strip("\0 ")
        if len(stripped) <= MAX_PRIVATE_TEXT and stripped.isprintable():
            out.extend(v.strip() for v in stripped.split("\\") if v.strip())
        elif elem.VR == "UN" and len(text) <= MAX_PRIVATE_UN:
            out.append(text)
    return out


def _temporal_forms(vr: str, value: str) -> set[str]:
    """A raw DA/DT/TM value in the forms searched for (precise values only; see the module docstring)."""
    value = value.strip()
    forms: set[str] = set()
    if vr == "DA":
        for part in value.split("-"):
            if _is_date(part):
                forms |= _date_forms(part)
    elif vr == "DT":
        m = re.fullmatch(r"(\d{8})(\d*(?:\.\d+)?)([+-]\d{4})?", value)
        if m and _is_date(m[1]):
            forms |= _date_forms(m[1])
            if len(m[2]) >= MIN_TIME_DIGITS:
                forms |= {value, m[2]}
    elif vr == "TM":
        forms |= {p.strip() for p in value.split("-") if sum(c.isdigit() for c in p) >= MIN_TIME_DIGITS}
    return {f for f in forms if f.strip("0.:") and _normalize(f) not in STOP_WORDS}  # midnight names no one


def _is_date(value: str) -> bool:
    return len(_date_forms(value)) > 1


_TEMPORAL_FORM = re.compile(
    r"\d{8}|\d{4}[-/]\d{2}[-/]\d{2}|\d{2}[./]\d{2}[./]\d{4}|\d{6}(?:\.\d+)?|\d{8,14}(?:\.\d+)?(?:[+-]\d{4})?"
)


def names_anyone(values: Iterable[str]) -> bool:
    """True if ``values`` hold more than dates and times: a name, an ID, an address, a site ...

    A header cut short may yield only its dates; they say nothing about which folder names identify.
    """
    return any(not _TEMPORAL_FORM.fullmatch(v.strip()) for v in values)


def is_meaningful(value: str) -> bool:
    """False for values too short or too generic to identify anyone (the skip rule)."""
    norm = _normalize(value)
    compact = norm.replace(" ", "")
    if len(compact) < MIN_CHARS or norm in STOP_WORDS:
        return False
    return not (compact.isdigit() and len(compact) < MIN_DIGITS)


def _name_forms(value: Any) -> tuple[set[str], set[str]]:
    """A person name as written and as people write it ("Last First", "First Last"), and its parts."""
    pn = value if isinstance(value, PersonName) else PersonName(str(value))
    whole, parts = {str(pn)}, set()
    for group in pn.components:  # alphabetic, ideographic, phonetic
        comps = [c.strip() for c in group.split("^") if c.strip()]
        whole.add(" ".join(comps))
        if len(comps) >= 2:
            whole.update({f"{comps[0]} {comps[1]}", f"{comps[1]} {comps[0]}"})
            parts.update(comps)
    return whole, parts


def _date_forms(value: str) -> set[str]:
    """A DA value in the formats people type dates in."""
    m = re.fullmatch(r"(\d{4})\.?(\d{2})\.?(\d{2})", value.strip())
    if not m:
        return {value}
    y, mo, d = m.groups()
    try:
        date(int(y), int(mo), int(d))
    except ValueError:
        return {value}
    return {
        f"{y}{mo}{d}",
        f"{y}-{mo}-{d}",
        f"{y}/{mo}/{d}",
        f"{d}.{mo}.{y}",
        f"{d}/{mo}/{y}",
        f"{mo}/{d}/{y}",
    }


# ------------------------------------------------------------------------------------------ scan
def scan_dataset(ds_out: Dataset, values: set[str], relpath: str, ds_in: Dataset | None = None) -> list[Leak]:
    """Every element of ``ds_out`` (sequences, private tags, file meta) and ``relpath`` that contains one
    of ``values``; the values themselves appear nowhere in the result.

    With the input ``ds_in``, a date or time element whose digits differ from the input's element at
    the same location was shifted and is not searched: a shifted value equal to ANOTHER raw date or
    time of the input (StudyTime moved by the patient's offset onto the raw injection time) is a
    coincidence of about one in 86,400 per pair of times -- over a cohort's hundreds of studies, a
    likely one -- and carries nothing of the input. A temporal element left as it was, and every
    other element, is searched as without ``ds_in``.
    """
    pattern = _pattern(frozenset(values))
    if pattern is None:
        return []
    masked, path_hits = pattern.subn("***", relpath)
    shifted = _shifted_locations(ds_in, ds_out) if ds_in is not None else set()
    hits = [(location, elem) for location, elem in _walk(ds_out, "")
            if location not in shifted and _matches(pattern, elem)]  # fmt: skip
    meta = getattr(ds_out, "file_meta", None)
    if meta is not None:
        hits += [(location, elem) for location, elem in _walk(meta, "file_meta.") if _matches(pattern, elem)]
    leaks = [Leak(masked, location, _tag_str(elem), elem.keyword or "") for location, elem in hits]
    if path_hits:
        leaks.append(Leak(masked, "path", "", ""))
    return leaks


def _temporal_digits(ds: Dataset) -> dict[str, str]:
    """location -> the digits of every DA/DT/TM element (formatting such as "11:19:27" set aside)."""
    return {location: re.sub(r"\D", "", " ".join(_texts(elem)))
            for location, elem in _walk(ds, "") if elem.VR in ("DA", "DT", "TM")}  # fmt: skip


def _shifted_locations(ds_in: Dataset, ds_out: Dataset) -> set[str]:
    """Locations of output dates and times whose digits differ from the input's at the same location."""
    before = _temporal_digits(ds_in)
    return {loc for loc, digits in _temporal_digits(ds_out).items() if loc in before and digits != before[loc]}


def _pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    pieces = set()
    for value in values:
        tokens = _TOKEN.findall(value)
        if tokens and is_meaningful(value):
            pieces.add(r"[\W_]+".join(re.escape(t) for t in tokens))
    if not pieces:
        return None
    alternatives = "|".join(sorted(pieces, key=len, reverse=True))
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


def _matches(pattern: re.Pattern[str], elem: DataElement) -> bool:
    return any(pattern.search(text) for text in _texts(elem))


def _walk_with_parent(ds: Dataset) -> Iterator[tuple[str, DataElement, Dataset]]:
    """(location, element, the dataset holding it) for every element, depth first."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert; the anonymizer refuses such files
            continue
        yield elem.keyword or _tag_str(elem), elem, ds
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk_with_parent(item)


def _walk(ds: Dataset, prefix: str) -> Iterator[tuple[str, DataElement]]:
    """(location, element) for every element, depth first, sequences included."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert; the anonymizer refuses such files
            continue
        name = elem.keyword or _tag_str(elem)
        yield prefix + name, elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _walk(item, f"{prefix}{name}[{i}].")


def _texts(elem: DataElement, max_binary: int = MAX_BINARY_SCAN) -> list[str]:
    """The element's values as strings (binary values up to ``max_binary`` bytes decoded as Latin-1; no
    pixel data)."""
    if elem.VR == "SQ" or elem.is_empty or elem.tag.group == _PIXEL_GROUP:
        return []
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return [bytes(value).decode("latin-1")] if len(value) <= max_binary else []
    return [str(v) for v in _values(elem)]


def _values(elem: DataElement) -> list[Any]:
    if elem.is_empty:
        return []
    return list(elem.value) if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]


def _normalize(text: str) -> str:
    return " ".join(_TOKEN.findall(text)).upper()


def _tag_str(elem: DataElement) -> str:
    return f"({elem.tag.group:04X},{elem.tag.element:04X})"
