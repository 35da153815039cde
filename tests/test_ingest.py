"""Specification of the ingest stage: anonymize, decode, name views, crop/resize, manifest, quarantine, reports."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bonescan.config import AnonymizeConfig, DatasetConfig, IngestConfig, PhantomConfig
from bonescan.data.manifest import MANIFEST_COLUMNS, read_manifest
from bonescan.dicom import anonymize as anonymize_module
from bonescan.dicom.phantom import write_cohort
from bonescan.ingest import (
    ResidualPHIError,
    ingest_dataset,
    iter_files,
    match_class,
    parse_patient_id,
)

SECRET = b"test-secret-0123456789abcdef"
SIZE = (64, 32)
BONE_CLASSES = ("healthy", "metastasis", "benign")
CHEST = Path("/work/shared/data/chest_xray_cc_by")
# Identities written into the raw cohort below; none may reach an output.
PHI = [
    "DOE",
    "JOHN",
    "4711",
    "ROE",
    "JANE",
    "5822",
    "MILLER",
    "6933",
    "ACC1001",
    "ACC2002",
    "ACC3003",
    "19610203",
    "St Elsewhere",
]


# --------------------------------------------------------------------------- building a raw cohort


def body(height: int = 128, width: int = 32, seed: int = 0, counts: float = 2e5) -> np.ndarray:
    """A crude whole-body emission image (head, trunk, legs), Poisson counts, uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    head = ((yy - 0.14) / 0.05) ** 2 + ((xx - 0.5) / 0.12) ** 2 < 1
    trunk = (yy > 0.2) & (yy < 0.5) & (np.abs(xx - 0.5) < 0.25)
    legs = (yy >= 0.5) & (yy < 0.9) & (np.abs(np.abs(xx - 0.5) - 0.1) < 0.06)
    activity = head + trunk + 0.8 * legs
    return rng.poisson(activity / activity.sum() * counts).astype(np.uint16)


def view_code(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "G-A117", "SRT", meaning
    item = Dataset()
    item.ViewCodeSequence = [code]
    return item


def nm(frames: np.ndarray, name: str, patient_id: str, accession: str, study_uid: str, **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".1"
    ds.Modality = "NM"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19610203"
    ds.AccessionNumber = accession
    ds.StudyDate = "20230114"
    ds.InstitutionName = "St Elsewhere"
    ds.PixelSpacing = [2.26, 2.26]
    ds.set_pixel_data(frames, "MONOCHROME2", 16)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def build_raw(root: Path) -> dict[str, str]:
    """A hospital-export-like tree (PHI in folder names) with every study shape and every kind of bad file.

    Returns:
        file name -> expected quarantine reason (prefix) for each bad file.
    """
    pair = np.stack([body(seed=1), body(seed=2, counts=1e5)])
    save(
        nm(pair, "DOE^JOHN", "4711", "ACC1001", "1.2.3.1",
           DetectorInformationSequence=[view_code("anterior projection"), view_code("posterior projection")],
           DetectorVector=[1, 2], FrameIncrementPointer=0x00540020),
        root / "DOE_JOHN_4711" / "20230114_ACC1001" / "IMG0001.dcm",
    )  # fmt: skip
    for comment, seed in (("ANT", 3), ("POST", 4)):  # two instances, named only by free text
        save(nm(body(seed=seed), "ROE^JANE", "5822", "ACC2002", "1.2.3.2", ImageComments=f"WB {comment}"),
             root / "ROE_JANE_5822" / "ACC2002" / f"{comment}.dcm")  # fmt: skip
    wide = np.concatenate([body(seed=5), body(seed=6, counts=1e5)], axis=1)
    save(nm(wide, "MILLER^MAX", "6933", "ACC3003", "1.2.3.3", ImageComments="ANT POST"),
         root / "MILLER_MAX_6933" / "ACC3003" / "WB.dcm")  # fmt: skip
    real = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # the real bone scan, JPEG 2000
    real.AccessionNumber = "ACC4004"
    save(real, root / "NM1" / "scan.dcm")

    bad = {}
    (root / "DOE_JOHN_4711" / "notes.txt").write_text("report for the referring physician\n")
    bad["notes.txt"] = "not a DICOM file"
    good = (root / "DOE_JOHN_4711" / "20230114_ACC1001" / "IMG0001.dcm").read_bytes()
    (root / "DOE_JOHN_4711" / "20230114_ACC1001" / "IMG0002.dcm").write_bytes(good[: len(good) * 2 // 3])
    bad["IMG0002.dcm"] = "truncated / unreadable"
    ct = nm(body(seed=7), "DOE^JOHN", "4711", "ACC1001", "1.2.3.1")
    ct.Modality = "CT"
    save(ct, root / "DOE_JOHN_4711" / "CT" / "ct.dcm")
    bad["ct.dcm"] = "unsupported modality CT (accepted: NM)"
    empty = nm(body(seed=8), "DOE^JOHN", "4711", "ACC1001", "1.2.3.1")
    del empty.PixelData
    save(empty, root / "DOE_JOHN_4711" / "SR" / "nopixels.dcm")
    bad["nopixels.dcm"] = "no pixel data"
    save(nm(body(seed=9), "ROE^JANE", "5822", "ACC6006", "1.2.3.6", BurnedInAnnotation="YES"),
         root / "ROE_JANE_5822" / "ACC6006" / "burned.dcm")  # fmt: skip
    bad["burned.dcm"] = "burned-in annotation"
    save(
        nm(body(seed=10), "ROE^JANE", "5822", "ACC9999", "1.2.3.9"),
        root / "ROE_JANE_5822" / "ACC9999" / "nolabel.dcm",
    )
    bad["nolabel.dcm"] = "no label for this study"
    lossy = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))  # non-conformant JPEG stream
    lossy.AccessionNumber = "ACC5005"
    save(lossy, root / "NM1" / "lossy.dcm")
    bad["lossy.dcm"] = "cannot decode JPEG Extended"

    labels = {"ACC1001": "healthy", "ACC2002": "metastasis", "ACC3003": "benign", "ACC4004": "healthy",
              "ACC5005": "healthy", "ACC6006": "benign"}  # fmt: skip
    pd.DataFrame({"accession_number": list(labels), "label": list(labels.values())}).to_csv(
        root / "labels.csv", index=False
    )
    return bad


def dataset_config(tmp: Path, out: str = "out", **kw) -> DatasetConfig:
    values = dict(
        format="dicom",
        raw_dir=str(tmp / "raw"),
        labels=str(tmp / "raw" / "labels.csv"),
        classes=BONE_CLASSES,
        modalities=("NM",),
        split_views=True,
        interim_dir=f"{out}/interim",
        out_dir=f"{out}/processed",
        reports_dir=f"{out}/reports",
        metrics_dir=f"{out}/metrics",
    )
    values.update(kw)
    return DatasetConfig(**values)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def outputs(root: Path) -> dict[str, str]:
    """Every output file under `root` -> content hash (timings left out, paths taken relative to `root`)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(
            p.read_bytes().replace(f"{root.name}/".encode(), b"")
        ).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "ingest.json"
    }


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = build_raw(tmp_path / "raw")
    return tmp_path, bad


def run(tmp: Path, workers: int = 1, out: str = "out", **kw):
    return ingest_dataset("target", dataset_config(tmp, out), IngestConfig(workers=workers, chunksize=2, **kw),
                          AnonymizeConfig(), SIZE, SECRET)  # fmt: skip


# --------------------------------------------------------------------------- DICOM ingest


def test_dicom_ingest_writes_one_row_per_view_with_pseudonymous_ids(cohort):
    tmp, _ = cohort
    summary = run(tmp)
    manifest = read_manifest(tmp / "out/interim/manifest.csv")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    # 2 frames + 2 instances + side by side + the real scan (one view)
    assert len(manifest) == 7 and summary.images_written == 7
    by_label = manifest.groupby("label")["view"].apply(sorted).to_dict()
    assert by_label == {
        "benign": ["anterior", "posterior"],
        "healthy": ["anterior", "anterior", "posterior"],
        "metastasis": ["anterior", "posterior"],
    }
    assert manifest.groupby("study_id")["patient_id"].nunique().max() == 1
    assert manifest["patient_id"].nunique() == 4 and manifest["study_id"].nunique() == 4
    assert manifest["patient_id"].str.fullmatch(r"[0-9A-F]{16}").all()
    assert set(manifest["source"]) == {"dicom:NM"} and not manifest["synthetic"].any()
    assert (manifest["split"] == "").all()
    for path in manifest["path"]:
        with Image.open(path) as img:  # relative to the working directory
            assert img.mode == "I;16" and img.size == (SIZE[1], SIZE[0])
    anonymized = sorted((tmp / "out/interim/dicom").iterdir())
    assert len(anonymized) == 5  # one per accepted instance, named by the new SOPInstanceUID
    assert all(p.name.startswith("2.25.") and p.suffix == ".dcm" for p in anonymized)


def test_no_identifying_value_reaches_any_output(cohort):
    tmp, _ = cohort
    run(tmp)
    texts = [p.read_text() for p in (tmp / "out").rglob("*") if p.suffix in {".csv", ".json"}]
    texts += [p.name for p in (tmp / "out").rglob("*")]
    for value in PHI:
        whole_word = re.compile(rf"(?<![a-z0-9]){re.escape(value)}(?![a-z0-9])", re.IGNORECASE)
        assert not any(whole_word.search(text) for text in texts), value
    for path in (tmp / "out/interim/dicom").iterdir():
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) not in {"DOE^JOHN", "ROE^JANE", "MILLER^MAX"} and ds.AccessionNumber == ""


def test_every_bad_file_is_quarantined_with_its_reason_and_paths_are_masked(cohort):
    tmp, bad = cohort
    summary = run(tmp)
    quarantine = pd.read_csv(tmp / "out/reports/quarantine.csv", keep_default_na=False)
    assert list(quarantine.columns) == ["file", "reason"]
    found = {Path(f).name: reason for f, reason in zip(quarantine["file"], quarantine["reason"], strict=True)}
    assert set(found) == set(bad)
    for name, reason in bad.items():
        assert found[name].startswith(reason), (name, found[name])
    assert "labels.csv" not in found  # the labels file in the raw tree is skipped, not quarantined
    assert summary.files_seen == 5 + len(bad) and summary.quarantined == len(bad)
    notes = quarantine["file"][quarantine["file"].str.endswith("notes.txt")].item()
    assert notes == "***_***/notes.txt"  # DOE_JOHN_4711: the folder named after the patient is masked
    metrics = json.loads((tmp / "out/reports/ingest.json").read_text())
    assert metrics["quarantined"] == len(bad) and metrics["quarantined_not_dicom"] == 1
    assert metrics["quarantined_decode_error"] == 1 and metrics["quarantined_burned_in"] == 1
    assert metrics["images_written"] == 7 and metrics["files_seen"] == summary.files_seen


def test_phi_scan_report_counts_every_anonymized_file(cohort):
    tmp, _ = cohort
    run(tmp)
    report = json.loads((tmp / "out/reports/phi_scan.json").read_text())
    assert report == {"files": 6, "leaks": 0, "details": []}  # 5 kept + 1 scanned, then found undecodable


def test_raw_inputs_are_never_modified(cohort):
    tmp, _ = cohort
    before = snapshot(tmp / "raw")
    run(tmp)
    assert snapshot(tmp / "raw") == before


def test_rerun_after_an_interrupted_run_gives_the_same_outputs(cohort):
    tmp, _ = cohort
    run(tmp)
    first = outputs(tmp / "out")
    # a crash leaves a half-written temp file and misses some outputs
    (tmp / "out/interim/manifest.csv").unlink()
    next((tmp / "out/processed/images").iterdir()).unlink()
    (tmp / "out/processed/images/.x.png.123.tmp").write_bytes(b"partial")
    run(tmp)
    second = outputs(tmp / "out")
    assert second == first  # the temp file of the crashed run is gone too


@pytest.mark.slow
def test_parallel_result_equals_serial_result(cohort):
    tmp, _ = cohort
    run(tmp, workers=1, out="serial")
    run(tmp, workers=2, out="parallel")
    assert outputs(tmp / "serial") == outputs(tmp / "parallel")


def test_residual_phi_fails_the_stage_after_writing_the_report(cohort, monkeypatch):
    tmp, _ = cohort
    original = anonymize_module.Anonymizer.anonymize

    def leaky(self, ds):
        out = original(self, ds)
        out.PatientComments = str(ds.PatientName).replace("^", " ")  # a name slipping through
        return out

    monkeypatch.setattr(anonymize_module.Anonymizer, "anonymize", leaky)
    with pytest.raises(ResidualPHIError, match="residual PHI"):
        run(tmp)
    report = json.loads((tmp / "out/reports/phi_scan.json").read_text())
    assert report["files"] == 6 and report["leaks"] >= 6
    assert {d["keyword"] for d in report["details"]} == {"PatientComments"}
    assert not any(v in json.dumps(report) for v in ("DOE", "JOHN", "ROE", "JANE"))
    assert not list((tmp / "out/interim/dicom").iterdir())  # leaking outputs are removed
    assert len(read_manifest(tmp / "out/interim/manifest.csv")) == 0
    quarantine = pd.read_csv(tmp / "out/reports/quarantine.csv")
    assert quarantine["reason"].str.startswith("residual PHI after anonymization").sum() == 6


def test_dicom_dataset_requires_labels_and_secret(cohort):
    tmp, _ = cohort
    with pytest.raises(ValueError, match="secret"):
        ingest_dataset("target", dataset_config(tmp), IngestConfig(), AnonymizeConfig(), SIZE, None)
    with pytest.raises(ValueError, match="inside raw_dir"):
        ingest_dataset(
            "target", dataset_config(tmp, out="raw/out"), IngestConfig(), AnonymizeConfig(), SIZE, SECRET
        )


# --------------------------------------------------------------------------- the phantom cohort

BAD_REASONS = {
    "truncated": "truncated / unreadable",
    "not_dicom": "not a DICOM file",
    "no_pixel_data": "no pixel data",
    "unsupported_modality": "unsupported modality CT (accepted: NM)",
    "burned_in": "burned-in annotation",
}


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """A tiny phantom cohort (all three study representations, mixed syntaxes, bad files), ingested twice."""
    tmp = tmp_path_factory.mktemp("phantoms")
    summary = write_cohort(PhantomConfig(patients=6, chest_patients=0, bone_size=(256, 64)), tmp / "raw")
    before = snapshot(tmp / "raw")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        dataset = dataset_config(tmp, raw_dir=str(tmp / "raw/bone"), labels=str(tmp / "raw/bone/labels.csv"))
        serial = ingest_dataset("target", dataset, IngestConfig(workers=1), AnonymizeConfig(), SIZE, SECRET)
        parallel_cfg = dataset_config(
            tmp, out="par", raw_dir=str(tmp / "raw/bone"), labels=str(tmp / "raw/bone/labels.csv")
        )
        ingest_dataset(
            "target", parallel_cfg, IngestConfig(workers=2, chunksize=3), AnonymizeConfig(), SIZE, SECRET
        )
    finally:
        os.chdir(cwd)
    return tmp, summary, serial, before


@pytest.mark.slow
def test_phantom_cohort_yields_an_anterior_and_a_posterior_view_per_study(phantom_run):
    tmp, cohort_summary, summary, _ = phantom_run
    manifest = read_manifest(tmp / "out/interim/manifest.csv")
    assert {s.representation for s in cohort_summary.bone} == {"multiframe", "two_instances", "side_by_side"}
    assert summary.studies == len(cohort_summary.bone) and summary.patients == cohort_summary.bone_patients
    views = manifest.groupby("study_id")["view"].apply(lambda v: tuple(sorted(v)))
    assert set(views) == {("anterior", "posterior")}
    expected = {label: 2 * n for label, n in cohort_summary.bone_class_counts.items()}
    assert manifest["label"].value_counts().to_dict() == expected


@pytest.mark.slow
def test_phantom_views_are_cropped_head_to_feet(phantom_run):
    tmp, *_ = phantom_run
    for path in read_manifest(tmp / "out/interim/manifest.csv")["path"]:
        image = np.asarray(Image.open(tmp / path), dtype=np.float64) / 65535
        rows = np.flatnonzero(image.max(axis=1) > 0.05)
        assert rows[-1] - rows[0] + 1 >= 0.9 * SIZE[0]  # the body fills the height after the crop
        assert image.max() > 0.9  # the percentile maps to white (anti-aliasing softens it a little)


@pytest.mark.slow
def test_phantom_bad_files_are_all_quarantined_with_their_reasons(phantom_run):
    tmp, cohort_summary, summary, _ = phantom_run
    quarantine = pd.read_csv(tmp / "out/reports/quarantine.csv")
    expected = sorted(BAD_REASONS[b.kind] for b in cohort_summary.bad_files)
    assert sorted(r.split(":")[0] for r in quarantine["reason"]) == [r.split(":")[0] for r in expected]
    assert summary.files_seen == sum(len(s.files) for s in cohort_summary.bone) + len(
        cohort_summary.bad_files
    )


@pytest.mark.slow
def test_phantom_ingest_leaks_nothing_and_leaves_raw_files_untouched(phantom_run):
    tmp, cohort_summary, _, before = phantom_run
    assert snapshot(tmp / "raw") == before
    assert json.loads((tmp / "out/reports/phi_scan.json").read_text())["leaks"] == 0
    manifest_text = (tmp / "out/interim/manifest.csv").read_text()
    assert not any(s.accession in manifest_text for s in cohort_summary.bone)
    folders = {part for s in cohort_summary.bone for f in s.files for part in Path(f).parts[1:3]}
    assert not any(folder in manifest_text for folder in folders)  # patient and study folder names


@pytest.mark.slow
def test_phantom_parallel_ingest_equals_serial(phantom_run):
    tmp, *_ = phantom_run
    assert outputs(tmp / "out") == outputs(tmp / "par")


# --------------------------------------------------------------------------- image datasets


def test_image_csv_dataset_uses_the_csv_labels_and_patient_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = pd.read_csv(CHEST / "labels.csv")
    chosen = pd.concat(
        [table[table["label"] == label].head(2) for label in ("normal", "covid19", "viral_pneumonia")]
    )
    images = tmp_path / "raw"
    images.mkdir()
    for name in chosen["filename"]:
        shutil.copy(CHEST / "images" / name, images / name)
    shutil.copy(CHEST / "images" / table["filename"].iloc[-1], images / "unlisted.png")
    chosen.iloc[:1].assign(filename="missing.png").pipe(lambda extra: pd.concat([chosen, extra])).to_csv(
        images / "labels.csv", index=False
    )
    summary = ingest_dataset(
        "source",
        dataset_config(tmp_path, format="image_csv", labels=str(images / "labels.csv"),
                       classes=("normal", "covid19", "viral_pneumonia"), split_views=False),
        IngestConfig(workers=1), AnonymizeConfig(), (48, 48), SECRET,
    )  # fmt: skip
    manifest = read_manifest(tmp_path / "out/interim/manifest.csv")
    assert summary.images_written == 6 and set(manifest["view"]) == {"single"}
    assert sorted(manifest["label"]) == sorted(chosen["label"])
    assert manifest["patient_id"].nunique() == chosen["patient_id"].nunique()
    assert not manifest["patient_id"].isin(chosen["patient_id"]).any()  # hashed, not copied
    quarantine = pd.read_csv(tmp_path / "out/reports/quarantine.csv")
    assert quarantine.to_dict("records") == [{"file": "unlisted.png", "reason": "no label for this image"}]
    image = np.asarray(Image.open(manifest["path"].iloc[0]))
    assert image.shape == (48, 48) and image.max() > 60000


def test_image_folder_dataset_takes_labels_from_class_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    files = {
        "COVID/images/COVID-1.png": 1,
        "COVID/masks/COVID-1.png": 1,
        "Normal/person12_virus_3.png": 2,
        "Normal/person12_virus_4.png": 3,
        "Viral Pneumonia/Viral Pneumonia-7.jpg": 4,
        "Cats/cat.png": 5,
        "loose.png": 6,
        "README.md.txt": 0,
    }
    for rel, seed in files.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (raw / rel).write_text("readme")
        else:
            pixels = (np.random.default_rng(seed).random((40, 30)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(raw / rel)
    summary = ingest_dataset(
        "source",
        dataset_config(tmp_path, format="image_folder", labels=None,
                       classes=("normal", "covid19", "lung_opacity", "viral_pneumonia"), split_views=False),
        IngestConfig(workers=1), AnonymizeConfig(), (32, 32), SECRET,
    )  # fmt: skip
    manifest = read_manifest(tmp_path / "out/interim/manifest.csv")
    assert sorted(manifest["label"]) == ["covid19", "normal", "normal", "viral_pneumonia"]
    normal = manifest[manifest["label"] == "normal"]
    assert normal["patient_id"].nunique() == 1  # person12_* is one patient
    assert normal["study_id"].nunique() == 2
    quarantine = dict(pd.read_csv(tmp_path / "out/reports/quarantine.csv").values)
    assert quarantine == {
        "COVID/masks/COVID-1.png": "segmentation mask, not an image",
        "Cats/cat.png": "class folder 'Cats' matches none of ['normal', 'covid19', 'lung_opacity', 'viral_pneumonia']",
        "README.md.txt": "not an image file (.txt)",
        "loose.png": "not inside a class folder",
    }
    assert summary.files_seen == len(files)


def test_class_folder_names_match_configured_classes():
    classes = ("normal", "covid19", "lung_opacity", "viral_pneumonia")
    assert match_class("Viral Pneumonia", classes) == "viral_pneumonia"
    assert match_class("Lung_Opacity", classes) == "lung_opacity"
    assert match_class("COVID", classes) == "covid19"  # unique prefix
    assert match_class("pneumonia", classes) is None
    assert match_class("cov", ("covid19", "covid20")) is None  # ambiguous prefix


def test_patient_ids_are_parsed_from_known_file_name_schemes():
    assert parse_patient_id("person1009_virus_1694") == "person1009"
    assert parse_patient_id("IM-0001-0001") == "IM-0001"
    assert parse_patient_id("NORMAL2-IM-0995-0001-0001") == "NORMAL2-IM-0995"
    assert parse_patient_id("COVID-1") is None


def test_files_are_listed_lazily_in_sorted_order_without_skipped_ones(tmp_path):
    for rel in ("b/2.dcm", "b/1.dcm", "a/z.dcm", "labels.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    files = iter_files(tmp_path, skip=[tmp_path / "labels.csv"])
    assert not isinstance(files, list)
    assert list(files) == ["a/z.dcm", "b/1.dcm", "b/2.dcm"]


def test_quarantine_paths_are_masked_with_the_values_of_their_export_folder(tmp_path):
    from bonescan.ingest import FileResult, QuarantineWriter

    path = tmp_path / "quarantine.csv"
    with QuarantineWriter(path) as quarantine:
        quarantine.add(
            FileResult("SMITH_ANNA.dcm", code="x", reason="r1", identifying=frozenset({"SMITH", "ANNA"}))
        )
        quarantine.add(FileResult("DOE_JOHN/readme.txt", code="not_dicom", reason="r2"))
        quarantine.add(FileResult("DOE_JOHN/s1/a.dcm", identifying=frozenset({"DOE", "JOHN"})))
        quarantine.add(FileResult("ROE_JANE/x.txt", code="not_dicom", reason="r3"))
    rows = pd.read_csv(path).values.tolist()
    assert rows == [["***_***.dcm", "r1"], ["***_***/readme.txt", "r2"], ["ROE_JANE/x.txt", "r3"]]
    assert quarantine.rows == 3
