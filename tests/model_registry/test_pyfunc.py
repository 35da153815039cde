"""Specification of the MLflow pyfunc: preprocessed images, or whole files (a path or their bytes) taken
through the intake exactly as `bonescan predict` takes them; an input it cannot take is a row with a reason."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bonescan.config import AnonymizeConfig
from bonescan.model_registry import example_input, save_pyfunc
from bonescan.predict import predict
from tests.classifier_files import write_classifier
from tests.model_registry.conftest import CLASSES, SIZE

PROBS = list(CLASSES)


@pytest.fixture(scope="module")
def served(dicom_pyfunc):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(dicom_pyfunc))


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


def test_an_input_the_model_cannot_take_is_a_row_with_its_reason_not_an_error(served, tmp_path):
    rows = pd.DataFrame({
        "image": [None, None, None, np.zeros((1, 8, 8)), None],
        "path": [None, None, str(tmp_path / "missing.dcm"), None, None],
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


def test_the_model_directory_pins_its_requirements_and_holds_an_identity_free_example(dicom_pyfunc):
    requirements = (dicom_pyfunc / "requirements.txt").read_text().split()
    assert requirements and all("==" in line for line in requirements)  # nothing left to resolve online
    assert any(line.startswith("pydicom==") for line in requirements)  # the intake runs in the server
    example = (dicom_pyfunc / "input_example.json").read_text()
    assert '"image"' in example and '"path"' not in example and '"content"' not in example
