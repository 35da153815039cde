"""Specification of the embedded phantom cohort: layout, labels, headers, representations, bad files."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from bonescan.config import PhantomConfig
from bonescan.dicom import phantom
from bonescan.dicom.phantom import (
    GROUND_TRUTH,
    GROUND_TRUTH_COLUMNS,
    global_statistic_separability,
    make_nm_dataset,
    make_radiograph_dataset,
    plan_cohort,
    sample_patient_identity,
    sample_study_identity,
    write_cohort,
)

IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientAddress",
    "OtherPatientIDs", "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName", "StationName", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "ContentDate", "ContentTime", "StudyID", "StudyDescription", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
)  # fmt: skip
# In-process (workers=1): a pool costs more to start than these cohorts take to render.
SMALL = PhantomConfig(
    patients=8, chest_patients=8, bone_size=(256, 64), chest_size=(64, 64), seed=7, workers=1
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    return write_cohort(SMALL, out)


def _labels(path: Path) -> dict[str, str]:
    with path.open() as fp:
        rows = list(csv.DictReader(fp))
    assert rows and list(rows[0]) == ["accession_number", "label"]
    return {row["accession_number"]: row["label"] for row in rows}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _valid_files(summary) -> list[Path]:
    return [summary.out_dir / f for study in summary.bone for f in study.files]


def test_same_seed_writes_byte_identical_files_and_another_seed_does_not(tmp_path):
    cfg = SMALL.model_copy(update={"patients": 3, "chest_patients": 2})
    write_cohort(cfg, tmp_path / "a")
    write_cohort(cfg, tmp_path / "b")
    write_cohort(cfg.model_copy(update={"seed": cfg.seed + 1}), tmp_path / "c")
    first, again, other = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert first == again
    assert first.keys() != other.keys()


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_cohort_is_byte_identical_whatever_the_number_of_workers(tmp_path):
    cfg = PhantomConfig(patients=5, chest_patients=1, bone_size=(128, 32), chest_size=(32, 32), seed=11)
    serial = write_cohort(cfg.model_copy(update={"workers": 1}), tmp_path / "serial")
    parallel = write_cohort(cfg.model_copy(update={"workers": 2}), tmp_path / "parallel")
    assert len(serial.bone) > cfg.patients  # some patients have later studies (their body reused)
    assert {"bone/labels.csv", GROUND_TRUTH, "phantom_report.json"} <= _digests(tmp_path / "serial").keys()
    assert _digests(tmp_path / "parallel") == _digests(tmp_path / "serial")
    assert parallel.bone == serial.bone and parallel.bad_files == serial.bad_files


def test_a_phantoms_worker_that_dies_is_an_error_naming_the_in_process_setting():
    studies = plan_cohort(SMALL).bone[:1]
    with pytest.raises(RuntimeError, match=r"bone patient 0 .*phantoms\.workers: 1"):
        phantom._worker_died(studies)


def test_writing_again_replaces_the_previous_cohort(tmp_path):
    write_cohort(SMALL.model_copy(update={"patients": 3, "chest_patients": 2}), tmp_path)
    summary = write_cohort(
        SMALL.model_copy(update={"patients": 2, "chest_patients": 1, "seed": 99}), tmp_path
    )
    written = {f for s in summary.bone + summary.chest for f in s.files} | {b.path for b in summary.bad_files}
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm")}
    assert on_disk == written


def test_layout_follows_the_data_contract(cohort):
    root = cohort.out_dir
    assert (root / "bone" / "labels.csv").is_file()
    assert (root / "chest" / "labels.csv").is_file()
    assert (root / "phantom_report.json").is_file()
    for path in _valid_files(cohort):
        export, study, name = Path(path).relative_to(root / "bone").parts
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        family, given = str(ds.PatientName).split("^")[:2]
        assert export == f"{family}_{given}_{ds.PatientID}"  # PHI in folder names, on purpose
        assert study == f"{ds.StudyDate}_{ds.AccessionNumber}"
        assert name.startswith("IMG") and name.endswith(".dcm")


def test_labels_csv_is_keyed_by_the_accession_numbers_in_the_files(cohort):
    labels = _labels(cohort.out_dir / "bone" / "labels.csv")
    burned = [b for b in cohort.bad_files if b.kind == "burned_in"]
    assert len(labels) == len(cohort.bone) + len(burned)
    for study in cohort.bone:
        assert labels[study.accession] == study.label
        for f in study.files:
            assert (
                pydicom.dcmread(cohort.out_dir / f, stop_before_pixels=True).AccessionNumber
                == study.accession
            )
    assert set(labels.values()) <= {"healthy", "metastasis", "benign"}
    chest = _labels(cohort.out_dir / "chest" / "labels.csv")
    assert chest == {s.accession: s.label for s in cohort.chest}
    assert set(chest.values()) <= {"normal", "covid19", "lung_opacity", "viral_pneumonia"}


def test_ground_truth_lists_every_labelled_study_beside_the_bone_folder(cohort):
    out = cohort.out_dir
    truth = pd.read_csv(out / GROUND_TRUTH, dtype=str, keep_default_na=False)
    assert list(truth.columns) == list(GROUND_TRUTH_COLUMNS)
    assert not any(p.name == GROUND_TRUTH for p in (out / "bone").rglob("*"))  # ingest never walks it
    assert set(truth["accession_number"]) == {s.accession for s in cohort.bone}
    uids = {str(pydicom.dcmread(out / s.files[0], stop_before_pixels=True).StudyInstanceUID): s.accession
            for s in cohort.bone}  # fmt: skip
    assert dict(zip(truth["study_instance_uid"], truth["accession_number"], strict=True)) == uids
    with_lesions = truth[truth["lesion"] != ""]
    assert set(with_lesions["label"]) >= {"metastasis", "benign"}
    assert (truth[truth["lesion"] == ""]["site"] == "").all()


def test_patient_classes_follow_the_configured_proportions():
    cfg = PhantomConfig(patients=1000, chest_patients=400)
    plan = plan_cohort(cfg)  # labels only: no rendering
    counts = Counter(plan.bone_labels)
    for label, share in cfg.class_proportions.items():
        assert abs(counts[label] / cfg.patients - share) <= 0.001
    studies = Counter(s.label for s in plan.bone)
    for label, share in cfg.class_proportions.items():
        assert abs(studies[label] / len(plan.bone) - share) < 0.04
    assert set(Counter(s.label for s in plan.chest).values()) == {100}
    assert {len([s for s in plan.bone if s.patient == p]) for p in range(cfg.patients)} == {1, 2, 3}


def test_a_patient_keeps_one_label_and_one_identity_across_studies(cohort):
    by_patient: dict[int, set] = {}
    for study in cohort.bone:
        ids = {pydicom.dcmread(cohort.out_dir / f, stop_before_pixels=True).PatientID for f in study.files}
        by_patient.setdefault(study.patient, set()).add((study.label, *ids))
    assert all(len(v) == 1 for v in by_patient.values())
    assert len({next(iter(v))[1] for v in by_patient.values()}) == len(by_patient)  # IDs distinct per patient


def test_counts_per_view_are_poisson_counts_in_the_configured_range(cohort):
    lo, hi = SMALL.counts_per_view
    totals = [c for study in cohort.bone for c in study.counts]
    assert len(totals) == 2 * len(cohort.bone)
    assert all(lo * 0.99 <= c <= hi * 1.01 for c in totals)
    ds = pydicom.dcmread(cohort.out_dir / cohort.bone[0].files[0])
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    assert int(ds.CountsAccumulated) == int(ds.pixel_array.sum(dtype=np.int64))
    assert np.median(ds.pixel_array) < np.mean(ds.pixel_array)  # mostly empty field of view, hot skeleton


def test_each_study_representation_is_present_and_well_formed(cohort):
    height, width = SMALL.bone_size
    seen = Counter()
    for study in cohort.bone:
        datasets = [pydicom.dcmread(cohort.out_dir / f) for f in study.files]
        seen[study.representation] += 1
        if study.representation == "multiframe":
            (ds,) = datasets
            assert ds.pixel_array.shape == (2, height, width) and ds.pixel_array.dtype == np.uint16
            assert ds.FrameIncrementPointer == 0x00540020 and list(ds.DetectorVector) == [1, 2]
            meanings = [item.ViewCodeSequence[0].CodeMeaning for item in ds.DetectorInformationSequence]
            assert ["anterior" in meanings[0], "posterior" in meanings[1]] == [True, True]
        elif study.representation == "two_instances":
            assert [ds.ImageComments for ds in datasets] == ["ANT", "POST"]
            assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
            assert len({ds.SOPInstanceUID for ds in datasets}) == 2
            for ds, view in zip(datasets, ("anterior", "posterior"), strict=True):
                assert ds.pixel_array.shape == (height, width)
                assert view in ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeMeaning
        else:
            (ds,) = datasets
            assert ds.pixel_array.shape == (height, 2 * width) and ds.ImageComments == "ANT POST"
        for ds in datasets:
            assert ds.Modality == "NM" and ds.SOPClassUID == phantom.NM_IMAGE_STORAGE
            assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "WHOLE BODY", "EMISSION"]
            assert float(ds.PixelSpacing[0]) == pytest.approx(2.26 * 1024 / height, rel=1e-3)
    assert set(seen) == {"multiframe", "two_instances", "side_by_side"}


def test_transfer_syntaxes_are_mixed(cohort):
    syntaxes = {
        pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in _valid_files(cohort)
    }
    assert syntaxes == {ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless}


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000"])
def test_compressed_files_decode_to_exactly_the_counts_written(tmp_path, syntax):
    rng = np.random.default_rng(0)
    frames = rng.poisson(rng.uniform(0, 300, (2, 64, 32))).astype(np.uint16)  # J2K needs >= 32 px (6 levels)
    patient = sample_patient_identity(1, "bone", 0)
    study = sample_study_identity(1, "bone", 0, 0, 0)
    ds = phantom._encode(make_nm_dataset(frames, ["anterior", "posterior"], patient, study), syntax)
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "x.dcm")
    assert back.file_meta.TransferSyntaxUID == phantom.SYNTAX_UIDS[syntax]
    assert back.SOPInstanceUID == study.sop_uid(1)  # compression keeps the seed-derived UID
    np.testing.assert_array_equal(back.pixel_array, frames)


def test_bad_files_are_present_and_really_bad(cohort):
    bad = {b.kind: cohort.out_dir / b.path for b in cohort.bad_files}
    assert set(bad) == {"truncated", "not_dicom", "no_pixel_data", "unsupported_modality", "burned_in"}
    with pytest.raises(ValueError):
        pydicom.dcmread(bad["truncated"]).pixel_array  # noqa: B018
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(bad["not_dicom"])
    assert "PixelData" not in pydicom.dcmread(bad["no_pixel_data"])
    assert pydicom.dcmread(bad["unsupported_modality"]).Modality == "CT"
    burned = pydicom.dcmread(bad["burned_in"])
    assert burned.BurnedInAnnotation == "YES"
    labels = _labels(cohort.out_dir / "bone" / "labels.csv")
    assert burned.AccessionNumber in labels  # labelled, so its rejection shows up downstream
    others = [
        pydicom.dcmread(bad[k], stop_before_pixels=True).AccessionNumber
        for k in ("no_pixel_data", "unsupported_modality")
    ]
    assert not set(others) & set(labels)
    valid = {f for s in cohort.bone for f in s.files}
    assert not {b.path for b in cohort.bad_files} & valid


def test_no_bad_files_unless_asked(tmp_path):
    summary = write_cohort(
        SMALL.model_copy(update={"patients": 2, "chest_patients": 0, "bad_files": False}), tmp_path
    )
    assert summary.bad_files == ()
    assert len(list(tmp_path.rglob("*.dcm"))) == sum(len(s.files) for s in summary.bone)
    assert not (tmp_path / "chest").exists()


def test_identifying_values_sit_in_headers_sequences_and_private_tags(cohort):
    ds = pydicom.dcmread(cohort.out_dir / cohort.bone[0].files[0], stop_before_pixels=True)
    for keyword in IDENTIFYING:
        assert str(ds.get(keyword, "")).strip(), keyword
    assert ds.OtherPatientIDsSequence[0].PatientID == ds.OtherPatientIDs[0]
    request = ds.RequestAttributesSequence[0]
    assert request.RequestedProcedureID and request.ScheduledProcedureStepID
    assert request.AccessionNumber == ds.AccessionNumber
    pharm = ds.RadiopharmaceuticalInformationSequence[0]
    assert pharm.RadiopharmaceuticalStartDateTime.startswith(ds.StudyDate[:4])
    assert "MDP" in pharm.Radiopharmaceutical and float(pharm.RadionuclideTotalDose) > 0
    assert pharm.RadionuclideCodeSequence[0].CodeValue == "72454006"  # Tc-99m
    family = str(ds.PatientName).split("^")[0]
    assert family in ds.private_block(0x0009, "GEMS_GENIE_1")[0x40].value
    ris = ds.private_block(0x0029, "SPRINGFIELD_RIS_1")
    assert ris[0x10].value == ds.PatientID
    assert ris[0x12].value[0].PatientName == ds.PatientName
    assert family in ds.AdditionalPatientHistory or ds.PatientTelephoneNumbers in ds.AdditionalPatientHistory


def test_uids_are_seed_derived_and_distinct(cohort):
    uids = Counter()
    for path in _valid_files(cohort):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids[ds.SOPInstanceUID] += 1
        assert ds.StudyInstanceUID.startswith(phantom.UID_PREFIX) and len(ds.SOPInstanceUID) <= 64
    assert set(uids.values()) == {1}


def test_chest_cohort_mixes_cr_dx_monochrome1_and_rescaling(cohort):
    seen = Counter()
    for study in cohort.chest:
        ds = pydicom.dcmread(cohort.out_dir / study.files[0])
        assert ds.Modality == study.representation and ds.BodyPartExamined == "CHEST"
        assert ds.pixel_array.shape == SMALL.chest_size
        seen[ds.Modality] += 1
        seen[ds.PhotometricInterpretation] += 1
        seen["rescaled"] += (float(ds.RescaleSlope), float(ds.RescaleIntercept)) != (1.0, 0.0)
    assert seen["CR"] and seen["DX"] and seen["MONOCHROME1"] and seen["MONOCHROME2"] and seen["rescaled"]


@pytest.mark.parametrize(
    "monochrome1, rescale", [(False, (1.0, 0.0)), (True, (2.0, -1024.0)), (True, (0.5, 0.0))]
)
def test_radiograph_pixels_come_back_through_modality_lut_and_inversion(monochrome1, rescale):
    brightness = np.random.default_rng(3).random((16, 12)).astype(np.float32)
    patient = sample_patient_identity(1, "chest", 0)
    study = sample_study_identity(1, "chest", 0, 0, 0)
    ds = make_radiograph_dataset(
        brightness, patient, study, modality="DX", monochrome1=monochrome1, rescale=rescale
    )
    values = apply_modality_lut(ds.pixel_array, ds).astype(float)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = 4095.0 - values
    np.testing.assert_allclose(values / 4095.0, brightness, atol=rescale[0] / 4095.0)


def test_make_nm_dataset_needs_one_view_per_frame_and_uint16():
    patient, study = sample_patient_identity(1, "bone", 0), sample_study_identity(1, "bone", 0, 0, 0)
    with pytest.raises(ValueError, match="views"):
        make_nm_dataset(np.zeros((2, 8, 4), np.uint16), ["anterior"], patient, study)
    with pytest.raises(ValueError, match="uint16"):
        make_nm_dataset(np.zeros((1, 8, 4), np.float32), ["anterior"], patient, study)


def test_report_holds_aggregates_and_no_identifying_values(cohort):
    text = (cohort.out_dir / "phantom_report.json").read_text()
    report = json.loads(text)
    assert report["bone"]["studies"] == len(cohort.bone)
    assert report["bone"]["classes"] == cohort.bone_class_counts
    assert report["bad_files"]["count"] == 5
    assert report["global_statistic_separability"]["n"] == len(cohort.bone)
    for path in _valid_files(cohort)[:5]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for value in (
            ds.PatientID,
            ds.AccessionNumber,
            str(ds.PatientName).split("^")[0],
            ds.PatientBirthDate,
        ):
            assert value not in text


def test_separability_check_detects_a_class_dependent_global_statistic():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"] * 20
    images = [rng.poisson(5.0 + 5.0 * "abc".index(label), (2, 32, 8)) for label in labels]
    result = global_statistic_separability(images, labels, seed=0)
    assert result["accuracy"] > 0.95 and result["balanced_margin"] > 0.5


def test_global_statistics_do_not_separate_the_phantom_classes(tmp_path):
    cfg = SMALL.model_copy(
        update={"patients": 90, "chest_patients": 0, "bad_files": False, "studies_per_patient": (1, 2)}
    )
    result = write_cohort(cfg, tmp_path).separability
    assert result["n"] >= 90 and result["folds"] == 5
    assert result["accuracy_margin"] < 0.1, result  # vs. always answering the majority class
    assert result["balanced_margin"] < 0.1, result  # vs. 1/3 for class-balanced guessing
