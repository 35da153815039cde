"""Specification of the file intake shared by ingest and predict: one path from a raw file to model input,
so what predict gives a model is exactly what ingest gave it in training; hostile file-system entries
(FIFOs, link loops, links out of the tree) are rejected with a reason, never followed, never hung on."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from bonescan.config import AnonymizeConfig, IngestConfig, Preprocessing
from bonescan.data.manifest import read_manifest
from bonescan.dicom.anonymize import Anonymizer
from bonescan.dicom.read import read_png16
from bonescan.ingest import ingest_dataset
from bonescan.intake import (
    FileRejected,
    as_training_input,
    check_regular_file,
    image_pseudonym,
    iter_files,
    open_dicom,
    prepare_dicom,
    prepare_image,
    pseudonym,
    rejection,
)
from bonescan.predict import prepare_file
from tests.chest_sets import CHEST_CLASSES, copy_chest_set
from tests.test_ingest import SECRET, SIZE, build_raw, dataset_config


def _pre(dataset, size) -> Preprocessing:
    return Preprocessing(ingest=IngestConfig(workers=1), modalities=dataset.modalities,
                         split_views=dataset.split_views, image_size=size)  # fmt: skip


def test_predict_gives_a_model_exactly_what_ingest_gave_it_for_dicom_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_raw(tmp_path / "raw")
    dataset = dataset_config(tmp_path)
    ingest_dataset("target", dataset, IngestConfig(workers=1), AnonymizeConfig(), SIZE, SECRET)
    manifest = read_manifest(tmp_path / "out/interim/manifest.csv").set_index("image_id")
    anonymizer = Anonymizer(SECRET, AnonymizeConfig())

    compared = 0
    for relpath in iter_files(tmp_path / "raw"):
        result, prepared = prepare_file(tmp_path / "raw" / relpath, relpath, anonymizer, _pre(dataset, SIZE))
        if prepared is None:
            continue
        for index, (view, image) in enumerate(prepared.views):
            image_id = image_pseudonym(prepared.sop_uid, view, index)
            if image_id not in manifest.index:  # a file without a label: ingest needs one, predict does not
                continue
            np.testing.assert_array_equal(image, read_png16(manifest.loc[image_id, "path"]))
            compared += 1
    assert compared == len(manifest) >= 7  # every ingested view, pixel for pixel


def test_predict_gives_a_model_exactly_what_ingest_gave_it_for_image_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    table = copy_chest_set(raw)
    dataset = dataset_config(tmp_path, format="image_csv", labels=str(raw / "labels.csv"), classes=CHEST_CLASSES,
                             split_views=False)  # fmt: skip
    ingest_dataset("source", dataset, IngestConfig(workers=1), AnonymizeConfig(), (48, 40), SECRET)
    manifest = read_manifest(tmp_path / "out/interim/manifest.csv").set_index("image_id")

    for name in table["filename"]:
        ((view, image),) = prepare_image(raw / name, _pre(dataset, (48, 40)))
        image_id = image_pseudonym(pseudonym(name, SECRET), view, 0)
        np.testing.assert_array_equal(as_training_input(image), read_png16(manifest.loc[image_id, "path"]))
    assert len(manifest) == len(table)


@pytest.fixture
def hostile_tree(tmp_path):
    """A labelled cohort plus a FIFO, a link loop, a dangling link, links out of the tree and to a folder."""
    raw = tmp_path / "raw"
    build_raw(raw)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(raw / "NM1" / "scan.dcm", outside / "other_patient.dcm")
    hostile = raw / "DOE_JOHN_4711" / "links"
    hostile.mkdir()
    os.mkfifo(hostile / "pipe.dcm")
    os.symlink("loop_b.dcm", hostile / "loop_a.dcm")
    os.symlink("loop_a.dcm", hostile / "loop_b.dcm")
    os.symlink("nowhere.dcm", hostile / "dangling.dcm")
    os.symlink(outside / "other_patient.dcm", hostile / "outside.dcm")
    os.symlink(outside, hostile / "outside_folder")
    os.symlink(raw / "NM1" / "scan.dcm", hostile / "inside.dcm")  # a link within the tree is read
    return raw


HOSTILE_REASONS = {
    "pipe.dcm": "not a regular file",
    "loop_a.dcm": "broken or looping symbolic link",
    "loop_b.dcm": "broken or looping symbolic link",
    "dangling.dcm": "broken or looping symbolic link",
    "outside.dcm": "symbolic link out of the input folder",
    "outside_folder": "symbolic link out of the input folder",
}


def test_non_regular_files_and_bad_links_are_rejected_before_they_are_opened(hostile_tree):
    links = hostile_tree / "DOE_JOHN_4711" / "links"
    for name, reason in HOSTILE_REASONS.items():
        with pytest.raises(FileRejected, match=reason):
            check_regular_file(links / name, hostile_tree)
    check_regular_file(links / "inside.dcm", hostile_tree)  # no error


def test_ingest_quarantines_hostile_entries_with_reasons_and_finishes(hostile_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = ingest_dataset("target", dataset_config(tmp_path), IngestConfig(workers=1, max_quarantined_fraction=1),
                             AnonymizeConfig(),
                             SIZE, SECRET)  # fmt: skip
    quarantine = pd.read_csv(tmp_path / "out/reports/quarantine.csv")
    reasons = dict(zip(quarantine["file"].map(lambda f: f.rsplit("/", 1)[-1]), quarantine["reason"], strict=True))
    for name, reason in HOSTILE_REASONS.items():
        assert reasons[name].startswith(reason)
    assert not any("DOE" in f or "4711" in f for f in quarantine["file"])  # the export folder stays masked
    assert summary.images_written > 0


def test_dates_of_any_format_are_masked_in_every_listed_path(tmp_path):
    from bonescan.intake import FileResult, QuarantineWriter

    path = tmp_path / "rejected.csv"
    with QuarantineWriter(path, strict=True, index=True) as rejected:
        rejected.add(FileResult("DOE_JOHN/a.dcm", identifying=frozenset({"DOE", "JOHN"})))
        for name in ("20230114_CT/x.dcm", "2023-01-14/y.dcm", "14.01.2023/z.dcm", "01_14_2023/w.dcm"):
            rejected.add(FileResult(f"DOE_JOHN/{name}", code="unreadable", reason="r"))
    listed = pd.read_csv(path)["file"].tolist()
    assert listed == ["***_***/***_CT/x.dcm", "***_***/***/y.dcm", "***_***/***/z.dcm", "***_***/***/w.dcm"]


def test_a_folder_without_readable_dicom_keeps_only_known_safe_path_parts(tmp_path):
    """Nothing says which values identify: names, MRNs and accessions in folder names are masked."""
    from bonescan.intake import FileResult, QuarantineWriter

    path = tmp_path / "quarantine.csv"
    with QuarantineWriter(path, mask_unknown=True) as quarantine:
        quarantine.add(FileResult("SMITH_ANNA_0012345/ACC778899/DICOM/IMG0001.dcm", code="unreadable", reason="r"))
        quarantine.add(FileResult("SMITH_ANNA_0012345/report_anna_smith.pdf", code="not_dicom", reason="r"))
    assert pd.read_csv(path)["file"].tolist() == ["***/***/DICOM/IMG0001.dcm", "***/***.pdf"]


def test_anonymize_lists_hostile_entries_as_quarantined_and_finishes(hostile_tree, tmp_path):
    from bonescan.dicom.anonymize import anonymize_tree

    report = anonymize_tree(hostile_tree, tmp_path / "anon", AnonymizeConfig(), SECRET)
    reasons = [q["reason"] for q in report.quarantined]
    for reason in set(HOSTILE_REASONS.values()):
        assert any(r.startswith(reason) for r in reasons), reason
    assert report.anonymized > 0


@pytest.mark.slow
def test_every_file_of_pydicoms_test_corpus_gets_a_specific_reason_never_an_unexpected_error():
    """153 odd real-world files (RT objects, SR, waveforms, broken JPEG 2000, truncated, big-endian)."""
    from pathlib import Path

    from pydicom.data import get_testdata_files

    preprocessing = Preprocessing(ingest=IngestConfig(), modalities=("NM", "CT", "MR", "CR", "DX", "PT", "OT"),
                                  split_views=True, image_size=(64, 32))  # fmt: skip
    anonymizer = Anonymizer(b"k" * 32, AnonymizeConfig())
    outcomes: dict[str, str] = {}
    for name in sorted(set(get_testdata_files("*"))):
        path = Path(name)
        try:
            ds, _ = open_dicom(path, preprocessing.ingest.max_pixel_bytes)
            prepare_dicom(ds, anonymizer, preprocessing)
            outcomes[path.name] = "accepted"
        except Exception as exc:  # noqa: BLE001 - what quarantine would record for it
            outcomes[path.name] = rejection(path.name, exc).code
    assert len(outcomes) > 100
    assert [f for f, code in outcomes.items() if code == "unexpected"] == []
    assert "accepted" in outcomes.values() and "decode_error" in outcomes.values()


def _nm_study(path, frames: int, side: int = 16):
    """A whole-body NM phantom of `frames` coded anterior/posterior frames of side x side counts."""
    from bonescan.dicom.phantom import make_nm_dataset, sample_patient_identity, sample_study_identity

    counts = np.random.default_rng(0).poisson(50, (frames, side, side)).astype(np.uint16)
    views = ["anterior", "posterior"] * (frames // 2)
    patient, study = sample_patient_identity(0, "bone", 0), sample_study_identity(0, "bone", 0, 0, 0)
    make_nm_dataset(counts, views, patient, study).save_as(path, enforce_file_format=True)
    return path


def test_a_file_cannot_expand_into_more_model_input_than_the_pixel_ceiling(tmp_path):
    """64 coded frames of 16 x 16 declare 32 KiB of pixels, but would resize to 64 views x 8 KiB of model input."""
    ceiling = 64 * 2**10
    pre = Preprocessing(ingest=IngestConfig(workers=1, max_pixel_bytes=ceiling), modalities=("NM",),
                        split_views=True, image_size=(64, 32))  # fmt: skip
    anonymizer = Anonymizer(SECRET, AnonymizeConfig())
    result, prepared = prepare_file(_nm_study(tmp_path / "IMG0001.dcm", 64), "IMG0001.dcm", anonymizer, pre)
    assert prepared is None and result.code == "too_large"
    assert result.reason.startswith("64 views make 0.5 MiB of model input, more than the limit ingest.max_pixel_bytes")
    _, two_views = prepare_file(_nm_study(tmp_path / "IMG0002.dcm", 2), "IMG0002.dcm", anonymizer, pre)
    assert two_views is not None and len(two_views.views) == 2  # a study's two views are well within it


def test_a_file_larger_than_the_pixel_ceiling_allows_is_refused_unread(tmp_path):
    """A valid header with a PixelData element of gigabytes would be read whole by pydicom."""
    ceiling = 2**10  # a file may hold this plus 16 MiB for everything but pixels
    pre = Preprocessing(ingest=IngestConfig(workers=1, max_pixel_bytes=ceiling), modalities=("NM",),
                        split_views=True, image_size=(64, 32))  # fmt: skip
    path = _nm_study(tmp_path / "IMG0001.dcm", 2)
    with path.open("r+b") as f:
        f.truncate(64 * 2**20)  # sparse: no disk is used
    result, prepared = prepare_file(path, "IMG0001.dcm", Anonymizer(SECRET, AnonymizeConfig()), pre)
    assert prepared is None and result.code == "too_large" and "(not read)" in result.reason


def test_a_named_path_is_judged_by_where_it_leads_and_a_refusal_reveals_nothing_outside(tmp_path):
    """What a served request may name: `..`, an absolute path elsewhere, a path through a linked folder."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "exists.dcm").write_bytes(b"x")
    (root / "sub" / "inside.dcm").write_bytes(b"x")
    os.symlink(outside, root / "linked_folder")
    refused = {
        root / ".." / "outside" / "exists.dcm": "outside the input folder",
        root / ".." / "outside" / "missing.dcm": "outside the input folder",
        outside / "exists.dcm": "outside the input folder",
        root / "linked_folder" / "exists.dcm": "symbolic link out of the input folder",
        root / "linked_folder" / "missing.dcm": "symbolic link out of the input folder",
        root / "sub" / ".." / "linked_folder" / "exists.dcm": "symbolic link out of the input folder",
    }
    for path, reason in refused.items():
        with pytest.raises(FileRejected, match=reason):
            check_regular_file(path, root)
    check_regular_file(root / "sub" / ".." / "sub" / "inside.dcm", root)  # `..` that stays inside is fine
