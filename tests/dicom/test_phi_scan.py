"""Specification of the residual-PHI scan."""

from __future__ import annotations

import io
import json
import warnings

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage, generate_uid

from bonescan.dicom.anonymize import AnonymizationError
from bonescan.dicom.phi_scan import Leak, PhiScanReport, identifying_values, is_meaningful, scan_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # odd values in pydicom's test files


def patient(**attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NuclearMedicineImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = NuclearMedicineImageStorage, generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JOHN^Q", "4711", "19650302", "M"
    ds.AccessionNumber, ds.InstitutionName = "ACC123456", "St. Elsewhere Hospital"
    ds.OperatorsName = ["NURSE^JACKIE", "LI^NA"]
    ds.StudyDescription = "Whole body bone scan (Dr. Watson protocol)"
    ds.Manufacturer, ds.Modality, ds.ImageType = (
        "GE MEDICAL SYSTEMS",
        "NM",
        ["ORIGINAL", "PRIMARY", "WHOLE BODY"],
    )
    ds.ProtocolName = "WHOLE BODY"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def clean(**attrs) -> Dataset:
    """An output that kept nothing identifying."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = "2.25.1234567890"
    ds.PatientID = ds.PatientName = "C6CAAB367A4327EE"
    ds.Modality, ds.ImageType, ds.Manufacturer = (
        "NM",
        ["ORIGINAL", "PRIMARY", "WHOLE BODY"],
        "GE MEDICAL SYSTEMS",
    )
    ds.StudyDate = "20221203"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


# --------------------------------------------------------------------------------- what identifies
def test_identifying_values_cover_names_ids_accession_institution_and_birth_date_formats():
    values = {v.upper() for v in identifying_values(patient())}
    assert {"DOE^JOHN^Q", "DOE JOHN", "JOHN DOE", "DOE", "JOHN"} <= values
    assert {"4711", "ACC123456", "ST. ELSEWHERE HOSPITAL", "NURSE JACKIE", "LI NA"} <= values
    assert {"19650302", "1965-03-02", "1965/03/02", "02.03.1965", "02/03/1965", "03/02/1965"} <= values
    assert "WHOLE BODY BONE SCAN (DR. WATSON PROTOCOL)" in values  # StudyDescription: X in Table E.1-1


def test_values_too_short_or_too_generic_are_skipped():
    values = {
        v.upper() for v in identifying_values(patient(PatientSex="M", OtherPatientIDs=["ANON", "12", "Y"]))
    }
    assert not {"M", "Q", "LI", "NA", "ANON", "12", "Y"} & values
    assert not is_meaningful("Dr") and not is_meaningful("001") and not is_meaningful("anonymous")
    assert is_meaningful("4711") and is_meaningful("Lee")


def test_removed_descriptions_that_equal_kept_values_are_not_identifying():
    values = {v.upper() for v in identifying_values(patient())}
    assert "WHOLE BODY" not in values  # ProtocolName (X/D) is also an ImageType value, which is kept
    site = identifying_values(patient(InstitutionName="TOSHIBA", Manufacturer="TOSHIBA_MEC"))
    assert "TOSHIBA" not in {v.upper() for v in site}


# ------------------------------------------------------------------------------------- finding leaks
def test_scan_finds_a_name_planted_in_a_nested_sequence():
    out = clean()
    item = Dataset()
    item.CodeMeaning = "scan of Doe, John"
    wrapper = Dataset()
    wrapper.ViewCodeSequence = Sequence([item])
    out.DetectorInformationSequence = Sequence([wrapper])
    leaks = scan_dataset(out, identifying_values(patient()), "2.25.1234567890.dcm")
    assert [leak.location for leak in leaks] == [
        "DetectorInformationSequence[0].ViewCodeSequence[0].CodeMeaning"
    ]
    assert leaks[0].tag == "(0008,0104)" and leaks[0].keyword == "CodeMeaning"


def test_scan_finds_an_id_in_a_private_tag_and_in_file_meta():
    out = clean()
    out.private_block(0x0009, "HOSPITAL", create=True).add_new(0x10, "LO", "MRN 4711")
    out.file_meta.SourceApplicationEntityTitle = "ACC123456"
    leaks = scan_dataset(out, identifying_values(patient()), "x.dcm")
    assert {(leak.location, leak.keyword) for leak in leaks} == {
        ("(0009,1010)", ""),
        ("file_meta.SourceApplicationEntityTitle", "SourceApplicationEntityTitle"),
    }


def test_scan_finds_identity_in_file_and_folder_names_and_masks_it():
    leaks = scan_dataset(clean(), identifying_values(patient()), "DOE_JOHN_4711/19650302/IMG00001.dcm")
    assert [leak.location for leak in leaks] == ["path"]
    assert leaks[0].file == "***_***/***/IMG00001.dcm"  # "DOE_JOHN" masked as one name


def test_scan_finds_the_birth_date_in_another_format_in_free_text():
    leaks = scan_dataset(clean(ImageComments="born 02.03.1965"), identifying_values(patient()), "x.dcm")
    assert [leak.keyword for leak in leaks] == ["ImageComments"]


def test_an_identity_in_a_kept_attribute_is_still_a_leak():
    out = clean(BodyPartExamined="4711", SeriesDescription="JOHN DOE")
    leaks = scan_dataset(out, identifying_values(patient()), "x.dcm")
    assert {leak.keyword for leak in leaks} == {"BodyPartExamined", "SeriesDescription"}


def test_matching_is_by_whole_tokens_not_substrings():
    values = {"LEE", "4711"}
    out = clean(ImageComments="SLEEP STUDY 47110", SeriesDescription="lee_4711")
    leaks = scan_dataset(out, values, "x.dcm")
    assert [leak.keyword for leak in leaks] == ["SeriesDescription"]


def test_reports_carry_locations_never_values():
    out = clean(ImageComments="John Doe 4711")
    report = PhiScanReport()
    report.add(scan_dataset(out, identifying_values(patient()), "DOE_JOHN/x.dcm"))
    report.add([])
    data = json.loads(report.to_json())
    assert data["files"] == 2 and data["leaks"] == 2 and len(data["details"]) == 2
    text = report.to_json().upper()
    assert "DOE" not in text and "JOHN" not in text and "4711" not in text
    assert set(data["details"][0]) == {"file", "location", "tag", "keyword"}
    assert isinstance(Leak("f", "path", "", "").to_dict(), dict)


# ---------------------------------------------------------------------------------- real output
def test_no_residual_phi_in_anonymized_corpus_output(corpus, anonymizer):
    scanned = 0
    for path in corpus:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
        try:
            out = anonymizer.anonymize(ds)
        except AnonymizationError:
            continue
        buf = io.BytesIO()
        dcmwrite(buf, out, enforce_file_format=True)
        buf.seek(0)
        leaks = scan_dataset(dcmread(buf), identifying_values(ds), f"{out.SOPInstanceUID}.dcm")
        assert leaks == [], path.name
        scanned += 1
    assert scanned >= 200


def test_scan_of_raw_corpus_input_finds_its_identity(corpus):
    """The scan is not vacuous: un-anonymized files with a patient name are flagged."""
    flagged = with_name = 0
    for path in corpus:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True)
        values = identifying_values(ds)
        if any(v == str(ds.get("PatientName", "")) for v in values):
            with_name += 1
            flagged += bool(scan_dataset(ds, values, path.name))
    assert with_name >= 100 and flagged == with_name


# ------------------------------------------------------------------------- issue 14: what is searched
def _nested(item: Dataset) -> Dataset:
    outer = Dataset()
    outer.ReferencedStudySequence = Sequence([item])
    return clean(ProcedureCodeSequence=Sequence([outer]))


def test_scan_finds_a_raw_date_and_a_private_binary_ssn_inside_a_sequence():
    """Issue 14.1: both sat in a copied DeidentificationMethodCodeSequence and the scan said 0 leaks."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113100", "DCM", "Basic"
    item.StudyDate = "20230114"
    item.private_block(0x0009, "ACME 1.0", create=True).add_new(0x02, "OB", b"123-45-6789\0")
    ds_in = patient(DeidentificationMethodCodeSequence=Sequence([item]))
    values = identifying_values(ds_in)
    assert {"20230114", "2023-01-14", "14.01.2023", "123-45-6789"} <= values
    leaked = Dataset()
    leaked.StudyDate = "20230114"
    leaks = scan_dataset(_nested(leaked), values, "x.dcm")
    assert [leak.location for leak in leaks] == ["ProcedureCodeSequence[0].ReferencedStudySequence[0].StudyDate"]
    ssn = Dataset()
    ssn.add_new(0x00181000, "LO", "SN 123-45-6789")  # DeviceSerialNumber, kept by no rule here
    assert len(scan_dataset(_nested(ssn), values, "x.dcm")) == 1


def test_raw_times_and_datetimes_are_identifying_coarse_ones_are_not():
    """Issue 14.2: a time to the second (with fraction: a key back to the PACS) must not survive."""
    ds_in = patient(StudyTime="093512.654321", SeriesTime="0935", AcquisitionDateTime="20230114093512+0100")
    values = identifying_values(ds_in)
    assert {"093512.654321", "20230114093512+0100", "093512", "20230114"} <= values
    assert "0935" not in values  # HHMM: 1440 values a day, in every image size and counter
    leaks = scan_dataset(clean(ContentTime="093512.654321"), values, "x.dcm")
    assert [leak.keyword for leak in leaks] == ["ContentTime"]


def test_a_shifted_time_that_lands_on_another_raw_time_is_a_coincidence_not_a_leak():
    """A fresh key's demo failed ingest: StudyTime 111927 moved by the patient's offset (-3 h 35 min)
    onto 074410, the raw injection time of the same file, and the scan called it residual PHI."""
    drug = Dataset()
    drug.RadiopharmaceuticalStartTime = "074410"
    ds_in = patient(StudyTime="111927", SeriesTime="112427",
                    RadiopharmaceuticalInformationSequence=Sequence([drug]))  # fmt: skip
    shifted_drug = Dataset()
    shifted_drug.RadiopharmaceuticalStartTime = "040853"
    ds_out = clean(StudyTime="074410", SeriesTime="074910",
                   RadiopharmaceuticalInformationSequence=Sequence([shifted_drug]))  # fmt: skip
    values = identifying_values(ds_in)
    assert [leak.keyword for leak in scan_dataset(ds_out, values, "x.dcm")] == ["StudyTime"]  # without the input
    assert scan_dataset(ds_out, values, "x.dcm", ds_in) == []
    # What stays a leak: a time left unshifted, a raw time in any other element.
    kept = clean(StudyTime="111927", SeriesTime="074910", ImageComments="injected 074410",
                 RadiopharmaceuticalInformationSequence=Sequence([shifted_drug]))  # fmt: skip
    assert sorted(leak.keyword for leak in scan_dataset(kept, values, "x.dcm", ds_in)) == ["ImageComments", "StudyTime"]
    unshifted_drug = clean(RadiopharmaceuticalInformationSequence=Sequence([drug]))
    leaks = scan_dataset(unshifted_drug, values, "x.dcm", ds_in)
    assert [leak.location for leak in leaks] == ["RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime"]


def test_free_text_outside_the_table_is_searched_where_it_stands():
    """Issue 14.3: values the extra rules clean are identifying, found in any attribute of the output."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "NM1", "99STELSEWHERE", "Hibbert protocol"
    ds_in = patient(ContentDescription="read by Hibbert Julius", ImageID="DOEWB77",
                    ProcedureCodeSequence=Sequence([code]))  # fmt: skip
    values = identifying_values(ds_in)
    assert {"read by Hibbert Julius", "DOEWB77", "Hibbert protocol", "99STELSEWHERE"} <= values
    leaks = scan_dataset(clean(SeriesDescription="DOEWB77", ContentLabel="99STELSEWHERE"), values, "x.dcm")
    assert sorted(leak.keyword for leak in leaks) == ["ContentLabel", "SeriesDescription"]


def test_dates_of_an_input_that_declares_them_modified_are_not_searched():
    ds_in = patient(StudyDate="20221203", PatientIdentityRemoved="YES",
                    LongitudinalTemporalInformationModified="MODIFIED")  # fmt: skip
    assert "20221203" not in identifying_values(ds_in)
    assert "20221203" in identifying_values(patient(StudyDate="20221203"))


def test_a_header_that_yields_only_dates_and_times_names_no_one():
    from bonescan.dicom.phi_scan import names_anyone

    cut_short = identifying_values(clean(StudyDate="20230114", StudyTime="093512", PatientID="", PatientName=""))
    assert cut_short and not names_anyone(cut_short)
    assert names_anyone(identifying_values(patient()))
