"""The classifier as an MLflow pyfunc model: a self-contained directory `mlflow models serve` can load.

The directory holds the classifier file at `artifacts/model.pt` (what `bonescan predict --model
models:/...` loads), the bonescan code under `code/`, a tensor signature, an input example and pinned
pip requirements taken from this environment, so logging never resolves anything over the network.
Its input is the training preprocessing's output, (B, in_chans, H, W) float32 in [0, 1]; its output
is one probability column per class plus `prediction` (the model's own decision rule).
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from bonescan import classifier_file

__all__ = [
    "CHECKPOINT_KEY",
    "MODEL_ARTIFACT_PATH",
    "PREDICTION_COLUMN",
    "ClassifierPyfunc",
    "example_input",
    "inference_requirements",
    "save_pyfunc",
]

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "classifier"  # run artifact folder of the pyfunc model (the version's source)
CHECKPOINT_KEY = "checkpoint"  # pyfunc artifact name: the model dir holds artifacts/model.pt
PREDICTION_COLUMN = "prediction"
# What `classifier_file.load` imports (bonescan.classifier_file and its imports), pinned to this environment's
# versions: an explicit list, so that logging never runs MLflow's requirement inference.
_INFERENCE_PACKAGES = (
    "mlflow",
    "cloudpickle",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pydantic",
    "pyyaml",
    "pillow",
    "scipy",
    "scikit-image",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "python-gdcm",
    "rich",
)


# --------------------------------------------------------------------------- the pyfunc model


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """A bonescan checkpoint served through MLflow: preprocessed images in, class probabilities out.

    The classifier file (the `checkpoint` artifact) is rebuilt with `bonescan.classifier_file.load`, so
    the served model is exactly the one `evaluate` scored. Inference runs on the CPU in fp32.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self._model, record = classifier_file.load(context.artifacts[CHECKPOINT_KEY])
        self._classes = list(record.classes)
        self._decision = record.decision

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> pd.DataFrame:
        """Softmax probabilities of (B, in_chans, H, W) images -> (B, classes + `prediction`) frame."""
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            prob = torch.softmax(self._model(images).float(), dim=1).numpy().astype(np.float64)  # (B, K)
        out = pd.DataFrame(prob, columns=self._classes)
        out[PREDICTION_COLUMN] = [self._classes[i] for i in self._decision.predict(prob)]
        return out


def example_input(in_chans: int, image_size: Sequence[int]) -> np.ndarray:
    """A synthetic, identity-free model input (1, in_chans, H, W) float32 in [0, 1].

    A smooth elongated body with one hot spot, quantised to the 16-bit steps of the PNGs training
    read: the value range and resolution the model saw, without any patient's image in the registry.
    """
    h, w = int(image_size[0]), int(image_size[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = yy / max(h - 1, 1), xx / max(w - 1, 1)
    body = 0.35 * np.exp(-((((x - 0.5) / 0.2) ** 2 + ((y - 0.5) / 0.42) ** 2) ** 2))
    spot = 0.6 * np.exp(-(((x - 0.4) / 0.05) ** 2 + ((y - 0.3) / 0.03) ** 2))
    image = np.round(np.clip(body + spot, 0.0, 1.0) * 65535.0) / 65535.0
    return np.broadcast_to(image, (1, in_chans, h, w)).astype(np.float32)


def inference_requirements() -> list[str]:
    """`name==version` of the packages the model needs at load time, as installed here."""
    pins = []
    for name in _INFERENCE_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            log.debug("%s is not installed; left out of the model's requirements", name)
    return pins


def _stage_code(dst: Path) -> Path:
    """A copy of the bonescan package's sources (no caches) for the model's `code/` folder."""
    import bonescan

    src = Path(bonescan.__file__).parent
    target = dst / "bonescan"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def save_pyfunc(checkpoint: str | Path, dst: str | Path) -> Path:
    """Write the classifier file as an MLflow pyfunc model directory at `dst` (which must not exist).

    The directory holds `artifacts/model.pt`, `code/bonescan/`, MLmodel with a tensor signature
    (float32, (-1, in_chans, H, W)) and an input example, and pinned requirements.
    """
    from mlflow.models import infer_signature

    checkpoint, dst = Path(checkpoint), Path(dst)
    model, record = classifier_file.load(checkpoint)
    classes = list(record.classes)
    example = example_input(record.in_chans, record.image_size)
    with torch.inference_mode():
        prob = torch.softmax(model(torch.from_numpy(example)).float(), dim=1).numpy().astype(np.float64)
    output = pd.DataFrame(prob, columns=classes)
    output[PREDICTION_COLUMN] = [classes[i] for i in record.decision.predict(prob)]
    with tempfile.TemporaryDirectory(prefix="bonescan-code-") as tmp:
        mlflow.pyfunc.save_model(
            path=str(dst),
            python_model=ClassifierPyfunc(),
            artifacts={CHECKPOINT_KEY: str(checkpoint)},
            code_paths=[str(_stage_code(Path(tmp)))],
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=inference_requirements(),
        )
    return dst
