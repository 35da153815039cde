"""Specification of the PS3.15 Annex E de-identifier (Basic Profile + Retain Longitudinal, Modified Dates)."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import shutil
import stat
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid

from bonescan.config import AnonymizeConfig
from bonescan.dicom import beyond_e1_1, profile_e1_1
from bonescan.dicom.anonymize import (
    REPORT_NAME,
    AnonymizationError,
    Anonymizer,
    BurnedInAnnotationError,
    MissingSecretError,
    TemporalShift,
    anonymize_tree,
    create_secret,
    file_id,
    load_secret,
    shift_date,
    shift_datetime,
    shift_time,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # odd values in pydicom test files

# ------------------------------------------------------------------------------------------ helpers
DUMMIES = {"ANONYMOUS", "0", "0.0", "19000101", "19000101000000", "000000", "000Y", "b'\\x00\\x00'"}

MARKERS = {"PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
           "LongitudinalTemporalInformationModified"}  # fmt: skip
# What the standard lets each Basic Profile code turn a value into (PS3.15 E.1-1 legend).
ALLOWED = {
    "X": {"absent"},
    "Z": {"empty", "dummy"},
    "D": {"dummy", "sequence", "remapped"},
    "U": {"remapped"},
    "Z/D": {"empty", "dummy"},
    "X/Z": {"absent", "empty"},
    "X/D": {"absent", "dummy", "sequence", "remapped"},
    "X/Z/D": {"absent", "empty", "dummy", "sequence", "remapped"},
    "X/Z/U*": {"absent", "empty", "sequence", "remapped"},
}


def read(path: Path | str, **kwargs) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, **kwargs)


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return read(buf)


def _parse_da(value: str) -> date | None:
    try:
        return datetime.strptime(value.strip().replace(".", ""), "%Y%m%d").date()
    except ValueError:
        return None


DAY_US = 86_400_000_000


def _parse_temporal(vr: str, value: str) -> tuple[date | None, int | None, int] | None:
    """(date, microseconds since midnight, precision in us) of a DA, DT or TM value; None if invalid.

    Written independently of the anonymizer's parser: it is what the checks measure shifts with.
    """
    if vr == "DA":
        day = _parse_da(value) if len(value.replace(".", "")) == 8 else None
        return None if day is None else (day, None, DAY_US)
    if vr == "DT":
        body = value[:-5] if len(value) > 5 and value[-5] in "+-" else value
        day = _parse_da(body[:8]) if len(body) >= 8 else None
        if day is None:
            return None
        if len(body) == 8:
            return day, None, DAY_US
        clock = _parse_temporal("TM", body[8:])
        return None if clock is None else (day, clock[1], clock[2])
    clock = value.replace(":", "")
    whole, _, frac = clock.partition(".")
    if len(whole) not in (2, 4, 6) or not whole.isdigit() or (frac and (len(whole) != 6 or not frac.isdigit())):
        return None
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    unit = 10 ** (6 - len(frac)) if frac else {2: 3_600_000_000, 4: 60_000_000, 6: 1_000_000}[len(whole)]
    return None, ((hh * 60 + mm) * 60 + min(ss, 59)) * 1_000_000 + int(frac.ljust(6, "0") or 0), unit


def _values(elem: DataElement) -> list:
    if elem.is_empty:
        return []
    return list(elem.value) if elem.VM > 1 else [elem.value]


@dataclass
class Conformance:
    """Violations found while comparing an input with its anonymized output."""

    anonymizer: Anonymizer
    violations: list[str] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)
    offsets: set[int] = field(default_factory=set)  # day offsets of dates
    time_offsets: list[tuple[int, int]] = field(default_factory=list)  # (offset mod day, precision) in us

    def outcome(self, e_in: DataElement, e_out: DataElement | None) -> str:
        if e_out is None:
            return "absent"
        if e_out.is_empty:
            return "empty"
        if e_in.VR == "SQ":
            return "sequence"
        if e_in.VR == "UI" and not e_in.is_empty:
            mapped = [self.anonymizer.remap_uid(str(v)) for v in _values(e_in)]
            if [str(v) for v in _values(e_out)] == mapped:
                return "remapped"
        if str(e_out.value) == str(e_in.value) and str(e_out.value) not in DUMMIES:
            return "original"
        return "dummy"

    def temporal(self, e_in: DataElement, e_out: DataElement | None, where: str) -> bool:
        """Check action C; False if the value cannot be shifted (then the basic action applies)."""
        values = [str(v).strip() for v in _values(e_in)]
        if e_in.VR == "SH":  # TimezoneOffsetFromUTC: the shift moves local time, the zone stays
            if e_out is None or [str(v) for v in _values(e_out)] != [str(v) for v in _values(e_in)]:
                self.violations.append(f"{where}: UTC offset changed under the modified-dates option")
            return True
        if e_in.VR not in ("DA", "DT", "TM"):
            return False
        if not values:
            if e_out is not None and not e_out.is_empty:
                self.violations.append(f"{where}: empty date or time became a value")
            return True
        parsed = [_parse_temporal(e_in.VR, v) for v in values]
        if any(p is None for p in parsed):
            return False
        if e_out is None or len(_values(e_out)) != len(values):
            self.violations.append(f"{where}: shiftable date or time was not kept shifted")
            return True
        for (day_in, t_in, unit), v_out in zip(parsed, (str(v) for v in _values(e_out)), strict=True):
            got = _parse_temporal(e_in.VR, v_out.strip())
            if got is None or got[2] != unit:
                self.violations.append(f"{where}: shifted value malformed or of another precision")
                continue
            day_out, t_out, _ = got
            if day_in is not None:
                self.offsets.add((day_out - day_in).days)
            if t_in is not None:
                self.time_offsets.append(((t_out - t_in) % DAY_US, unit))
        return True

    def times_consistent(self) -> bool:
        """Every time of day moved by one offset (to the precision of each value)."""
        if not self.time_offsets:
            return True
        ref, ref_unit = min(self.time_offsets, key=lambda o: o[1])
        return all((ref - off + ref_unit) % DAY_US < unit + ref_unit for off, unit in self.time_offsets)

    def check(self, ds_in: Dataset, ds_out: Dataset, where: str = "", in_dummy: bool = False) -> None:
        for tag in ds_in.keys():  # noqa: SIM118 - a Dataset iterates over elements
            e_in = ds_in[tag]
            e_out = ds_out.get(tag)
            loc = where + (e_in.keyword or str(e_in.tag))
            if e_in.tag.is_private or (e_in.tag.group & 0xFF00) in (0x5000, 0x6000) or e_in.tag.element == 0:
                if e_out is not None:
                    self.violations.append(f"{loc}: private/curve/overlay/group-length element kept")
                continue
            row = profile_e1_1.BY_TAG.get(int(tag))
            if row is None:
                self._unlisted(e_in, e_out, loc, in_dummy, ds_in)
                continue
            self.covered.add(int(tag))
            if row.modified_dates == "C" and self.temporal(e_in, e_out, loc):
                continue
            got = self.outcome(e_in, e_out)
            if row.keyword == "PatientName" and not where:
                got = "dummy" if e_out is not None and not e_out.is_empty else got
            if e_in.is_empty and got == "empty" and row.basic != "X":
                continue  # nothing to remove or replace (e.g. an empty Type 2 UID)
            if got not in ALLOWED[row.basic]:
                self.violations.append(f"{loc}: action {row.basic} gave {got}")
            self._recurse(e_in, e_out, loc, in_dummy or row.basic == "D")

    def _unlisted(
        self, e_in: DataElement, e_out: DataElement | None, loc: str, in_dummy: bool, parent: Dataset
    ) -> None:
        if e_in.VR == "SQ":
            if e_out is None:
                self.violations.append(f"{loc}: sequence outside the table removed")
            self._recurse(e_in, e_out, loc, in_dummy)
        elif e_in.VR in ("DA", "DT", "TM"):
            if e_out is not None and not self.temporal(e_in, e_out, loc) and not e_out.is_empty:
                self.violations.append(f"{loc}: unshiftable date or time kept")
        elif e_in.VR == "PN" or "Comment" in (e_in.keyword or "") or not dictionary_has_tag(e_in.tag):
            return  # removed by bonescan's stricter rules (allowed: removal only removes more)
        elif e_in.keyword in MARKERS:
            return  # set by the anonymizer (checked in test_deidentification_is_recorded_as_the_standard_asks)
        elif e_in.keyword == "PixelData" and e_out is not None and e_out.value != e_in.value:
            if int(parent.get("BitsStored", 0)) >= int(parent.get("BitsAllocated", 0)):
                self.violations.append(f"{loc}: pixel data changed")
            elif not _same_image(parent, e_out.value):
                self.violations.append(f"{loc}: clearing unused bits changed the image")
        elif e_in.keyword in beyond_e1_1.ACTIONS and beyond_e1_1.ACTIONS[e_in.keyword] != "U":
            got = self.outcome(e_in, e_out)
            if got not in ALLOWED[beyond_e1_1.ACTIONS[e_in.keyword]] and not (e_in.is_empty and got == "empty"):
                self.violations.append(f"{loc}: bonescan's action {beyond_e1_1.ACTIONS[e_in.keyword]} gave {got}")
        elif e_in.VR in beyond_e1_1.LONG_TEXT_VRS or (
            e_in.keyword in ("CodeMeaning", "CodingSchemeDesignator")
            and beyond_e1_1.is_local_code(str(parent.get("CodingSchemeDesignator", "")))
        ):
            if e_out is None or e_out.value not in ("ANONYMOUS", beyond_e1_1.LOCAL_SCHEME_DUMMY):
                self.violations.append(f"{loc}: free text or local scheme outside the table not dummied")
        elif e_in.VR == "UI" and not e_in.is_empty and not beyond_e1_1.keeps_uid(e_in.keyword or ""):
            if self.outcome(e_in, e_out) != "remapped":
                self.violations.append(f"{loc}: instance UID outside the table not remapped")
        elif e_out is None or e_out.value != e_in.value:
            self.violations.append(f"{loc}: attribute outside the table was not kept")

    def _recurse(
        self, e_in: DataElement, e_out: DataElement | None, loc: str, in_dummy: bool = False
    ) -> None:
        if e_in.VR != "SQ" or e_out is None or e_out.is_empty:
            return
        if len(e_out.value) != len(e_in.value):
            self.violations.append(f"{loc}: sequence item count changed")
            return
        for i, (a, b) in enumerate(zip(e_in.value, e_out.value, strict=True)):
            self.check(a, b, f"{loc}[{i}].", in_dummy)


def _same_image(ds_in: Dataset, pixel_data: bytes) -> bool:
    """The decoded image of ``ds_in`` is the same with ``pixel_data`` (what readers see is unchanged)."""
    other = copy.deepcopy(ds_in)
    other.PixelData = pixel_data
    return bool((other.pixel_array == ds_in.pixel_array).all())


def forbidden_in_output(ds: Dataset, where: str = "") -> list[str]:
    """Elements that must not exist anywhere in an output: private, curves, overlays, pure-X rows."""
    bad = []
    for elem in ds:
        row = profile_e1_1.BY_TAG.get(int(elem.tag))
        loc = where + (elem.keyword or str(elem.tag))
        removed_group = elem.tag.is_private or (elem.tag.group & 0xFF00) in (0x5000, 0x6000)
        if removed_group or (row is not None and row.basic == "X" and row.modified_dates != "C"):
            bad.append(loc)
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                bad += forbidden_in_output(item, f"{loc}[{i}].")
    return bad


def legitimately_refused(ds: Dataset) -> bool:
    """Corpus files the anonymizer must refuse rather than pass."""
    return (
        not str(ds.get("SOPInstanceUID", "")).strip()
        or not any(str(ds.get(k, "") or "").strip() for k in ("PatientID", "PatientName", "StudyInstanceUID"))
        or str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
        or any(_unconvertible(ds, tag) for tag in ds.keys())  # noqa: SIM118
    )


def _unconvertible(ds: Dataset, tag) -> bool:
    try:
        ds[tag]
    except Exception:  # noqa: BLE001
        return True
    return False


def nm_study(
    patient_id: str = "4711", name: str = "DOE^JOHN", study_uid: str | None = None, **attrs
) -> Dataset:
    """A small NM whole-body instance with identity, dates, sequences and view codes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, "19650302", "M"
    ds.PatientAge = "058Y"
    ds.AccessionNumber, ds.StudyID = "ACC123456", "S77"
    ds.InstitutionName, ds.StationName = "St. Elsewhere Hospital", "GAMMA_CAM_2"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.StudyDate, ds.StudyTime = "20230114", "093000"
    ds.SeriesDate, ds.AcquisitionDate, ds.ContentDate = "20230114", "20230114", "20230114"
    ds.AcquisitionDateTime = "20230114120000.000000+0100"
    ds.StudyDescription, ds.SeriesDescription = "BONE SCAN WB", "WB ANT POST"
    ds.ImageComments = "patient John Doe, ANT POST"
    ds.Modality, ds.ImageType = "NM", ["DERIVED", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 8, 4, 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [2.26, 2.26], 1, 0
    ds.FrameIncrementPointer = 0x00540020
    ds.DetectorVector = [1, 2]
    views = []
    for value, meaning in (("G-A117", "anterior"), ("G-A118", "posterior")):
        view = Dataset()
        view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = value, "SRT", meaning
        det = Dataset()
        det.ViewCodeSequence = Sequence([view])
        det.DetectorID = "DET-SERIAL-99"  # X/D
        det.ZoomFactor = [1.0, 1.0]
        views.append(det)
    ds.DetectorInformationSequence = Sequence(views)
    radio = Dataset()
    radio.Radiopharmaceutical = "Tc-99m MDP"
    radio.RadiopharmaceuticalStartDateTime = "20230114090000+0100"
    radio.RadiopharmaceuticalStartTime = "090000"
    radio.RadionuclideTotalDose = "740"
    ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
    ds.PixelData = bytes(8 * 4 * 2 * 2)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


# ------------------------------------------------------------------------ table conformance (corpus)
def test_every_table_attribute_in_the_corpus_gets_an_action_the_standard_allows(corpus_path, anonymizer):
    ds_in = read(corpus_path)
    try:
        out = anonymizer.anonymize(ds_in)
    except AnonymizationError:
        assert legitimately_refused(ds_in)
        return
    check = Conformance(anonymizer)
    check.check(ds_in, out)
    assert check.violations == []
    assert forbidden_in_output(out) == []
    assert not check.offsets or max(check.offsets) - min(check.offsets) <= 1, "one shift per patient"
    assert all(-anonymizer.cfg.max_date_shift_days - 1 <= d <= -1 for d in check.offsets)
    assert check.times_consistent(), "one time-of-day shift per patient"
    back = roundtrip(out)  # what is written is what was checked
    assert back.SOPInstanceUID == out.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    if "TransferSyntaxUID" in getattr(ds_in, "file_meta", {}):
        assert back.file_meta.TransferSyntaxUID == ds_in.file_meta.TransferSyntaxUID
    if "MediaStorageSOPClassUID" in getattr(ds_in, "file_meta", {}):
        assert back.file_meta.MediaStorageSOPClassUID == ds_in.file_meta.MediaStorageSOPClassUID


def test_anonymizing_anonymized_output_changes_nothing(corpus_path, anonymizer):
    ds_in = read(corpus_path)
    try:
        once = anonymizer.anonymize(ds_in)
    except AnonymizationError:
        return
    twice = anonymizer.anonymize(roundtrip(once))
    assert twice == roundtrip(once)
    assert twice.file_meta.MediaStorageSOPInstanceUID == once.file_meta.MediaStorageSOPInstanceUID


def test_corpus_exercises_a_broad_part_of_the_table(corpus, anonymizer):
    covered: set[int] = set()
    for path in corpus:
        ds_in = read(path, stop_before_pixels=True)
        try:
            out = anonymizer.anonymize(ds_in)
        except AnonymizationError:
            continue
        check = Conformance(anonymizer)
        check.check(ds_in, out)
        covered |= check.covered
    codes = {profile_e1_1.BY_TAG[t].basic for t in covered}
    assert len(corpus) >= 200
    assert len(covered) >= 100
    assert {"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"} <= codes
    assert sum(profile_e1_1.BY_TAG[t].modified_dates == "C" for t in covered) >= 15


SAMPLE_BY_VR = {
    "AE": "PACS_NODE_7", "AS": "045Y", "CS": "VALUE_7", "DA": "20230114", "DT": "20230114093000+0100",
    "TM": "093000", "DS": "1.5", "IS": "7", "LO": "identifying text", "LT": "identifying text",
    "SH": "ident text", "ST": "identifying text", "UT": "identifying text", "UC": "identifying text",
    "PN": "DOE^JOHN", "UR": "http://hospital.example/doe", "FL": 1.5, "FD": 1.5, "SL": 7, "SS": 7, "UL": 7,
    "US": 7, "SV": 7, "UV": 7, "AT": 0x00100010, "OB": b"\x01\x02", "OW": b"\x01\x02", "OD": b"\x01" * 8,
    "OF": b"\x01" * 4, "OL": b"\x01" * 4, "OV": b"\x01" * 8, "UN": b"\x01\x02",
}  # fmt: skip


def every_row_dataset() -> Dataset:
    """One instance holding every attribute of Table E.1-1 (sequences with a referencing item)."""
    ds = nm_study()
    for row in profile_e1_1.ROWS:
        if row.tag >> 16 in (0x0000, 0x0002):  # command and file-meta groups live outside the dataset
            continue
        vr = dictionary_VR(row.tag).split(" or ")[0] if dictionary_has_tag(row.tag) else "UN"
        if vr == "SQ":
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = (
                NuclearMedicineImageStorage,
                generate_uid(),
            )
            item.CodeMeaning = "identifying text"
            value = Sequence([item])
        elif vr == "UI":
            value = generate_uid()
        else:
            value = SAMPLE_BY_VR[vr]
        ds.add(DataElement(row.tag, vr, value))
    return ds


def test_every_row_of_the_table_gets_an_action_the_standard_allows(anonymizer):
    ds_in = every_row_dataset()
    out = anonymizer.anonymize(ds_in)
    check = Conformance(anonymizer)
    check.check(ds_in, out)
    assert check.violations == []
    assert len(check.covered) == sum(row.tag >> 16 not in (0x0000, 0x0002) for row in profile_e1_1.ROWS)
    assert forbidden_in_output(out) == []
    assert len(check.offsets) == 1 and -365 <= check.offsets.pop() <= -1
    back = roundtrip(out)
    assert back == out


def test_table_has_every_row_once_with_valid_codes():
    assert len(profile_e1_1.ROWS) == len(profile_e1_1.BY_TAG) > 600
    assert {row.basic for row in profile_e1_1.ROWS} <= profile_e1_1.ACTION_CODES
    assert {row.modified_dates for row in profile_e1_1.ROWS} == {"", "C"}
    by_kw = {row.keyword: row for row in profile_e1_1.ROWS}
    assert (by_kw["PatientName"].basic, by_kw["PatientID"].basic, by_kw["StudyDate"].basic) == (
        "Z",
        "Z/D",
        "Z",
    )
    assert by_kw["StudyDate"].modified_dates == "C" and by_kw["PatientBirthDate"].modified_dates == ""
    assert by_kw["SOPInstanceUID"].basic == "U" and by_kw["SourceImageSequence"].basic == "X/Z/U*"
    assert "Modality" not in by_kw and "ViewCodeSequence" not in by_kw


# --------------------------------------------------------------------------------------- UIDs
def test_uid_remapping_is_consistent_across_files(anonymizer):
    study = generate_uid()
    a, b = nm_study(study_uid=study), nm_study(study_uid=study)
    out_a, out_b = anonymizer.anonymize(a), anonymizer.anonymize(b)
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID == anonymizer.remap_uid(study)
    assert out_a.SOPInstanceUID != out_b.SOPInstanceUID
    assert out_a.SOPInstanceUID != a.SOPInstanceUID and out_a.StudyInstanceUID != study


def test_references_between_instances_point_at_the_new_uids(anonymizer):
    src = nm_study()
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    derived = nm_study(patient_id=src.PatientID, SourceImageSequence=Sequence([ref]))
    out_src, out_derived = anonymizer.anonymize(src), anonymizer.anonymize(derived)
    item = out_derived.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == out_src.SOPInstanceUID
    assert item.ReferencedSOPClassUID == NuclearMedicineImageStorage


def test_new_uids_are_valid_uuid_derived_uids_and_class_uids_are_kept(anonymizer):
    out = anonymizer.anonymize(nm_study())
    for uid in (out.SOPInstanceUID, out.StudyInstanceUID, out.SeriesInstanceUID, out.FrameOfReferenceUID):
        assert uid.startswith("2.25.") and UID(uid).is_valid and len(uid) <= 64
        assert int(uid[5:]) < 2**128
    assert out.SOPClassUID == NuclearMedicineImageStorage
    assert out.file_meta.MediaStorageSOPClassUID == NuclearMedicineImageStorage
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert anonymizer.remap_uid(NuclearMedicineImageStorage) == NuclearMedicineImageStorage


def test_uid_root_from_config_is_used(secret):
    anon = Anonymizer(secret, AnonymizeConfig(uid_root="1.2.826.0.1.3680043.10.999."))
    uid = anon.anonymize(nm_study()).SOPInstanceUID
    assert uid.startswith("1.2.826.0.1.3680043.10.999.") and len(uid) <= 64 and UID(uid).is_valid
    with pytest.raises(ValueError, match="uid_root"):
        Anonymizer(secret, AnonymizeConfig(uid_root="abc"))


def test_same_secret_gives_the_same_result_and_another_secret_a_different_one(secret, anon_cfg):
    ds = nm_study()
    first, again = Anonymizer(secret, anon_cfg).anonymize(ds), Anonymizer(secret, anon_cfg).anonymize(ds)
    other = Anonymizer(b"another-key-of-enough-length-42!", anon_cfg).anonymize(ds)
    assert first == again
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.PatientID != other.PatientID


def test_anonymizer_is_picklable_and_never_shows_its_key(anonymizer, secret):
    clone = pickle.loads(pickle.dumps(anonymizer))
    ds = nm_study()
    assert clone.anonymize(ds) == anonymizer.anonymize(ds)
    assert secret.decode() not in repr(anonymizer)


# ------------------------------------------------------------------------------ dates and identity
def _instant(day: str, time: str) -> datetime:
    return datetime.strptime(day + time.split(".")[0].ljust(6, "0"), "%Y%m%d%H%M%S")


def test_one_date_shift_per_patient_preserves_intervals(anonymizer):
    first = anonymizer.anonymize(nm_study(patient_id="P-1"))
    later = anonymizer.anonymize(nm_study(patient_id="P-1", StudyDate="20230301", SeriesDate="20230301"))
    shift = anonymizer.date_shift_days("P-1")
    assert -365 <= shift <= -1
    assert _parse_da(first.SeriesDate) == date(2023, 1, 14) + pd(shift)  # a date without its time
    assert _parse_da(later.SeriesDate) - _parse_da(first.SeriesDate) == pd(46)  # interval kept across studies
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert first.PatientBirthDate == ""  # Z in the Basic Profile; the option does not retain it
    assert "PatientAge" not in first  # X


def test_times_move_with_dates_by_one_keyed_offset_per_patient(anonymizer):
    """PS3.15 E.3.6: dates and times are modified; DA+TM pairs, DT and lone TM move as one instant."""
    ds = nm_study(patient_id="P-1", InstanceCreationDate="20230114", InstanceCreationTime="235959.5")
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20230114", "093512.250"
    out = anonymizer.anonymize(ds)
    radio, radio_in = out.RadiopharmaceuticalInformationSequence[0], ds.RadiopharmaceuticalInformationSequence[0]
    study = _instant(out.StudyDate, out.StudyTime)
    moved = study - _instant(ds.StudyDate, ds.StudyTime)
    assert out.StudyTime != ds.StudyTime and moved <= -pd(1) and moved > -pd(367)
    second = pd(0, 1)  # values are truncated to their precision: intervals hold to within it
    created = _instant(out.InstanceCreationDate, out.InstanceCreationTime) - _instant("20230114", "235959")
    assert abs(created - moved) <= second  # a pair near midnight moves its date with the time
    step = _instant(out.PerformedProcedureStepStartDate, out.PerformedProcedureStepStartTime)
    assert abs(step - study - pd(0, 5 * 60 + 12)) <= second  # interval kept
    acq = out.AcquisitionDateTime  # DT: date and time together, UTC offset and precision kept
    assert acq.endswith("+0100") and len(acq) == len(ds.AcquisitionDateTime)
    assert abs(_instant(acq[:8], acq[8:14]) - study - pd(0, 2.5 * 3600)) <= second  # 12:00 - 09:30 kept
    injection = _instant(out.StudyDate, radio.RadiopharmaceuticalStartTime)  # a TM alone moves the same way
    assert min(abs(injection - study + pd(0, 30 * 60) - pd(k)) for k in (0, 1)) <= second  # maybe wrapped
    start = radio.RadiopharmaceuticalStartDateTime
    assert abs(_instant(start[:8], start[8:14]) - (_instant("20230114", "090000") + moved)) <= second
    assert radio_in.RadiopharmaceuticalStartTime == "090000"  # the input is untouched
    other = anonymizer.anonymize(nm_study(patient_id="P-2"))
    assert _instant(other.StudyDate, other.StudyTime) - _instant("20230114", "093000") != moved


def test_fractional_seconds_change_and_keep_their_precision(anonymizer):
    out = anonymizer.anonymize(nm_study(StudyTime="093000.123456", SeriesTime="0930", ContentTime="09"))
    assert out.StudyTime[-6:] != "123456" and len(out.StudyTime) == 13 and out.StudyTime[6] == "."
    assert len(out.SeriesTime) == 4 and len(out.ContentTime) == 2


def pd(days: float, seconds: float = 0):
    from datetime import timedelta

    return timedelta(days=days, seconds=seconds)


def test_date_shifts_are_spread_over_the_configured_range(secret):
    anon = Anonymizer(secret, AnonymizeConfig(max_date_shift_days=30))
    shifts = {anon.date_shift_days(f"patient-{i}") for i in range(300)}
    assert min(shifts) >= -30 and max(shifts) <= -1 and len(shifts) >= 25
    assert Anonymizer(secret, AnonymizeConfig(max_date_shift_days=1)).date_shift_days("x") == -1


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20230114", -14, "20221231"),
        ("2023.01.14", -1, "20230113"),
        ("20240301", -1, "20240229"),
        ("20230101-20230110", -1, "20221231-20230109"),
        ("", -5, ""),
        ("2023", -1, None),
        ("20231350", -1, None),
    ],
)
def test_shift_date_moves_whole_days_or_refuses(value, days, expected):
    assert shift_date(value, days) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20230114093000.123456+0100", "20230104093000.123456+0100"),
        ("20230114", "20230104"),
        ("20230114-0500", "20230104-0500"),
        ("202301", None),
    ],
)
def test_shift_datetime_by_whole_days_keeps_time_and_utc_offset(value, expected):
    assert shift_datetime(value, -10) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20230114093000.123456+0100", "20230103233000.123455+0100"),  # borrows a day, truncates to us
        ("20230114093000.12", "20230103233000.11"),  # two fraction digits stay two (truncated)
        ("2023011409", "2023010322"),  # hour precision: 22:59:59.999999 truncated to 22
        ("20230114", "20230104"),  # a date alone moves by the days
        ("20230114250000", None),
    ],
)
def test_shift_datetime_moves_date_and_time_as_one_instant(value, expected):
    assert shift_datetime(value, TemporalShift(-10, -(10 * 3600 * 10**6 + 1))) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("093000", "083000"),
        ("003000", "233000"),  # wraps around midnight
        ("09:30:00", "083000"),  # ACR-NEMA
        ("0930", "0830"),
        ("093000.5", "083000.5"),
        ("080000-100000", "070000-090000"),
        ("", ""),
        ("2560", None),
    ],
)
def test_shift_time_moves_the_time_of_day(value, expected):
    assert shift_time(value, TemporalShift(-3, -3600 * 10**6)) == expected


def test_a_date_moves_with_its_paired_time():
    assert shift_date("20230114", -1, time="003000", micros=-3600 * 10**6) == "20230112"
    assert shift_date("20230114", -1, time="013000", micros=-3600 * 10**6) == "20230113"


def test_patient_id_and_name_become_the_keyed_pseudonym(anonymizer):
    out = anonymizer.anonymize(nm_study(patient_id="4711", name="DOE^JOHN"))
    assert out.PatientID == str(out.PatientName) == anonymizer.pseudonym("4711")
    assert anonymizer.pseudonym("4711") != anonymizer.pseudonym("4712")
    assert "4711" not in out.PatientID
    unnamed = [nm_study(name="ROE^JANE"), nm_study(name="ROE^JANE")]
    for ds in unnamed:
        del ds.PatientID  # keyed on name + birth date instead; PatientID (Type 2) is still written
    ids = {anonymizer.anonymize(ds).PatientID for ds in unnamed}
    assert len(ids) == 1 and ids.pop() not in ("", out.PatientID)


def test_pipeline_attributes_and_view_codes_are_kept(anonymizer):
    ds = nm_study()
    out = anonymizer.anonymize(ds)
    for kw in ("Modality", "ImageType", "PixelSpacing", "NumberOfFrames", "Rows", "Columns", "RescaleSlope",
               "RescaleIntercept", "PhotometricInterpretation", "SOPClassUID", "DetectorVector",
               "FrameIncrementPointer", "BitsStored", "PixelData"):  # fmt: skip
        assert out[kw].value == ds[kw].value, kw
    meanings = [d.ViewCodeSequence[0].CodeMeaning for d in out.DetectorInformationSequence]
    assert meanings == ["anterior", "posterior"]
    assert all("DetectorID" not in d for d in out.DetectorInformationSequence)  # X/D -> removed
    assert out.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical == "Tc-99m MDP"
    for kw in ("ImageComments", "StudyDescription", "SeriesDescription", "InstitutionName", "StationName"):
        assert kw not in out, kw
    assert out.AccessionNumber == "" and out.ReferringPhysicianName == "" and out.PatientSex == ""


def test_private_tags_overlays_curves_and_comments_are_removed_at_every_depth(anonymizer):
    ds = nm_study()
    block = ds.private_block(0x0009, "HOSPITAL PRIVATE", create=True)
    block.add_new(0x10, "LO", "DOE JOHN 4711")
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.private_block(0x0011, "VENDOR X", create=True).add_new(0x01, "LO", "secret")
    item.add_new(0x00204000, "LT", "nested image comment")  # ImageComments (X) inside a sequence
    ds.add_new(0x60000010, "US", 8)  # OverlayRows
    ds.add_new(0x60003000, "OW", b"\0" * 8)  # OverlayData
    ds.add_new(0x50000005, "US", 1)  # CurveDimensions
    ds.add_new(0x00287007, "LO", "free text that names the patient")  # SystemStatusComment, not in table
    ds.add_new(0x00142006, "PN", "EVALUATOR^ED")  # EvaluatorName: PN not in the table
    out = anonymizer.anonymize(ds)
    assert forbidden_in_output(out) == []
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert not any((elem.tag.group & 0xFF00) in (0x5000, 0x6000) for elem in out.iterall())
    assert 0x00287007 not in out and 0x00142006 not in out
    assert 0x00204000 not in out.RadiopharmaceuticalInformationSequence[0]


def test_sr_free_text_inside_a_dummied_content_sequence_is_replaced(anonymizer):
    ds = nm_study()
    text = Dataset()
    text.ValueType, text.TextValue = "TEXT", "Findings for John Doe"
    ds.ContentSequence = Sequence([text])  # ContentSequence: D
    out = anonymizer.anonymize(ds)
    assert out.ContentSequence[0].ValueType == "TEXT"
    assert out.ContentSequence[0].TextValue == "ANONYMOUS"


def test_deidentification_is_recorded_as_the_standard_asks(anonymizer):
    out = anonymizer.anonymize(nm_study())
    assert out.PatientIdentityRemoved == "YES"
    codes = {
        (c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in out.DeidentificationMethodCodeSequence
    }
    assert ("113100", "DCM", "Basic Application Confidentiality Profile") in codes
    assert ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option") in codes
    assert out.DeidentificationMethod.startswith("bonescan PS3.15") and len(out.DeidentificationMethod) <= 64


def test_deidentification_method_of_the_input_is_never_copied(anonymizer):
    """Issue 14.1: an input's method items held a private SSN, a name and the raw StudyDate."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113100", "DCM", "seen by DOE JOHN"
    item.StudyDate = "20230114"  # next to the shifted one it would reveal the patient's offset
    item.VerifyingObserverName = "HOUSE^GREGORY"
    item.private_block(0x0009, "ACME 1.0", create=True).add_new(0x02, "OB", b"123-45-6789")
    local = Dataset()
    local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning = "X1", "99ACME", "checked by Dr. Watson"
    ds = nm_study(DeidentificationMethodCodeSequence=Sequence([item, local]))
    ds.DeidentificationMethod = ["removed by DOE JOHN on 20230114", "bonescan PS3.15 forged"]
    out = anonymizer.anonymize(ds)
    assert out.DeidentificationMethod == anonymizer._marker(str(out.SOPInstanceUID))  # one value, ours only
    items = out.DeidentificationMethodCodeSequence
    assert [[e.keyword for e in i] for i in items] == [["CodeValue", "CodingSchemeDesignator", "CodeMeaning"]] * 2
    assert [(i.CodeValue, i.CodeMeaning) for i in items] == [
        ("113100", "Basic Application Confidentiality Profile"),
        ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ]
    written = roundtrip(out)
    assert b"20230114" not in _file_bytes(written) and b"123-45-6789" not in _file_bytes(written)


def _file_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_free_text_and_uids_outside_the_table_are_cleaned_per_documented_rule(anonymizer):
    """Issue 14.3: ContentLabel, ContentDescription, DocumentTitle, ImageID, local CodeMeaning, CodingSchemeUID."""
    local = Dataset()
    local.CodeValue, local.CodingSchemeDesignator = "NMWB", "99STELSEWHERE"
    local.CodeMeaning, local.CodingSchemeUID = "bone scan for DOE JOHN", "1.2.826.0.1.3680043.20230114.7"
    local.ContextGroupExtensionCreatorUID = "1.2.826.0.1.3680043.20230114.8"
    standard = Dataset()
    standard.CodeValue, standard.CodingSchemeDesignator, standard.CodeMeaning = "399321004", "SCT", "anterior"
    standard.CodingSchemeUID = "2.16.840.1.113883.6.96"
    ds = nm_study(ContentLabel="DOE_JOHN", ContentDescription="scan of John Doe", ImageID="DOE WB",
                  DocumentTitle="Doe_John_20230114.pdf", ProcedureCodeSequence=Sequence([local]),
                  AnatomicRegionSequence=Sequence([standard]), TextValue="John Doe, 4711")  # fmt: skip
    out = anonymizer.anonymize(ds)
    assert out.ContentLabel == "ANONYMOUS" and out.ContentDescription == "" and out.DocumentTitle == ""
    assert "ImageID" not in out and out.TextValue == "ANONYMOUS"
    code = out.ProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("NMWB", "99ANONYMOUS", "ANONYMOUS")
    assert code.CodingSchemeUID == anonymizer.remap_uid(local.CodingSchemeUID)
    assert code.ContextGroupExtensionCreatorUID == anonymizer.remap_uid(local.ContextGroupExtensionCreatorUID)
    kept = out.AnatomicRegionSequence[0]  # a published terminology's code is dictionary text: kept
    assert (kept.CodingSchemeDesignator, kept.CodeMeaning) == ("SCT", "anterior")
    assert out.SOPClassUID == ds.SOPClassUID  # class UIDs are not instance identities


def test_unused_high_bits_are_cleared_and_the_image_is_unchanged(anonymizer):
    """Issue 14.4: an overlay stored in the bits above BitsStored stays in the file unless cleared."""
    image = np.arange(64, dtype="<u2").reshape(8, 8) * 60  # 12-bit values
    overlay = np.zeros((8, 8), dtype="<u2")
    overlay[2:6, 1:7] = 1 << 15  # a drawn region in bit 15
    ds = nm_study(Rows=8, Columns=8, NumberOfFrames=1, BitsStored=12, HighBit=11,
                  PixelData=(image | overlay).tobytes())  # fmt: skip
    out = anonymizer.anonymize(ds)
    words = np.frombuffer(out.PixelData, dtype="<u2")
    assert words.max() < 2**12
    assert (roundtrip(out).pixel_array == ds.pixel_array).all()  # readers see the same image
    assert (np.frombuffer(ds.PixelData, "<u2") >= 2**15).any()  # the input keeps its own bytes


def test_high_bits_of_big_endian_and_8_bit_data_are_cleared_too():
    from pydicom.uid import ExplicitVRBigEndian

    from bonescan.dicom.anonymize import clear_unused_high_bits

    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 10, 9
    ds.PixelData = np.array([0x8001, 0x03FF], dtype=">u2").tobytes()
    assert clear_unused_high_bits(ds, ExplicitVRBigEndian)
    assert np.frombuffer(ds.PixelData, ">u2").tolist() == [0x0001, 0x03FF]
    ds8 = Dataset()
    ds8.BitsAllocated, ds8.BitsStored, ds8.HighBit, ds8.PixelData = 8, 6, 5, bytes([0xFF, 0x3F])
    assert clear_unused_high_bits(ds8, ExplicitVRLittleEndian) and ds8.PixelData == bytes([0x3F, 0x3F])
    full = Dataset()
    full.BitsAllocated, full.BitsStored, full.HighBit, full.PixelData = 16, 16, 15, b"\xff\xff"
    assert not clear_unused_high_bits(full, ExplicitVRLittleEndian)


BURNED_IN_PRONE = {
    "secondary capture": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "ImageType": ["DERIVED"]},
    "multi-frame secondary capture": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4", "Modality": "CT",
                                      "ImageType": ["DERIVED", "OTHER"]},  # fmt: skip
    "ultrasound": {"Modality": "US"},
    "other": {"Modality": "OT"},
    "derived secondary": {"ImageType": ["DERIVED", "SECONDARY"]},
    "screen save": {"ImageType": ["DERIVED", "PRIMARY", "SCREEN SAVE"]},
    "digitized film": {"ConversionType": "DF"},
}


@pytest.mark.parametrize("attrs", BURNED_IN_PRONE.values(), ids=BURNED_IN_PRONE.keys())
def test_sources_that_commonly_burn_in_text_are_quarantined_unless_allowed(secret, anon_cfg, attrs):
    from bonescan.dicom.anonymize import burned_in_prone

    ds = nm_study(BurnedInAnnotation="NO", **attrs)  # the flag of such devices is no check
    assert burned_in_prone(ds)
    with pytest.raises(BurnedInAnnotationError, match="commonly burns in text"):
        Anonymizer(secret, anon_cfg).anonymize(ds)
    assert Anonymizer(secret, anon_cfg, burned_in_policy="allow").anonymize(ds).SOPInstanceUID


def test_primary_nm_and_images_without_pixels_are_not_burned_in_prone(secret, anon_cfg):
    from bonescan.dicom.anonymize import burned_in_prone

    assert burned_in_prone(nm_study()) is None  # DERIVED/PRIMARY/WHOLE BODY like the real bone scan
    real = read(get_testdata_file("JPEG2000.dcm"), stop_before_pixels=True)
    real.PixelData = b""
    assert real.SOPClassUID.name == "Secondary Capture Image Storage" and burned_in_prone(real) is None
    report = nm_study(Modality="US")
    del report.PixelData
    assert burned_in_prone(report) is None
    with pytest.raises(ValueError, match="burned_in_policy"):
        Anonymizer(secret, anon_cfg, burned_in_policy="maybe")


def test_input_dataset_is_never_modified(anonymizer):
    ds = nm_study()
    ds.private_block(0x0009, "HOSPITAL PRIVATE", create=True).add_new(0x10, "LO", "x")
    before = copy.deepcopy(ds)
    anonymizer.anonymize(ds)
    assert ds == before and ds.file_meta == before.file_meta
    real = read(get_testdata_file("JPEG2000_UNC.dcm") or get_testdata_file("CT_small.dcm"))
    before = copy.deepcopy(real)
    anonymizer.anonymize(real)
    assert real == before


# ------------------------------------------------------------------------------------- idempotence
def test_second_pass_keeps_dates_uids_and_pseudonym(anonymizer):
    once = roundtrip(anonymizer.anonymize(nm_study()))
    twice = anonymizer.anonymize(once)
    assert anonymizer.is_deidentified_by_us(once)
    assert (twice.StudyDate, twice.SOPInstanceUID, twice.PatientID) == (
        once.StudyDate,
        once.SOPInstanceUID,
        once.PatientID,
    )
    assert len(twice.DeidentificationMethodCodeSequence) == 2
    assert twice == once


def test_markers_made_under_another_key_are_not_trusted(anonymizer, anon_cfg):
    foreign = Anonymizer(b"a-different-key-of-enough-length", anon_cfg).anonymize(nm_study())
    assert not anonymizer.is_deidentified_by_us(foreign)
    again = anonymizer.anonymize(foreign)
    assert again.SOPInstanceUID == anonymizer.remap_uid(foreign.SOPInstanceUID)
    assert again.StudyDate != foreign.StudyDate


# ---------------------------------------------------------------------------------- refusals
def test_burned_in_annotation_is_refused_unless_allowed(secret, anonymizer):
    ds = nm_study(BurnedInAnnotation="YES")
    with pytest.raises(BurnedInAnnotationError):
        anonymizer.anonymize(ds)
    out = Anonymizer(secret, AnonymizeConfig(allow_burned_in=True)).anonymize(ds)
    assert out.BurnedInAnnotation == "YES"


def test_instance_without_sop_instance_uid_is_refused(anonymizer):
    ds = nm_study()
    del ds.SOPInstanceUID
    with pytest.raises(AnonymizationError, match="SOPInstanceUID"):
        anonymizer.anonymize(ds)


# ------------------------------------------------------------------------------------------ secret
def test_secret_comes_from_the_environment_first_then_the_file(tmp_path, monkeypatch):
    key_file = tmp_path / "anonymize.key"
    key_file.write_text("file-key-0123456789abcdef\n")
    cfg = AnonymizeConfig(secret_env="BONESCAN_TEST_SECRET", secret_file=str(key_file))
    monkeypatch.delenv("BONESCAN_TEST_SECRET", raising=False)
    assert load_secret(cfg) == b"file-key-0123456789abcdef"
    monkeypatch.setenv("BONESCAN_TEST_SECRET", "env-key-0123456789abcdef")
    assert load_secret(cfg) == b"env-key-0123456789abcdef"


def test_missing_secret_error_names_the_variable_the_file_and_the_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv("BONESCAN_TEST_SECRET", raising=False)
    cfg = AnonymizeConfig(secret_env="BONESCAN_TEST_SECRET", secret_file=str(tmp_path / "none.key"))
    with pytest.raises(MissingSecretError) as err:
        load_secret(cfg)
    message = str(err.value)
    assert "BONESCAN_TEST_SECRET" in message and "none.key" in message and "token_hex" in message
    (tmp_path / "short.key").write_text("abc")
    with pytest.raises(MissingSecretError, match="shorter"):
        load_secret(
            AnonymizeConfig(secret_env="BONESCAN_TEST_SECRET", secret_file=str(tmp_path / "short.key"))
        )


def test_create_secret_writes_a_private_random_key_once(tmp_path, monkeypatch):
    path = tmp_path / ".secrets" / "anonymize.key"
    assert create_secret(path) is True
    key = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key.strip()) == 64
    assert create_secret(path) is False and path.read_bytes() == key
    monkeypatch.delenv("BONESCAN_TEST_SECRET", raising=False)
    assert (
        load_secret(AnonymizeConfig(secret_env="BONESCAN_TEST_SECRET", secret_file=str(path))) == key.strip()
    )


# -------------------------------------------------------------------------------------------- tree
@pytest.fixture()
def hospital_export(tmp_path) -> Path:
    """Raw tree with PHI in folder and file names, a non-DICOM file and a burned-in image."""
    raw = tmp_path / "raw"
    study = raw / "DOE_JOHN_4711" / "20230114_ACC123456"
    study.mkdir(parents=True)
    study_uid = generate_uid()
    for i in range(2):
        nm_study(study_uid=study_uid, InstanceNumber=i + 1).save_as(
            study / f"IMG{i:05d}.dcm", enforce_file_format=True
        )
    shutil.copy(get_testdata_file("CT_small.dcm"), raw / "DOE_JOHN_4711" / "ct.dcm")
    (raw / "DOE_JOHN_4711" / "notes.txt").write_text("not an image")
    nm_study(BurnedInAnnotation="YES").save_as(raw / "burned.dcm", enforce_file_format=True)
    return raw


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_tree_is_anonymized_into_uid_named_files_and_raw_files_stay_untouched(
    hospital_export, tmp_path, secret, anon_cfg
):
    before = _snapshot(hospital_export)
    dst = tmp_path / "anon"
    report = anonymize_tree(hospital_export, dst, anon_cfg, secret)
    assert _snapshot(hospital_export) == before
    assert (report.files, report.anonymized, report.leaks) == (5, 3, 0)
    reasons = sorted(q["reason"] for q in report.quarantined)
    assert reasons == ["burned-in annotation (BurnedInAnnotation=YES)", "not a DICOM file"]
    names = sorted(p.name for p in dst.glob("*.dcm"))
    for name in names:
        ds = read(dst / name)
        assert name == f"{ds.SOPInstanceUID}.dcm" and ds.SOPInstanceUID.startswith("2.25.")
    saved = json.loads((dst / REPORT_NAME).read_text())
    assert saved["leaks"] == 0 and saved["anonymized"] == 3 and len(saved["quarantined"]) == 2
    text = (dst / REPORT_NAME).read_text().upper()
    assert "DOE" not in text and "4711" not in text and "ACC123456" not in text
    assert saved["quarantined"][0]["file_id"] in {
        file_id("burned.dcm", secret),
        file_id("DOE_JOHN_4711/notes.txt", secret),
    }


def test_tree_runs_are_deterministic_and_idempotent(hospital_export, tmp_path, secret, anon_cfg):
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    anonymize_tree(hospital_export, first, anon_cfg, secret)
    anonymize_tree(hospital_export, second, anon_cfg, secret)
    report = anonymize_tree(first, third, anon_cfg, secret)
    dcm = sorted(p.name for p in first.glob("*.dcm"))
    assert dcm == sorted(p.name for p in second.glob("*.dcm")) == sorted(p.name for p in third.glob("*.dcm"))
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in dcm)
    assert report.already_deidentified == report.anonymized == len(dcm) and report.quarantined == []
    assert report.leaks == 0
    for name in dcm:
        assert read(third / name) == read(first / name)


def test_tree_removes_and_quarantines_an_output_with_residual_phi(hospital_export, tmp_path, secret, anon_cfg,
                                                                  monkeypatch):  # fmt: skip
    """Issue 14.5: `bonescan anonymize` exits 1 on residual PHI; the leaky file must not stay in DST."""
    clean_anonymize = Anonymizer.anonymize

    def leaky(self, ds):
        out = clean_anonymize(self, ds)
        if "DOE" in str(ds.get("PatientName", "")):
            out.Manufacturer = str(ds.PatientName)  # a kept attribute that carries the name
        return out

    monkeypatch.setattr(Anonymizer, "anonymize", leaky)
    dst = tmp_path / "anon"
    report = anonymize_tree(hospital_export, dst, anon_cfg, secret)
    assert report.leaks > 0 and report.anonymized == 1  # the CT (another patient) is clean
    leaked = [q for q in report.quarantined if q["reason"].startswith("residual PHI")]
    assert len(leaked) == 2 and all("output removed" in q["reason"] for q in leaked)
    left = [p for p in dst.iterdir() if p.name != REPORT_NAME]
    assert len(left) == 1 and "DOE" not in read(left[0]).get("Manufacturer", "")  # no temp files either
    assert "DOE" not in (dst / REPORT_NAME).read_text()


def test_tree_refuses_to_write_into_its_source(hospital_export, secret, anon_cfg):
    with pytest.raises(ValueError, match="differ"):
        anonymize_tree(hospital_export, hospital_export, anon_cfg, secret)


@pytest.mark.parametrize("part", ["bone", "chest"])
def test_phantom_cohort_anonymizes_without_residual_phi(phantom_cohort, tmp_path, secret, anon_cfg, part):
    raw = phantom_cohort / part
    before = _snapshot(raw)
    report = anonymize_tree(raw, tmp_path / "anon", anon_cfg, secret)
    assert _snapshot(raw) == before
    assert report.anonymized > 0 and report.leaks == 0
    if part == "bone":  # the deliberately bad files meet the anonymizer too
        assert any("burned-in" in q["reason"] for q in report.quarantined)
        assert any(q["reason"] == "not a DICOM file" for q in report.quarantined)
        views = [
            item.ViewCodeSequence[0].CodeMeaning
            for path in (tmp_path / "anon").glob("*.dcm")
            for item in read(path, stop_before_pixels=True).get("DetectorInformationSequence", [])
            if "ViewCodeSequence" in item
        ]
        assert views and all(("anterior" in v.lower()) or ("posterior" in v.lower()) for v in views)
    text = (tmp_path / "anon" / REPORT_NAME).read_text()
    raw_names = {piece for p in raw.rglob("*") for piece in p.relative_to(raw).parts if "_" in piece}
    assert raw_names and not any(name in text for name in raw_names)


def test_files_written_by_tree_are_readable_with_pixels(hospital_export, tmp_path, secret, anon_cfg):
    dst = tmp_path / "anon"
    anonymize_tree(hospital_export, dst, anon_cfg, secret)
    for path in dst.glob("*.dcm"):
        ds = read(path)
        assert ds.pixel_array.size > 0
        assert os.access(path, os.R_OK)
