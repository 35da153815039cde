"""Specification of `bonescan predict`: new DICOM in, per-image and per-study probabilities out.

The same files go through the ingest stage and through predict with the same key: predict must give
the model exactly the images ingest wrote (so the probabilities are those of the model on the
ingested PNGs) and must name studies and images with the manifest's pseudonyms, while writing no raw
identifier anywhere and leaving its inputs untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from bonescan import classifier_file
from bonescan.classifier_file import ClassifierFile, predict_probabilities
from bonescan.cli import main
from bonescan.config import (
    AnonymizeConfig,
    DatasetConfig,
    IngestConfig,
    PhantomConfig,
    Preprocessing,
)
from bonescan.data.dataset import ManifestDataset
from bonescan.data.manifest import read_manifest
from bonescan.dicom.phantom import write_cohort
from bonescan.dicom.read import read_png16, write_png16
from bonescan.ingest import ingest_dataset
from bonescan.intake import as_training_input, iter_files
from bonescan.models import build
from bonescan.predict import predict, resolve_model
from tests.classifier_files import write_classifier

SECRET = b"predict-test-secret-0123456789abcdef"
SIZE = (64, 32)
CLASSES = ("healthy", "metastasis", "benign")
BAD_REASONS = {  # phantom bad-file kind -> start of its rejection reason
    "truncated": "truncated / unreadable",
    "not_dicom": "not a DICOM file",
    "no_pixel_data": "no pixel data",
    "unsupported_modality": "unsupported modality CT",
    "burned_in": "burned-in annotation",
}
TRAINED = Preprocessing(ingest=IngestConfig(workers=1), modalities=("NM",), split_views=True, image_size=SIZE)
RAW_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
                "SOPInstanceUID", "PatientBirthDate")  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def output_texts(out: Path) -> str:
    """Everything a reader of the outputs sees: file names and the text of every non-image file."""
    parts = []
    for path in sorted(out.rglob("*")):
        parts.append(path.relative_to(out).as_posix())
        if path.is_file() and path.suffix != ".png":
            parts.append(path.read_text())
    return "\n".join(parts)


def raw_identifiers(root: Path) -> set[str]:
    """Identifying header values of every readable DICOM file under `root` (names, ids, UIDs, dates)."""
    values: set[str] = set()
    for path in root.rglob("*.dcm"):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: no header values to leak
            continue
        for keyword in RAW_KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            values.update(part for part in (value, *value.split("^")) if len(part) >= 3)
    return values  # shorter values (a header cut inside one) match by chance


def save_classifier(path: Path, seed: int = 0, preprocessing: Preprocessing | None = TRAINED) -> Path:
    """A tiny untrained classifier in the checkpoint format of clf_finetune (None: as saved before v0.2)."""
    write_classifier(path, CLASSES, SIZE, seed=seed, preprocessing=preprocessing)
    return path


def run_predict(input_path: Path, model: str | Path, out: Path, secret: bytes | None = SECRET, **kwargs):
    return predict(input_path, str(model), out, anonymize=AnonymizeConfig(), secret=secret,
                   project_root=out.parent, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom cohort plus a stray text file and a corrupt DICOM, ingested and predicted with one key."""
    tmp = tmp_path_factory.mktemp("predict")
    cohort = write_cohort(PhantomConfig(patients=4, chest_patients=0, bone_size=(128, 32), seed=7), tmp / "raw")
    raw = tmp / "raw" / "bone"
    (raw / "README.txt").write_text("exported by the PACS\n")
    corrupt = raw / "corrupt" / "IMG00001.dcm"  # a transfer aborted inside the header
    corrupt.parent.mkdir()
    corrupt.write_bytes((raw / cohort.bone[0].files[0].split("/", 1)[1]).read_bytes()[:700])
    checkpoint = save_classifier(tmp / "models" / "model.pt")
    before = snapshot(raw)

    dataset = DatasetConfig(raw_dir=str(raw), labels=str(raw / "labels.csv"), classes=CLASSES,
                            interim_dir=str(tmp / "ingest/interim"), out_dir=str(tmp / "ingest/processed"),
                            reports_dir=str(tmp / "ingest/reports"), metrics_dir=str(tmp / "ingest/metrics"))  # fmt: skip
    cwd = os.getcwd()
    os.chdir(tmp)  # manifest paths are relative to the project root
    try:
        ingest_dataset("target", dataset, IngestConfig(workers=1), AnonymizeConfig(), SIZE, SECRET)
    finally:
        os.chdir(cwd)
    summary = run_predict(raw, checkpoint, tmp / "out", batch_size=5, gradcam=True)
    return {"tmp": tmp, "raw": raw, "cohort": cohort, "checkpoint": checkpoint, "before": before,
            "summary": summary, "out": tmp / "out"}  # fmt: skip


def test_every_study_gets_the_mean_of_its_anterior_and_posterior_probabilities(world):
    images = pd.read_csv(world["out"] / "predictions.csv")
    studies = pd.read_csv(world["out"] / "study_predictions.csv")
    prob = [f"p_{c}" for c in CLASSES]
    assert len(studies) == len(world["cohort"].bone) == world["summary"].studies
    assert set(studies["views"]) == {"anterior+posterior"} and set(studies["n_views"]) == {2}
    assert np.allclose(images[prob].sum(axis=1), 1.0, atol=1e-5)
    means = images.groupby("study_id")[prob].mean().loc[studies["study_id"]]
    assert np.allclose(means.to_numpy(), studies[prob].to_numpy(), atol=2e-6)
    assert list(studies["predicted"]) == [CLASSES[i] for i in studies[prob].to_numpy().argmax(axis=1)]


def test_probabilities_equal_the_model_on_the_images_ingest_wrote(world):
    """Same preprocessing as training: decoding, views, crop, mirror, scale, resize and 16-bit storage."""
    manifest = read_manifest(world["tmp"] / "ingest/interim/manifest.csv")
    model, _ = classifier_file.load(world["checkpoint"])
    expected = predict_probabilities(model, ManifestDataset(manifest, CLASSES, root=world["tmp"]))
    images = pd.read_csv(world["out"] / "predictions.csv").set_index("image_id")
    assert set(images.index) == set(manifest["image_id"])  # the manifest's pseudonymous image ids
    assert set(images["study_id"]) == set(manifest["study_id"])
    got = images.loc[manifest["image_id"], [f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.abs(got - expected).max() < 2e-6  # CSV keeps 6 decimals
    assert list(images.loc[manifest["image_id"], "view"]) == list(manifest["view"])


def test_a_model_saved_with_test_time_flips_predicts_the_mean_over_each_image_and_its_mirror(world, tmp_path):
    manifest = read_manifest(world["tmp"] / "ingest/interim/manifest.csv")
    _, record = classifier_file.load(world["checkpoint"])
    flipped = tmp_path / "flipped.pt"
    classifier_file.save(ClassifierFile(**{**record.__dict__, "test_time_flip": True}), flipped)
    summary = run_predict(world["raw"], flipped, tmp_path / "out")

    model = record.build()
    dataset = ManifestDataset(manifest, CLASSES, root=world["tmp"])
    expected = predict_probabilities(model, dataset, test_time_flip=True)
    images = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("image_id")
    got = images.loc[manifest["image_id"], [f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.abs(got - expected).max() < 2e-6
    assert np.abs(got - predict_probabilities(model, dataset)).max() > 5e-6  # flips applied: beyond CSV rounding
    assert summary.model["test_time_flip"] is True


def test_a_seed_ensemble_predicts_the_mean_of_its_members_and_draws_grad_cam(world, tmp_path):
    manifest = read_manifest(world["tmp"] / "ingest/interim/manifest.csv")
    _, record = classifier_file.load(world["checkpoint"])
    other = classifier_file.read(save_classifier(tmp_path / "other.pt", seed=9))
    classifier_file.save(record.with_members([other.state_dict]), tmp_path / "ensemble.pt")
    run_predict(world["raw"], tmp_path / "ensemble.pt", tmp_path / "out", gradcam=True)

    dataset = ManifestDataset(manifest, CLASSES, root=world["tmp"])
    expected = (predict_probabilities(record.build(), dataset) + predict_probabilities(other.build(), dataset)) / 2
    images = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("image_id")
    got = images.loc[manifest["image_id"], [f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.abs(got - expected).max() < 2e-6
    assert len(list((tmp_path / "out" / "gradcam").glob("*.png"))) == len(manifest) * len(record.build().gradcam_layers())


def test_training_input_quantization_equals_a_png_round_trip(tmp_path):
    image = np.random.default_rng(0).random((16, 8)).astype(np.float32)
    assert np.array_equal(as_training_input(image), read_png16(write_png16(image, tmp_path / "x.png")))


def listing(root: Path) -> list[str]:
    """The order predict numbers files in (file_index): each folder's files, then its sub-folders, sorted."""
    return list(iter_files(root))


def test_every_bad_file_is_rejected_with_its_reason_and_its_position_in_the_listing(world):
    rejected = pd.read_csv(world["out"] / "rejected.csv")
    files = listing(world["raw"])
    reasons = {files[i]: r for i, r in zip(rejected["file_index"], rejected["reason"], strict=True)}
    for bad in world["cohort"].bad_files:
        assert any(r.startswith(BAD_REASONS[bad.kind]) for r in reasons.values()), bad.kind
    assert reasons["README.txt"] == "not a DICOM file" and reasons["labels.csv"] == "not a DICOM file"
    assert reasons["corrupt/IMG00001.dcm"].startswith("truncated / unreadable")
    shown = dict(zip(rejected["file_index"], rejected["file"], strict=True))
    assert shown[files.index("corrupt/IMG00001.dcm")] == "***/***.dcm"  # nothing in its folder to check against
    assert len(rejected) == len(world["cohort"].bad_files) + 3 == world["summary"].rejected
    assert world["summary"].files_seen == world["summary"].rejected + sum(len(s.files) for s in world["cohort"].bone)


def test_inputs_are_byte_identical_after_the_run(world):
    assert snapshot(world["raw"]) == world["before"]


def test_a_lone_unreadable_file_in_a_folder_named_after_the_patient_leaves_no_trace_of_the_name(tmp_path, world):
    inputs = tmp_path / "in" / "DOE_JANE_MRN4471" / "20160420_ACC99120"
    inputs.mkdir(parents=True)
    (inputs / "IMG00001.dcm").write_bytes(b"not a dicom file")
    run_predict(tmp_path / "in", world["checkpoint"], tmp_path / "out")
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert list(rejected["file"]) == ["***/***/***.dcm"] and list(rejected["file_index"]) == [0]
    assert not any(v in output_texts(tmp_path / "out") for v in ("DOE", "JANE", "MRN4471", "ACC99120"))


def test_no_raw_identifier_reaches_any_output(world):
    text = output_texts(world["out"])
    leaked = sorted(v for v in raw_identifiers(world["raw"]) if v in text)
    assert leaked == []
    accessions = [s.accession for s in world["cohort"].bone]
    assert not any(a in text for a in accessions)


def test_gradcam_overlays_are_written_for_every_image(world):
    images = pd.read_csv(world["out"] / "predictions.csv")
    overlays = sorted((world["out"] / "gradcam").glob("*.png"))
    layers = len(build("soft_threshold_net", 3).gradcam_layers())
    assert len(overlays) == len(images) * layers == world["summary"].gradcam_overlays
    assert {p.name.split("_")[0] for p in overlays} == set(images["image_id"])


def test_summary_records_the_model_and_the_counts(world):
    summary = json.loads((world["out"] / "summary.json").read_text())
    assert summary["model"]["uri"] == str(world["checkpoint"]) and summary["model"]["sha"]
    assert summary["ids"] == "keyed" and summary["classes"] == list(CLASSES)
    assert summary["images"] == 2 * summary["studies"]
    assert sum(summary["study_predictions"].values()) == summary["studies"]
    assert summary["preprocessing"]["image_size"] == list(SIZE)
    assert summary["preprocessing"]["from"] == "checkpoint"
    assert summary["preprocessing"]["ingest"]["crop_margin"] == TRAINED.ingest.crop_margin


def probabilities(out: Path) -> np.ndarray:
    frame = pd.read_csv(out / "predictions.csv").sort_values(["file_index", "view"])
    return frame[[f"p_{c}" for c in CLASSES]].to_numpy()


def test_the_models_own_preprocessing_wins_over_changed_params(world, tmp_path, caplog):
    """A registered model keeps seeing what it was trained on after params.yaml moves on."""
    changed = TRAINED.model_copy(update={"ingest": IngestConfig(workers=1, crop_margin=0.3, intensity_percentile=90)})
    with caplog.at_level("WARNING", logger="bonescan.predict"):
        summary = run_predict(world["raw"], world["checkpoint"], tmp_path / "out", preprocessing=changed)
    assert summary.preprocessing["from"] == "checkpoint"
    assert np.abs(probabilities(tmp_path / "out") - probabilities(world["out"])).max() < 2e-6
    warned = caplog.text
    assert "ingest.crop_margin: 0.02 vs 0.3" in warned and "ingest.intensity_percentile" in warned


def test_a_checkpoint_without_a_record_falls_back_to_the_params_preprocessing(world, tmp_path):
    old = save_classifier(tmp_path / "old" / "model.pt", preprocessing=None)  # same weights as world's
    same = run_predict(world["raw"], old, tmp_path / "same", preprocessing=TRAINED)
    assert same.preprocessing["from"] == "params"
    assert np.abs(probabilities(tmp_path / "same") - probabilities(world["out"])).max() < 2e-6
    changed = TRAINED.model_copy(update={"ingest": IngestConfig(workers=1, crop_margin=0.3)})
    run_predict(world["raw"], old, tmp_path / "changed", preprocessing=changed)
    assert np.abs(probabilities(tmp_path / "changed") - probabilities(world["out"])).max() > 2e-5  # CSV rounding: 1e-6
    with pytest.raises(ValueError, match="records no preprocessing"):
        run_predict(world["raw"], old, tmp_path / "none")


def test_without_the_key_ids_are_indices_of_the_run_and_probabilities_do_not_change(world, tmp_path):
    summary = run_predict(world["raw"], world["checkpoint"], tmp_path / "out", secret=None)
    keyed = pd.read_csv(world["out"] / "predictions.csv").set_index(["file_index", "view"]).sort_index()
    unkeyed = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index(["file_index", "view"]).sort_index()
    assert summary.ids == "per-run"
    assert unkeyed["study_id"].str.fullmatch(r"study-\d{4}").all()
    assert unkeyed["image_id"].str.fullmatch(r"image-\d{5}").all()
    assert not set(unkeyed["study_id"]) & set(keyed["study_id"])
    prob = [f"p_{c}" for c in CLASSES]
    assert np.allclose(unkeyed[prob].to_numpy(), keyed[prob].to_numpy(), atol=1e-6)


def test_every_row_carries_the_digest_of_its_input_file_to_join_on(world):
    images = pd.read_csv(world["out"] / "predictions.csv")
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in world["raw"].rglob("*") if p.is_file()}
    assert set(images["file_sha256"]) <= digests
    per_file = images.groupby("file_index")["file_sha256"].nunique()
    assert (per_file == 1).all() and images["file_sha256"].nunique() == len(per_file)  # one key per file
    assert "path" not in images.columns  # raw paths may name the patient: only on request


def test_paths_relative_to_the_input_are_written_only_when_asked(world, tmp_path):
    run_predict(world["raw"], world["checkpoint"], tmp_path / "out", include_paths=True)
    images = pd.read_csv(tmp_path / "out" / "predictions.csv")
    for path, digest in zip(images["path"], images["file_sha256"], strict=True):
        assert hashlib.sha256((world["raw"] / path).read_bytes()).hexdigest() == digest


def test_real_bone_scan_is_classified_and_an_undecodable_one_is_rejected(tmp_path, world):
    """pydicom's NM whole-body scan in JPEG 2000; JPEG-lossy.dcm holds a stream no plugin decodes."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("JPEG2000.dcm", "JPEG-lossy.dcm"):
        shutil.copy(get_testdata_file(name), inputs / name)
    summary = run_predict(inputs, world["checkpoint"], tmp_path / "out")
    images = pd.read_csv(tmp_path / "out" / "predictions.csv")
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert summary.images == 1 and summary.studies == 1 and list(images["view"]) == ["anterior"]
    assert len(rejected) == 1 and rejected["reason"][0].startswith("cannot decode JPEG Extended")
    text = output_texts(tmp_path / "out")
    assert not [v for v in raw_identifiers(inputs) if v in text]


def test_a_single_file_is_a_valid_input(tmp_path, world):
    summary = run_predict(Path(get_testdata_file("JPEG2000.dcm")), world["checkpoint"], tmp_path / "out")
    assert summary.files_seen == 1 and summary.images == 1 and summary.rejected == 0


def test_output_folder_inside_the_input_is_refused(world):
    with pytest.raises(ValueError, match="inside the input"):
        run_predict(world["raw"], world["checkpoint"], world["raw"] / "predictions")


def test_a_missing_model_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/model.pt"):
        resolve_model("nowhere/model.pt", tmp_path)


@pytest.mark.slow
def test_mlflow_models_uri_loads_the_registered_checkpoint(world, tmp_path, monkeypatch):
    """The registry layout: the MLflow model directory holds the checkpoint at artifacts/model.pt."""
    import mlflow.pyfunc

    from bonescan.tracking import REGISTERED_MODEL, client

    class Passthrough(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(path=str(local), python_model=Passthrough(),
                             artifacts={"checkpoint": str(world["checkpoint"])}, pip_requirements=["torch"])  # fmt: skip
    assert (local / "artifacts" / "model.pt").is_file()
    registry = client(tmp_path)
    experiment = registry.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run = registry.create_run(experiment)
    registry.log_artifacts(run.info.run_id, str(local), "classifier")
    registry.set_terminated(run.info.run_id)
    registry.create_registered_model(REGISTERED_MODEL)
    version = registry.create_model_version(REGISTERED_MODEL, f"{run.info.artifact_uri}/classifier", run.info.run_id)
    registry.set_registered_model_alias(REGISTERED_MODEL, "champion", version.version)

    scan = Path(get_testdata_file("JPEG2000.dcm"))
    local_run = run_predict(scan, world["checkpoint"], tmp_path / "local")
    uris = (f"models:/{REGISTERED_MODEL}@champion", f"models:/{REGISTERED_MODEL}/latest",
            f"runs:/{run.info.run_id}/classifier")  # fmt: skip
    for n, uri in enumerate(uris):
        out = tmp_path / f"out{n}"
        summary = predict(scan, uri, out, anonymize=AnonymizeConfig(), secret=SECRET, project_root=tmp_path)
        assert summary.model["uri"] == uri and summary.model["run_id"] == run.info.run_id
        assert summary.model["sha"] == local_run.model["sha"]
        got = pd.read_csv(out / "predictions.csv")
        assert got.equals(pd.read_csv(tmp_path / "local" / "predictions.csv"))
    assert json.loads((tmp_path / "out0" / "summary.json").read_text())["model"]["version"] == "1"
    with pytest.raises(FileNotFoundError, match="models:/bonescan-classifier@nobody"):
        resolve_model(f"models:/{REGISTERED_MODEL}@nobody", tmp_path / "dl", tmp_path)
    with pytest.raises(FileNotFoundError, match=f"runs:/{run.info.run_id}"):
        resolve_model(f"runs:/{run.info.run_id}/classifier/MLmodel", tmp_path / "dl", tmp_path)


def test_cli_predict_writes_outputs_and_prints_a_summary(tmp_path, world, monkeypatch, capsys):
    monkeypatch.setenv("BONESCAN_SECRET", SECRET.decode())
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    out = tmp_path / "out"
    code = main(["predict", get_testdata_file("JPEG2000.dcm"), "--model", str(world["checkpoint"]),
                 "--out", str(out), "--params", str(params), "--batch-size", "2", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert {"predictions.csv", "study_predictions.csv", "rejected.csv", "summary.json"} <= {
        p.name for p in out.iterdir()
    }
    assert "healthy" in capsys.readouterr().out


# --------------------------------------------------------------------------- image files


def test_a_model_trained_on_images_predicts_image_files_as_ingest_prepared_them(tmp_path, monkeypatch):
    """predict takes what training took: an image_csv set's files, through the same intake."""
    from tests.chest_sets import CHEST_CLASSES as chest
    from tests.chest_sets import copy_chest_set

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    table = copy_chest_set(raw)
    dataset = DatasetConfig(format="image_csv", raw_dir=str(raw), labels=str(raw / "labels.csv"), classes=chest,
                            split_views=False, interim_dir="interim", out_dir="processed", reports_dir="reports",
                            metrics_dir="metrics")  # fmt: skip
    ingest_dataset("source", dataset, IngestConfig(workers=1), AnonymizeConfig(), (48, 40), SECRET)
    pre = Preprocessing(ingest=IngestConfig(workers=1), modalities=("CR",), split_views=False, image_size=(48, 40),
                        input_format="image_csv")  # fmt: skip
    write_classifier(tmp_path / "model.pt", chest, (48, 40), preprocessing=pre)

    summary = run_predict(raw, tmp_path / "model.pt", tmp_path / "out")
    manifest = read_manifest(tmp_path / "interim/manifest.csv")
    model, _ = classifier_file.load(tmp_path / "model.pt")
    expected = predict_probabilities(model, ManifestDataset(manifest, chest, root=tmp_path))
    images = pd.read_csv(tmp_path / "out/predictions.csv").set_index("image_id")
    got = images.loc[manifest["image_id"], [f"p_{c}" for c in chest]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # ingest's ids, the training input's scores
    assert set(images["study_id"]) == set(manifest["study_id"])
    rejected = pd.read_csv(tmp_path / "out/rejected.csv")
    assert summary.images == len(table) and list(rejected["reason"]) == [
        "not an image file (.png, .jpg, .jpeg): the model was trained on images"
    ]  # labels.csv


def test_a_model_trained_on_dicom_rejects_image_files_and_one_trained_on_images_rejects_dicom(world, tmp_path):
    from tests.chest_sets import CHEST

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    png = sorted((CHEST / "images").glob("*.png"))[0]
    (mixed / "chest.png").write_bytes(png.read_bytes())
    dicom = world["raw"] / world["cohort"].bone[0].files[0].split("/", 1)[1]  # an accepted whole-body scan
    (mixed / "scan.dcm").write_bytes(dicom.read_bytes())
    on_dicom = save_classifier(tmp_path / "dicom.pt", preprocessing=TRAINED.model_copy(update={"input_format": "dicom"}))
    run_predict(mixed, on_dicom, tmp_path / "out_dicom")
    reasons = pd.read_csv(tmp_path / "out_dicom/rejected.csv")["reason"].tolist()
    assert reasons == ["an image file, but the model was trained on DICOM studies"]
    on_images = save_classifier(tmp_path / "images.pt", preprocessing=TRAINED.model_copy(update={"input_format": "image_folder"}))
    run_predict(mixed, on_images, tmp_path / "out_images")
    assert pd.read_csv(tmp_path / "out_images/rejected.csv")["reason"].str.contains("trained on images").tolist() == [True]


@pytest.mark.parametrize("bomb", ["rle", "deflate"])
def test_decompression_bombs_are_rejected_with_the_limit_named_and_nothing_decoded(tmp_path, bomb):
    from bonescan.dicom.anonymize import Anonymizer
    from bonescan.dicom.bombs import write_deflate_bomb, write_rle_bomb
    from bonescan.predict import prepare_file

    path = tmp_path / "bomb.dcm"
    if bomb == "rle":
        write_rle_bomb(path)  # ~1 kB declaring 60000 x 60000 x 16 bits
    else:
        write_deflate_bomb(path, 400 * 2**20)  # ~400 kB inflating to 400 MiB, over 128 MiB + 16 MiB
    record, prepared = prepare_file(path, "bomb.dcm", Anonymizer(SECRET, AnonymizeConfig()), TRAINED)
    assert prepared is None
    assert record.code == "too_large" and "ingest.max_pixel_bytes" in record.reason
