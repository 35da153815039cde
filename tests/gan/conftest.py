"""Tiny on-disk cohorts and params for the GAN stage tests (images made here, 32x16 pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonescan.config import Params, parse_params
from tests.png_cohorts import SIZE, write_cohort

TARGET_CLASSES = ["healthy", "metastasis", "benign"]
SOURCE_CLASSES = ["normal", "covid19", "lung_opacity", "viral_pneumonia"]


def tiny_params(**gan_overrides) -> Params:
    """Params whose GAN stages finish in seconds on 32x16 images."""
    dataset = {"raw_dir": "raw", "interim_dir": "interim", "reports_dir": "reports", "metrics_dir": "metrics"}
    gan = {
        "archs": ["mu_acgan"],
        "model": {"image_size": list(SIZE), "z_dim": 16, "base_channels": 8},
        "train": {
            "batch_size": 4,
            "checkpoint_every": 2,
            "sample_every": 1,
            "samples_per_class": 2,
            "device": "cpu",
        },
        "pretrain": {"dataset": "source", "epochs": 1},
        "finetune": {"dataset": "target", "epochs": 1},
        "synthesize": {"arch": "mu_acgan", "batch_size": 8},
        "quality": {
            "samples_per_class": 4,
            "tstr_samples_per_class": 8,  # more than are measured: the measured ones are the first 4
            "classifier_epochs": 1,
            "classifier_batch_size": 8,
        },
    }
    for key, value in gan_overrides.items():
        gan[key] = (
            {**gan[key], **value} if isinstance(value, dict) and isinstance(gan.get(key), dict) else value
        )
    return parse_params(
        {
            "base": {"image_size": list(SIZE), "classes": TARGET_CLASSES},
            "datasets": {
                "target": {**dataset, "classes": TARGET_CLASSES, "out_dir": "target"},
                "source": {**dataset, "classes": SOURCE_CLASSES, "out_dir": "source"},
            },
            "gan": gan,
        }
    )


@pytest.fixture
def make_params():
    """`tiny_params` as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    return tiny_params


@pytest.fixture
def make_cohort():
    """`write_cohort` as a fixture."""
    return write_cohort


TARGET_SPLITS = {
    "train": {"healthy": 6, "metastasis": 4, "benign": 2},
    "val": {"healthy": 2, "metastasis": 2, "benign": 1},
    "test": {"healthy": 2, "metastasis": 1, "benign": 1},
}


def write_cohorts(root: Path, source_splits: dict[str, dict[str, int]]) -> Path:
    """The imbalanced target cohort (`TARGET_SPLITS`) and a source cohort under `root`."""
    write_cohort(root, "target", TARGET_CLASSES, TARGET_SPLITS)
    write_cohort(root, "source", SOURCE_CLASSES, source_splits, 1)
    return root


@pytest.fixture
def cohorts(tmp_path: Path) -> Path:
    """A project root with an imbalanced target cohort (train/val/test) and a balanced source cohort."""
    return write_cohorts(tmp_path, {"train": dict.fromkeys(SOURCE_CLASSES, 2), "val": {"normal": 1}})


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    """A project root (the `cohorts` layout) whose mu_acgan and acgan went through both GAN stages.

    Module-scoped: training takes a few seconds, and the synthesis tests only read the weights.
    """
    from bonescan.gan.train import run_gan_stage

    root = write_cohorts(tmp_path_factory.mktemp("trained"), {"train": dict.fromkeys(SOURCE_CLASSES, 2)})
    params = tiny_params(archs=["mu_acgan", "acgan"])
    run_gan_stage("pretrain", params, root=root)
    run_gan_stage("finetune", params, root=root)
    return root
