"""The classifier on CUDA: exact resume of a killed fine-tuning run, and evaluate / predict on the GPU
giving the CPU's probabilities for the same saved model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bonescan.config import (
    AnonymizeConfig,
    AugmentConfig,
    ClassifierConfig,
    EvaluateConfig,
    IngestConfig,
    PhantomConfig,
    Preprocessing,
)
from bonescan.dicom.phantom import write_cohort as write_phantoms
from bonescan.evaluate import run_evaluate
from bonescan.predict import predict
from bonescan.train import finetune_classifier, pretrain_classifier
from tests.png_cohorts import SIZE, write_cohort

pytestmark = pytest.mark.cuda

CLASSES = ["healthy", "metastasis", "benign"]
SOURCE_CLASSES = ["normal", "covid19", "lung_opacity", "viral_pneumonia"]
PREPROCESSING = Preprocessing(
    ingest=IngestConfig(workers=1), modalities=("NM",), split_views=True, image_size=SIZE
)
PROBABILITY_TOLERANCE = 1e-3  # fp32 on both; cuDNN may use TF32 convolutions


@pytest.fixture
def project(tmp_path: Path) -> Path:
    splits = {
        "train": {"healthy": 6, "metastasis": 4, "benign": 2},
        "val": {"healthy": 2, "metastasis": 2, "benign": 1},
        "test": {"healthy": 2, "metastasis": 2, "benign": 2},
    }
    write_cohort(tmp_path, "target", CLASSES, splits)
    write_cohort(tmp_path, "source", SOURCE_CLASSES, {"train": dict.fromkeys(SOURCE_CLASSES, 2)}, 1)
    return tmp_path


def _cfg(device: torch.device, epochs: int = 3) -> ClassifierConfig:
    return ClassifierConfig(
        model="soft_threshold_net",  # dropout and BatchNorm: an exact resume needs RNG and running stats back
        pretrain_source="source",
        manifest="target/manifest.csv",
        device=device.type,
        pretrain={"epochs": 1, "batch_size": 4},
        finetune={"epochs": epochs, "batch_size": 4},
    )


def _pretrain(cfg: ClassifierConfig, root: Path) -> None:
    pretrain_classifier(
        cfg, "source/manifest.csv", SOURCE_CLASSES, SIZE, CLASSES, SIZE, root=root, progress=False
    )


def _finetune(cfg: ClassifierConfig, root: Path, **kwargs):
    return finetune_classifier(cfg, AugmentConfig(mode="none"), CLASSES, SIZE, root=root, progress=False,
                               preprocessing=PREPROCESSING, **kwargs)  # fmt: skip


class Killed(RuntimeError):
    pass


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_killed_cuda_finetuning_run_resumes_to_the_weights_of_an_uninterrupted_run(
    project, device, deterministic
):
    cfg = _cfg(device)
    _pretrain(cfg, project)  # once: fine-tuning resumes only from the same initial weights
    full = _finetune(cfg, project, resume=False)
    full_model = _load(project / full.model_path)

    def die_after_epoch_2(stats) -> None:
        if stats.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        _finetune(cfg, project, resume=False, callback=die_after_epoch_2)
    resumed = _finetune(cfg, project, resume=True)
    assert resumed.resumed_from == 2
    resumed_model = _load(project / resumed.model_path)
    assert resumed_model["model"].keys() == full_model["model"].keys()
    for key, value in full_model["model"].items():
        assert torch.equal(resumed_model["model"][key], value), f"{key} differs after a resume on {device}"


def _probabilities(csv: Path) -> np.ndarray:
    table = pd.read_csv(csv)
    return table.sort_values(list(table.columns[:2])).filter(like="p_").to_numpy()


def _trained(project: Path, device: torch.device) -> Path:
    cfg = _cfg(device, epochs=1)
    _pretrain(cfg, project)
    return project / _finetune(cfg, project).model_path


def test_evaluate_on_the_gpu_gives_the_cpu_probabilities_and_metrics(project, device):
    model_path = _trained(project, device)
    results = {}
    for where in ("cpu", device.type):
        cfg = EvaluateConfig(n_boot=20, gradcam_per_class=1, device=where, reports_dir=f"eval-{where}",
                             metrics_file=f"eval-{where}/eval.json", plots_dir=f"eval-{where}/plots")  # fmt: skip
        results[where] = run_evaluate(cfg, CLASSES, project / "target/manifest.csv", model_path, root=project)
    on_cpu, on_device = results["cpu"], results[device.type]
    assert on_device.n_images == on_cpu.n_images == 6
    np.testing.assert_allclose(
        _probabilities(project / f"eval-{device.type}/predictions.csv"),
        _probabilities(project / "eval-cpu/predictions.csv"),
        atol=PROBABILITY_TOLERANCE,
    )
    assert on_device.metrics["accuracy"] == on_cpu.metrics["accuracy"]


def test_predict_on_the_gpu_gives_the_cpu_probabilities(project, device):
    model_path = _trained(project, device)
    write_phantoms(PhantomConfig(patients=3, chest_patients=0, bone_size=(128, 32), seed=7), project / "raw")
    secret = b"cuda-test-secret-0123456789abcdef"
    summaries = {
        where: predict(
            project / "raw" / "bone",
            str(model_path),
            project / f"out-{where}",
            anonymize=AnonymizeConfig(),
            secret=secret,
            device=where,
            gradcam=True,
            project_root=project,
        )  # fmt: skip
        for where in ("cpu", device.type)
    }
    assert summaries[device.type].device.startswith(device.type)
    assert summaries[device.type].images == summaries["cpu"].images > 0
    assert summaries[device.type].gradcam_overlays == summaries["cpu"].images
    np.testing.assert_allclose(
        _probabilities(project / f"out-{device.type}/predictions.csv"),
        _probabilities(project / "out-cpu/predictions.csv"),
        atol=PROBABILITY_TOLERANCE,
    )
