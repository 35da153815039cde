"""An adversarial corpus is anonymized with no planted identifier left in any byte (issue 14, "done means").

The corpus is built here: nested and private sequences, three character sets, every DA/DT/TM
attribute of the dictionary, an overlay in the high bits of the pixel data, free text outside Table
E.1-1, an SR with free text, an encapsulated PDF, a secondary capture with burned-in text, names,
record numbers and dates in the folder names. The check is the bluntest one: every byte of every
file under the output folder, the JSON report and every log record, searched for every planted value
in every encoding a writer could use.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    NuclearMedicineImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from bonescan.config import AnonymizeConfig
from bonescan.dicom.anonymize import REPORT_NAME, anonymize_tree

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

FAMILY, GIVEN = "MÜLLER", "JÜRGEN"
MRN, SSN, ACCESSION = "MRN99887766", "123-45-6789", "ACC55443322"
BIRTH, RAW_DATE, RAW_TIME = "19520501", "20230114", "093512.654321"
RAW_DT = RAW_DATE + RAW_TIME + "+0100"
PLANTED = [
    FAMILY, GIVEN, "MUELLER", "JUERGEN", "Ørsted", "Søren", "王小明", "SCHMIDT", "HILDEGARD",
    MRN, SSN, "123456789", ACCESSION, "Klinik Sankt Nirgendwo", "Hauptstrasse 7",
    BIRTH, "1952-05-01", "01.05.1952", RAW_DATE, "2023-01-14", "14.01.2023", "093512", "654321",
    "OLDPACS", "ward-7-secret",
]  # fmt: skip
ENCODINGS = ("utf-8", "latin-1", "gb18030", "utf-16-le", "utf-16-be")


def _needles() -> set[bytes]:
    out = set()
    for value in PLANTED:
        for text in {value, value.upper(), value.lower()}:
            for encoding in ENCODINGS:
                try:
                    out.add(text.encode(encoding))
                except UnicodeEncodeError:
                    continue
    return out


def _base(sop_class: str, name: str, charset: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "OLDPACS"
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, MRN, BIRTH
    ds.OtherPatientIDs = SSN
    ds.PatientAddress = "Hauptstrasse 7"
    ds.AccessionNumber, ds.InstitutionName = ACCESSION, "Klinik Sankt Nirgendwo"
    ds.ReferringPhysicianName = "SCHMIDT^HILDEGARD"
    ds.StudyDate, ds.StudyTime = RAW_DATE, RAW_TIME
    return ds


def _every_temporal_attribute(ds: Dataset) -> None:
    """Every DA, DT and TM of pydicom's dictionary (public, not file meta) with a raw value."""
    for tag, (vr, *_rest) in DicomDictionary.items():
        group = tag >> 16
        if group in (0x0000, 0x0002) or vr not in ("DA", "DT", "TM"):
            continue
        ds.add_new(tag, vr, {"DA": RAW_DATE, "DT": RAW_DT, "TM": RAW_TIME}[vr])


def _private_block(ds: Dataset) -> None:
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x02, "OB", SSN.encode())
    inner = Dataset()
    inner.PatientName = "SCHMIDT^HILDEGARD"
    inner.add_new(0x00080020, "DA", RAW_DATE)
    nested = inner.private_block(0x0011, "ACME 1.0", create=True)
    nested.add_new(0x01, "LO", "ward-7-secret " + MRN)
    block.add_new(0x03, "SQ", Sequence([inner]))


def _local_code(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "NM-WB-01", "99OLDPACS", meaning
    code.CodingSchemeUID = f"1.2.826.0.1.3680043.{RAW_DATE}.7"
    return code


def nm_with_everything() -> Dataset:
    """NM: UTF-8 names, every temporal attribute, private and nested sequences, overlay in high bits."""
    ds = _base(NuclearMedicineImageStorage, f"{FAMILY}^{GIVEN}", "ISO_IR 192")
    _every_temporal_attribute(ds)
    _private_block(ds)
    ds.Modality, ds.ImageType = "NM", ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.ContentLabel, ds.ContentDescription = "MUELLER", f"bone scan of {FAMILY} {GIVEN}"
    ds.ImageID = f"{FAMILY} WB"
    ds.ProcedureCodeSequence = Sequence([_local_code(f"Skelettszintigraphie {FAMILY}")])
    method = _local_code("Removed by SCHMIDT")
    method.add_new(0x00080020, "DA", RAW_DATE)
    method.private_block(0x0009, "ACME 1.0", create=True).add_new(0x02, "OB", SSN.encode())
    ds.DeidentificationMethodCodeSequence = Sequence([method])
    ds.DeidentificationMethod = f"manually checked by SCHMIDT on {RAW_DATE}"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 32, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 8, 7, 0
    text = np.frombuffer(f"MUELLER JUERGEN {MRN} {ACCESSION} ".encode().ljust(128, b" "), np.uint8)
    ds.PixelData = (text.astype("<u2") << 8).tobytes()  # the name drawn into the unused high byte
    return ds


def latin1_and_gb18030() -> list[Dataset]:
    latin = _base(NuclearMedicineImageStorage, "Ørsted^Søren", "ISO_IR 100")
    chinese = _base(NuclearMedicineImageStorage, "王^小明", "GB18030")
    for ds in (latin, chinese):
        ds.Modality, ds.Rows, ds.Columns = "NM", 2, 2
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = bytes(8)
    chinese.ImageComments = "王小明 骨扫描"
    return [latin, chinese]


def sr_with_free_text() -> Dataset:
    ds = _base("1.2.840.10008.5.1.4.1.1.88.11", f"{FAMILY}^{GIVEN}", "ISO_IR 192")  # Basic Text SR
    ds.Modality, ds.ContentDate, ds.ContentTime = "SR", RAW_DATE, RAW_TIME
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_local_code(f"Befund {FAMILY}")])
    finding.TextValue = f"Patient {FAMILY} {GIVEN}, {MRN}, seen by SCHMIDT on 14.01.2023"
    when = Dataset()
    when.RelationshipType, when.ValueType, when.DateTime = "HAS OBS CONTEXT", "DATETIME", RAW_DT
    finding.ContentSequence = Sequence([when])
    ds.ContentSequence = Sequence([finding])
    ds.ValueType = "CONTAINER"
    return ds


def encapsulated_pdf() -> Dataset:
    ds = _base(EncapsulatedPDFStorage, f"{FAMILY}^{GIVEN}", "ISO_IR 192")
    ds.Modality, ds.MIMETypeOfEncapsulatedDocument = "DOC", "application/pdf"
    ds.DocumentTitle = f"Befund_{FAMILY}_{RAW_DATE}.pdf"
    ds.EncapsulatedDocument = f"%PDF-1.4 (Befund {FAMILY} {GIVEN} {MRN} {SSN})".encode()
    return ds


def secondary_capture_with_burned_in_text() -> Dataset:
    ds = _base(SecondaryCaptureImageStorage, f"{FAMILY}^{GIVEN}", "ISO_IR 192")
    ds.Modality, ds.ConversionType, ds.Rows, ds.Columns = "OT", "WSD", 1, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = f"MUELLER JUERGEN {MRN}".encode().ljust(64)  # text in the pixels, no flag set
    return ds


@pytest.fixture()
def adversarial_tree(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    folder = raw / f"MUELLER_JUERGEN_{MRN}" / f"{RAW_DATE}_{ACCESSION}"
    folder.mkdir(parents=True)
    datasets = [nm_with_everything(), *latin1_and_gb18030(), sr_with_free_text(), encapsulated_pdf()]
    datasets.append(secondary_capture_with_burned_in_text())
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"{FAMILY}_{i}.dcm", enforce_file_format=True)
    return raw


def test_adversarial_corpus_leaves_no_planted_value_in_any_output_byte(adversarial_tree, tmp_path, caplog):
    raw_bytes = b"".join(p.read_bytes() for p in adversarial_tree.rglob("*.dcm"))
    needles = _needles()
    assert {n for n in needles if n in raw_bytes} >= {v.encode() for v in (MRN, SSN, ACCESSION, RAW_DATE)}
    dst = tmp_path / "anon"
    with caplog.at_level(logging.DEBUG):
        report = anonymize_tree(adversarial_tree, dst, AnonymizeConfig(), b"adversarial-test-key-0123456789")
    assert report.files == 6 and report.leaks == 0
    assert report.anonymized == 5, report.quarantined  # the secondary capture is refused
    assert [q["reason"] for q in report.quarantined] == ["source that commonly burns in text (modality OT)"]
    outputs = sorted(p for p in dst.rglob("*") if p.is_file())
    assert dst / REPORT_NAME in outputs and len(outputs) == 6
    blobs = {p.relative_to(dst).as_posix(): p.read_bytes() for p in outputs}
    blobs["log"] = "\n".join(r.getMessage() for r in caplog.records).encode()
    blobs["report"] = json.dumps(report.to_dict(), ensure_ascii=False).encode()
    found = {
        (where, needle) for where, blob in blobs.items() for needle in needles if needle.lower() in blob.lower()
    }
    assert found == set()


def test_adversarial_outputs_are_valid_and_keep_what_the_pipeline_needs(adversarial_tree, tmp_path):
    dst = tmp_path / "anon"
    anonymize_tree(adversarial_tree, dst, AnonymizeConfig(), b"adversarial-test-key-0123456789")
    nm = [dcmread(p) for p in dst.glob("*.dcm") if dcmread(p, stop_before_pixels=True).Modality == "NM"]
    drawn = next(ds for ds in nm if ds.Columns == 32)
    assert int(drawn.pixel_array.max()) == 0  # only the overlay was in the pixels: nothing is left
    assert np.frombuffer(drawn.PixelData, "<u2").max() < 2**8  # the high byte is zero in the file
    assert drawn.StudyTime != RAW_TIME and len(drawn.StudyTime) == len(RAW_TIME)
    assert len(drawn.DeidentificationMethodCodeSequence) == 2
    assert {ds.SpecificCharacterSet for ds in nm} >= {"ISO_IR 100", "GB18030"}  # character sets kept
