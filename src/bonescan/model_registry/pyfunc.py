"""The classifier as an MLflow pyfunc model: a self-contained directory `mlflow models serve` can load.

The directory holds the classifier file at `artifacts/model.pt` (what `bonescan predict --model
models:/...` loads), the bonescan code under `code/`, a column signature, an input example and pinned
pip requirements taken from this environment, so logging never resolves anything over the network.

Each input row is one of (the signature's optional columns):
- `image`: a preprocessed image (in_chans or 1, H, W) float32 in [0, 1], what training read;
- `content`: the bytes of a DICOM or image file (base64 in a JSON request), at most
  `max_file_bytes(ingest.max_pixel_bytes)` (144 MiB by default), refused before it is decoded;
- `path`: such a file on the serving machine, only when the model was loaded with a folder to read
  from (`model_config={"path_root": DIR}` or the environment variable BONESCAN_PYFUNC_ROOT), and only
  a regular file whose resolved path stays inside it (absolute, or relative to it). Without one, a
  served model would open whatever file a client names (/etc/shadow, /dev/zero, a FIFO).
A file takes the intake's path (`bonescan.intake.prepare_file`, as in `bonescan predict`): checks,
anonymization under a key drawn per loaded model, views, the model's own preprocessing. The output
has one row per input row: one probability column per class (a study's views averaged, as predict
does per study), `prediction` (the model's decision rule), `n_views`, and `reason`, empty when the
input was classified, else why it was not (`wrong_format: ...`, `path_refused: ...`): an input the
model cannot take is a row, never a failed request. A reason never quotes the path or the file's
contents beyond what the intake's reasons say (codes, sizes, modality). Rows are classified in
batches of a bounded number of views, so a request's memory does not grow with its length.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import logging
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bonescan import classifier_file
from bonescan.config import AnonymizeConfig
from bonescan.dicom.anonymize import Anonymizer
from bonescan.dicom.read import max_file_bytes
from bonescan.intake import file_suffix, prepare_file

if TYPE_CHECKING:
    from mlflow.models import Model, ModelSignature

__all__ = [
    "CHECKPOINT_KEY",
    "CONTENT_COLUMN",
    "IMAGE_COLUMN",
    "MODEL_ARTIFACT_PATH",
    "PATH_COLUMN",
    "PATH_ROOT_ENV",
    "PATH_ROOT_KEY",
    "PREDICTION_COLUMN",
    "REASON_COLUMN",
    "ClassifierPyfunc",
    "example_input",
    "inference_requirements",
    "path_root",
    "save_pyfunc",
    "signature",
]

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "classifier"  # the LoggedModel's name
CHECKPOINT_KEY = "checkpoint"  # pyfunc artifact name: the model dir holds artifacts/model.pt
IMAGE_COLUMN, PATH_COLUMN, CONTENT_COLUMN = "image", "path", "content"
INPUT_COLUMNS = (IMAGE_COLUMN, PATH_COLUMN, CONTENT_COLUMN)
PREDICTION_COLUMN = "prediction"
VIEWS_COLUMN = "n_views"
REASON_COLUMN = "reason"
PATH_ROOT_KEY = "path_root"  # model_config key: the folder `path` rows may read (wins over the variable)
PATH_ROOT_ENV = "BONESCAN_PYFUNC_ROOT"  # the same for `mlflow models serve`, whose CLI has no model_config
_VIEWS_PER_BATCH = 256  # model inputs held at once: 256 x 256 x 96 float32 = 24 MiB
# What `classifier_file.load` and the intake import (bonescan.classifier_file, bonescan.intake and their
# imports), pinned to this environment's versions: an explicit list, so that logging never runs
# MLflow's requirement inference.
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
    "pylibjpeg-libjpeg",
    "python-gdcm",
    "rich",
)


# --------------------------------------------------------------------------- the pyfunc model


class _Views(Dataset):
    """(C, H, W) arrays -> the (image, label) items `predict_probabilities` reads."""

    def __init__(self, images: Sequence[np.ndarray]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(self.images[index]), 0  # a copy: the broadcast views are read-only


def _present(value: Any) -> bool:
    """Whether a cell holds an input (a frame built from mixed rows fills the others with None/NaN)."""
    if value is None:
        return False
    if isinstance(value, float):
        return not np.isnan(value)
    return not (isinstance(value, str | bytes) and not value)


def _cells(model_input: Any) -> Iterator[dict[str, Any]]:
    """Input rows as {column: value} of the input columns present; a 4-d array is a batch of images."""
    if isinstance(model_input, np.ndarray | torch.Tensor) and np.ndim(model_input) == 4:
        for image in np.asarray(model_input):
            yield {IMAGE_COLUMN: image}
        return
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    columns = [c for c in INPUT_COLUMNS if c in frame.columns]
    for values in frame[columns].itertuples(index=False, name=None):
        yield {c: v for c, v in zip(columns, values, strict=True) if _present(v)}


def path_root(model_config: dict[str, Any] | None) -> Path | None:
    """The folder `path` rows may read: `model_config["path_root"]`, else $BONESCAN_PYFUNC_ROOT, else None.

    Raises:
        ValueError: the folder named does not exist, or is the file-system root (every file).
    """
    named = str((model_config or {}).get(PATH_ROOT_KEY) or os.environ.get(PATH_ROOT_ENV, "")).strip()
    if not named:
        return None
    root = Path(os.path.realpath(named))
    if not root.is_dir():
        raise ValueError(f"{PATH_ROOT_KEY} / {PATH_ROOT_ENV}: {named} is not a folder")
    if root == Path(root.anchor):
        raise ValueError(f"{PATH_ROOT_KEY} / {PATH_ROOT_ENV}: the file-system root would let a client read any file")
    return root


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """A bonescan classifier file served through MLflow: images or whole files in, probabilities out.

    The classifier file (the `checkpoint` artifact) is rebuilt with `bonescan.classifier_file.load`, so
    the served model is exactly the one `evaluate` scored. Inference runs on the CPU in fp32. Files are
    anonymized under a key drawn when the model is loaded: nothing the server computes is linkable to
    the project's pseudonyms, and nothing of a file but its probabilities leaves `predict`.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self._model, self._record = classifier_file.load(context.artifacts[CHECKPOINT_KEY])
        self._classes = list(self._record.classes)
        self._key = secrets.token_bytes(32)
        self._anonymizer = Anonymizer(self._key, AnonymizeConfig())
        self._root = path_root(context.model_config)

    def predict(  # noqa: ANN001 (model_input)
        self, context: mlflow.pyfunc.PythonModelContext, model_input, params: dict | None = None
    ) -> pd.DataFrame:
        """Input rows (see the module docstring) -> (rows, classes + prediction, n_views, reason).

        `model_input` is left unannotated: MLflow would otherwise derive a schema from the annotation.
        """
        rows: list[list[Any]] = []
        batch: list[tuple[list[np.ndarray], str]] = []
        held = 0  # views in `batch`
        for cells in _cells(model_input):
            batch.append(self._views(cells))
            held += len(batch[-1][0])
            if held >= _VIEWS_PER_BATCH:
                rows += self._classify(batch)
                batch, held = [], 0
        rows += self._classify(batch)
        return pd.DataFrame(rows, columns=[*self._classes, PREDICTION_COLUMN, VIEWS_COLUMN, REASON_COLUMN])

    def _classify(self, prepared: list[tuple[list[np.ndarray], str]]) -> list[list[Any]]:
        """Prepared rows -> output rows: a row's probabilities are its views' mean (a study, as in predict)."""
        shape = (self._record.in_chans, *self._record.image_size)
        images = [np.broadcast_to(image, shape) for views, _ in prepared for image in views]  # (C, H, W) each
        prob = classifier_file.predict_probabilities(
            self._model, _Views(images), image_size=self._record.image_size, num_classes=len(self._classes),
            test_time_flip=self._record.test_time_flip,
        ) if images else np.zeros((0, len(self._classes)))  # (N views, K)  # fmt: skip
        rows, start = [], 0
        for views, reason in prepared:
            nan = np.full(len(self._classes), np.nan)
            mean = prob[start : start + len(views)].mean(axis=0) if views else nan
            start += len(views)
            label = self._classes[int(self._record.decision.predict(mean[None])[0])] if views else ""
            rows.append([*mean, label, len(views), reason])
        return rows

    def _views(self, cells: dict[str, Any]) -> tuple[list[np.ndarray], str]:
        """One input row -> ((C, H, W) model inputs, "") or ([], why it cannot be classified)."""
        if len(cells) != 1:
            given = ", ".join(cells) or "none"
            return [], f"no_input: give exactly one of {', '.join(INPUT_COLUMNS)} (given: {given})"
        ((column, value),) = cells.items()
        if column == IMAGE_COLUMN:
            return self._image(value)
        if self._record.preprocessing is None:
            return [], "no_preprocessing: the model records no preprocessing; send preprocessed images"
        if column == PATH_COLUMN:
            if self._root is None:
                return [], (f"path_refused: this model reads no files from its host; send the file as "
                            f"{CONTENT_COLUMN}, or load it with {PATH_ROOT_ENV} (or model_config "
                            f"{PATH_ROOT_KEY}) naming the folder it may read")  # fmt: skip
            path = self._root / str(value)  # an absolute path stays itself; the intake checks where it leads
            return self._file(path, self._root)
        return self._content(value)

    def _content(self, value: Any) -> tuple[list[np.ndarray], str]:
        """A file's bytes (or their base64) -> its views, after a size check made before anything is decoded."""
        limit = max_file_bytes(self._record.preprocessing.ingest.max_pixel_bytes)
        too_large = f"too_large: content over {limit / 2**20:,.0f} MiB (max_file_bytes of ingest.max_pixel_bytes)"
        if isinstance(value, str):  # sent without the signature's binary type: still base64
            if len(value) > 4 * math.ceil(limit / 3):
                return [], too_large
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return [], "not_base64: content is text but not base64"
        if not isinstance(value, bytes | bytearray | memoryview):  # bytes(10**12) would allocate a terabyte
            return [], f"content: must be bytes or base64 text, got {type(value).__name__}"
        if memoryview(value).nbytes > limit:  # measured without a copy
            return [], too_large
        content = bytes(value)
        with tempfile.TemporaryDirectory(prefix="bonescan-request-") as tmp:
            path = Path(tmp) / f"input{file_suffix(content)}"
            path.write_bytes(content)
            return self._file(path, path.parent)

    def _file(self, path: Path, root: Path) -> tuple[list[np.ndarray], str]:
        relpath = f"input{path.suffix}"  # the suffix picks image or DICOM; no part of a name reaches a reason
        result, prepared = prepare_file(path, relpath, self._anonymizer, self._record.preprocessing, root,
                                        self._key)  # fmt: skip
        if prepared is None:
            return [], f"{result.code}: {result.reason}"
        return [image[None] for _, image in prepared.views], ""

    def _image(self, value: Any) -> tuple[list[np.ndarray], str]:
        h, w = self._record.image_size
        try:
            image = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):  # ragged nested lists, text
            return [], f"shape: an image must be an array ({self._record.in_chans} or 1, {h}, {w}) of numbers"
        image = image[None] if image.ndim == 2 else image
        if image.ndim != 3 or image.shape[0] not in (1, self._record.in_chans) or image.shape[1:] != (h, w):
            return [], f"shape: an image must be (1 or {self._record.in_chans}, {h}, {w}), got {image.shape}"
        if not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
            return [], "range: an image's values must be finite and in [0, 1] (what training read)"
        return [image], ""


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


def signature(classes: Sequence[str]) -> ModelSignature:
    """Optional `image` / `path` / `content` columns in; a probability per class, the decision, views and reason out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = Schema([
        ColSpec(Array(Array(Array("double"))), IMAGE_COLUMN, required=False),  # (C, H, W) in [0, 1]
        ColSpec("string", PATH_COLUMN, required=False),
        ColSpec("binary", CONTENT_COLUMN, required=False),
    ])  # fmt: skip
    outputs = Schema([
        *(ColSpec("double", c) for c in classes),
        ColSpec("string", PREDICTION_COLUMN),
        ColSpec("long", VIEWS_COLUMN),
        ColSpec("string", REASON_COLUMN),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_pyfunc(checkpoint: str | Path, dst: str | Path, mlflow_model: Model | None = None) -> Path:
    """Write the classifier file as an MLflow pyfunc model directory at `dst` (which must not exist).

    The directory holds `artifacts/model.pt`, `code/bonescan/`, MLmodel with the column signature, a
    synthetic `image` input example and an empty `path_root` (no file is read until a load names a
    folder), and pinned requirements (nothing is inferred, so nothing is resolved over the network).

    Args:
        mlflow_model: the MLmodel to fill (one bound to a LoggedModel's id when logging), else a new one.
    """
    checkpoint, dst = Path(checkpoint), Path(dst)
    record = classifier_file.read(checkpoint)
    example = {IMAGE_COLUMN: [example_input(record.in_chans, record.image_size)[0].tolist()]}
    with tempfile.TemporaryDirectory(prefix="bonescan-code-") as tmp:
        mlflow.pyfunc.save_model(
            path=str(dst),
            python_model=ClassifierPyfunc(),
            artifacts={CHECKPOINT_KEY: str(checkpoint)},
            code_paths=[str(_stage_code(Path(tmp)))],
            signature=signature(record.classes),
            input_example=pd.DataFrame(example),
            pip_requirements=inference_requirements(),
            model_config={PATH_ROOT_KEY: ""},  # MLflow passes a load-time key only if the saved model has it
            mlflow_model=mlflow_model,
        )
    return dst
