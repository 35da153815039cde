"""Fixtures of the registry tests: a DICOM-trained classifier as a pyfunc directory, and a phantom study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bonescan.config import IngestConfig, Preprocessing
from bonescan.dicom.phantom import make_nm_dataset, sample_patient_identity, sample_study_identity
from tests.classifier_files import write_classifier

CLASSES = ("healthy", "metastasis", "benign")
SIZE = (64, 32)
TRAINED_ON_DICOM = Preprocessing(
    ingest=IngestConfig(workers=1),
    modalities=("NM",),
    split_views=True,
    image_size=SIZE,
    input_format="dicom",
)


def write_study(path: Path, seed: int = 0) -> Path:
    """A two-view (anterior, posterior) whole-body NM phantom with a fake identity, as a DICOM file."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(rng.uniform(0, 300, (2, 128, 32))).astype(np.uint16)  # (views, H, W) counts
    patient, study = sample_patient_identity(seed, "bone", 0), sample_study_identity(seed, "bone", 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_nm_dataset(frames, ["anterior", "posterior"], patient, study).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("study") / "IMG0001.dcm")


@pytest.fixture(scope="session")
def dicom_classifier(tmp_path_factory) -> Path:
    """model.pt of an untrained classifier that records DICOM preprocessing, as clf_finetune saves one."""
    path = tmp_path_factory.mktemp("classifier") / "model.pt"
    write_classifier(path, CLASSES, SIZE, seed=3, preprocessing=TRAINED_ON_DICOM)
    return path


@pytest.fixture(scope="session")
def dicom_pyfunc(tmp_path_factory, dicom_classifier) -> Path:
    """The classifier as the MLflow model directory the registry stores."""
    from bonescan.model_registry import save_pyfunc

    return save_pyfunc(dicom_classifier, tmp_path_factory.mktemp("pyfunc") / "model")
