"""Specification of the MLflow pyfunc: preprocessed images, or whole files (a path or their bytes) taken
through the intake exactly as `bonescan predict` takes them; an input it cannot take is a row with a reason."""

from __future__ import annotations

import io
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bonescan.config import AnonymizeConfig, IngestConfig
from bonescan.model_registry import ClassifierPyfunc, example_input, save_pyfunc
from bonescan.model_registry.pyfunc import CHECKPOINT_KEY, PATH_ROOT_ENV, PATH_ROOT_KEY, path_root
from bonescan.predict import predict
from tests.classifier_files import write_classifier
from tests.model_registry.conftest import CLASSES, SIZE, TRAINED_ON_DICOM

PROBS = list(CLASSES)


@pytest.fixture(scope="module")
def served(dicom_pyfunc, phantom_study):
    """The model as a notebook loads it, allowed to read the phantom study's folder."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(dicom_pyfunc), model_config={PATH_ROOT_KEY: str(phantom_study.parent)})


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((example_input(1, SIZE)[0, 0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_study_file_gets_the_probabilities_bonescan_predict_gives_its_study(
    served, phantom_study, dicom_classifier, tmp_path
):
    got = served.predict(pd.DataFrame({"path": [str(phantom_study)]}))
    predict(phantom_study, str(dicom_classifier), tmp_path / "out", anonymize=AnonymizeConfig(), secret=None,
            project_root=tmp_path)  # fmt: skip
    (study,) = pd.read_csv(tmp_path / "out" / "study_predictions.csv").to_dict("records")
    np.testing.assert_allclose(got[PROBS].to_numpy()[0], [study[f"p_{c}"] for c in CLASSES], atol=1e-6)
    assert (
        got.loc[0, "prediction"] == study["predicted"] and got.loc[0, "n_views"] == 2
    )  # anterior + posterior
    assert got.loc[0, "reason"] == ""


def test_the_files_bytes_give_the_same_answer_as_its_path(served, phantom_study):
    by_path = served.predict(pd.DataFrame({"path": [str(phantom_study)]}))
    by_bytes = served.predict(pd.DataFrame({"content": [phantom_study.read_bytes()]}))
    pd.testing.assert_frame_equal(by_path, by_bytes)


def test_preprocessed_images_and_files_mix_in_one_request(served, phantom_study):
    rows = pd.DataFrame({"image": [example_input(1, SIZE)[0], None], "path": [None, str(phantom_study)]})
    got = served.predict(rows)
    assert list(got["n_views"]) == [1, 2] and list(got["reason"]) == ["", ""]
    np.testing.assert_allclose(got[PROBS].sum(axis=1), 1.0, rtol=1e-6)


def test_an_input_the_model_cannot_take_is_a_row_with_its_reason_not_an_error(served, phantom_study):
    rows = pd.DataFrame({
        "image": [None, None, None, np.zeros((1, 8, 8)), None],
        "path": [None, None, str(phantom_study.parent / "missing.dcm"), None, None],
        "content": [png_bytes(), b"not a scan", None, None, None],
    })  # fmt: skip
    got = served.predict(rows)
    reasons = list(got["reason"])
    assert reasons[0].startswith("wrong_format: an image file, but the model was trained on DICOM")
    assert reasons[1].startswith("not_dicom")
    assert reasons[2].startswith("unreadable")
    assert reasons[3].startswith("shape: an image must be (1 or 1, 64, 32)")
    assert reasons[4].startswith("no_input: give exactly one of image, path, content")
    assert (
        got[PROBS].isna().all().all()
        and list(got["prediction"]) == [""] * 5
        and list(got["n_views"]) == [0] * 5
    )


def test_a_model_recording_no_preprocessing_takes_images_but_refuses_files(tmp_path, phantom_study):
    import mlflow.pyfunc

    write_classifier(tmp_path / "model.pt", CLASSES, SIZE, preprocessing=None)  # e.g. a source-domain model
    model = mlflow.pyfunc.load_model(str(save_pyfunc(tmp_path / "model.pt", tmp_path / "pyfunc")))
    got = model.predict(
        pd.DataFrame({"image": [example_input(1, SIZE)[0], None], "path": [None, str(phantom_study)]})
    )
    assert got.loc[0, "reason"] == "" and got.loc[1, "reason"].startswith("no_preprocessing")


def test_a_model_saved_with_test_time_flips_serves_the_probabilities_predict_gives(tmp_path, phantom_study):
    import mlflow.pyfunc

    from bonescan import classifier_file
    from bonescan.classifier_file import ClassifierFile

    record = write_classifier(tmp_path / "plain.pt", CLASSES, SIZE, seed=3, preprocessing=TRAINED_ON_DICOM)
    classifier_file.save(ClassifierFile(**{**record.__dict__, "test_time_flip": True}), tmp_path / "model.pt")
    served = mlflow.pyfunc.load_model(str(save_pyfunc(tmp_path / "model.pt", tmp_path / "pyfunc")),
                                      model_config={PATH_ROOT_KEY: str(phantom_study.parent)})  # fmt: skip
    got = served.predict(pd.DataFrame({"path": [str(phantom_study)]}))[PROBS].to_numpy()[0]
    for name in ("model.pt", "plain.pt"):
        predict(phantom_study, str(tmp_path / name), tmp_path / f"out_{name}", anonymize=AnonymizeConfig(),
                secret=None, project_root=tmp_path)  # fmt: skip
    flipped, plain = (pd.read_csv(tmp_path / f"out_{name}" / "study_predictions.csv")[[f"p_{c}" for c in CLASSES]]
                      .to_numpy()[0] for name in ("model.pt", "plain.pt"))  # fmt: skip
    np.testing.assert_allclose(got, flipped, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-6


def test_the_model_directory_pins_its_requirements_and_holds_an_identity_free_example(dicom_pyfunc):
    from mlflow.models import Model

    requirements = (dicom_pyfunc / "requirements.txt").read_text().split()
    assert requirements and all("==" in line for line in requirements)  # nothing left to resolve online
    assert any(line.startswith("pydicom==") for line in requirements)  # the intake runs in the server
    example = (dicom_pyfunc / "input_example.json").read_text()
    assert '"image"' in example and '"path"' not in example and '"content"' not in example
    assert Model.load(dicom_pyfunc).flavors["python_function"]["config"] == {PATH_ROOT_KEY: ""}  # reads no file


# --------------------------------------------------------------------------- a hostile client


def loaded(checkpoint, **model_config) -> ClassifierPyfunc:
    """The pyfunc as MLflow loads it (load_context on its checkpoint artifact), without a model directory."""
    from mlflow.pyfunc import PythonModelContext

    model = ClassifierPyfunc()
    model.load_context(PythonModelContext(artifacts={CHECKPOINT_KEY: str(checkpoint)}, model_config=model_config))
    return model


def reasons(model: ClassifierPyfunc, column: str, values: list) -> list[str]:
    got = model.predict(None, pd.DataFrame({column: values}))
    assert (got.loc[got["reason"] != "", "prediction"] == "").all()  # a refused row is never classified
    return list(got["reason"])


@pytest.fixture
def host(tmp_path, phantom_study):
    """A serving host: a root of studies (one in a folder named after its patient), and hostile entries."""
    root, outside = tmp_path / "studies", tmp_path / "elsewhere"
    (root / "DOE_JOHN_19420314").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(phantom_study, root / "IMG0001.dcm")
    shutil.copy(phantom_study, root / "DOE_JOHN_19420314" / "IMG0002.dcm")
    (root / "DOE_JOHN_19420314" / "notes.txt").write_text("DOE^JOHN referral")
    shutil.copy(phantom_study, outside / "IMG0003.dcm")  # another site's study, readable by the server
    os.mkfifo(root / "pipe.dcm")
    os.symlink("/dev/zero", root / "zero.dcm")
    os.symlink(outside / "IMG0003.dcm", root / "linked_file.dcm")
    os.symlink(outside, root / "linked_folder")
    return root, outside


def test_a_model_loaded_without_a_root_opens_no_file_a_request_names(dicom_classifier, phantom_study, monkeypatch):
    monkeypatch.delenv(PATH_ROOT_ENV, raising=False)
    model = loaded(dicom_classifier)
    got = reasons(model, "path", [str(phantom_study), "/etc/passwd", "/dev/zero", str(phantom_study) + ".missing"])
    assert len(set(got)) == 1 and got[0].startswith("path_refused: this model reads no files from its host")
    assert reasons(model, "content", [phantom_study.read_bytes()]) == [""]  # a file's bytes are still classified


def test_a_path_is_read_only_when_it_leads_to_a_regular_file_inside_the_root(host, dicom_classifier):
    root, outside = host
    model = loaded(dicom_classifier, **{PATH_ROOT_KEY: str(root)})
    expected = {
        "IMG0001.dcm": "",  # relative to the root
        str(root / "DOE_JOHN_19420314" / "IMG0002.dcm"): "",  # absolute, inside it
        "DOE_JOHN_19420314/notes.txt": "not_dicom: not a DICOM file",
        "DOE_JOHN_19420314/../IMG0001.dcm": "",
        "../elsewhere/IMG0003.dcm": "outside_root: outside the input folder (not opened)",
        str(outside / "IMG0003.dcm"): "outside_root: outside the input folder (not opened)",
        str(outside / "missing.dcm"): "outside_root: outside the input folder (not opened)",  # no probing
        "/etc/passwd": "outside_root: outside the input folder (not opened)",
        "/dev/zero": "outside_root: outside the input folder (not opened)",
        "linked_file.dcm": "link: symbolic link out of the input folder (not followed)",
        "linked_folder/IMG0003.dcm": "link: symbolic link out of the input folder (not followed)",
        "linked_folder/missing.dcm": "link: symbolic link out of the input folder (not followed)",
        "zero.dcm": "link: symbolic link out of the input folder (not followed)",
        "pipe.dcm": "not_regular: not a regular file (FIFO, socket or device)",  # never opened: no hang
        "DOE_JOHN_19420314/\x00.dcm": "unreadable: cannot be read (ValueError)",
    }
    got = dict(zip(expected, reasons(model, "path", list(expected)), strict=True))
    assert got == expected
    for reason in got.values():  # nothing of a path comes back: not the folder named after a patient
        assert not any(part in reason for part in ("DOE", "JOHN", "1942", "IMG", str(root), "passwd"))


def test_the_environment_variable_names_the_root_for_mlflow_models_serve(host, dicom_classifier, monkeypatch):
    root, outside = host
    monkeypatch.setenv(PATH_ROOT_ENV, str(root))
    assert reasons(loaded(dicom_classifier), "path", ["IMG0001.dcm"]) == [""]
    assert reasons(loaded(dicom_classifier, **{PATH_ROOT_KEY: str(outside)}), "path", ["IMG0003.dcm"]) == [""]


def test_a_root_that_is_no_folder_or_the_whole_file_system_fails_the_load(tmp_path, monkeypatch):
    monkeypatch.delenv(PATH_ROOT_ENV, raising=False)
    assert path_root({}) is None and path_root({PATH_ROOT_KEY: ""}) is None
    with pytest.raises(ValueError, match="is not a folder"):
        path_root({PATH_ROOT_KEY: str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="the file-system root would let a client read any file"):
        path_root({PATH_ROOT_KEY: "/"})
    monkeypatch.setenv(PATH_ROOT_ENV, str(tmp_path / "sub" / ".."))
    assert path_root({}) == tmp_path.resolve()


@pytest.fixture(scope="module")
def small_ceiling(tmp_path_factory) -> Path:
    """A DICOM classifier whose ingest.max_pixel_bytes is 1 KiB: its files may be 16 MiB + 1 KiB."""
    path = tmp_path_factory.mktemp("small") / "model.pt"
    pre = TRAINED_ON_DICOM.model_copy(update={"ingest": IngestConfig(workers=1, max_pixel_bytes=2**10)})
    write_classifier(path, CLASSES, SIZE, preprocessing=pre)
    return path


def test_content_over_the_file_ceiling_is_refused_before_it_is_decoded_or_written(small_ceiling):
    model = loaded(small_ceiling)
    limit = 2**10 + 16 * 2**20
    got = reasons(model, "content", [b"\0" * (limit + 1), "!" * (4 * math.ceil(limit / 3) + 4)])
    assert all(r.startswith("too_large: content over 16 MiB") for r in got)  # the text was never decoded
    assert reasons(model, "content", ["not base64!!", 64]) == [
        "not_base64: content is text but not base64",
        "content: must be bytes or base64 text, got int",  # bytes(64) would be 64 zero bytes, bytes(10**12) a TB
    ]


def test_an_image_of_nan_or_out_of_range_values_gets_no_prediction(dicom_classifier):
    good = example_input(1, SIZE)[0]
    got = reasons(loaded(dicom_classifier), "image", [good, np.full_like(good, np.nan), good * 255, -good])
    assert got[0] == "" and all(r.startswith("range: an image's values must be finite and in [0, 1]") for r in got[1:])


def test_a_long_request_is_classified_in_batches_so_its_memory_does_not_grow_with_it(dicom_classifier, monkeypatch):
    from bonescan import classifier_file

    sizes, real = [], classifier_file.predict_probabilities

    def counting(model, dataset, **kw):
        sizes.append(len(dataset))
        return real(model, dataset, **kw)

    monkeypatch.setattr(classifier_file, "predict_probabilities", counting)
    images = [example_input(1, SIZE)[0], np.zeros((1, *SIZE), np.float32)] * 300
    got = loaded(dicom_classifier).predict(None, pd.DataFrame({"image": images}))
    assert sum(sizes) == 600 and max(sizes) <= 256  # model inputs held at once
    np.testing.assert_allclose(got[PROBS].to_numpy()[0::2], got[PROBS].to_numpy()[[0]].repeat(300, 0), atol=1e-6)
    np.testing.assert_allclose(got[PROBS].to_numpy()[1::2], got[PROBS].to_numpy()[[1]].repeat(300, 0), atol=1e-6)
