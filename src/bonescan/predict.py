"""Inference on new studies: `bonescan predict INPUT --model URI --out DIR`.

INPUT is a DICOM or image file (PNG/JPEG), a study folder or a folder of studies (walked recursively,
in sorted order). Every file takes the ingest stage's path up to the model input (`bonescan.intake`),
in memory: read (read-only) -> modality and whole-body checks -> anonymize -> decode the anonymized
dataset -> views -> crop, mirror, scale, resize -> the 16-bit quantization of the PNGs the model was
trained on; an image file is decoded, cropped and resized the same way. A model trained on DICOM
rejects image files and one trained on images rejects DICOM (`wrong_format`).
So a file gives the model exactly the tensor its ingested copy would, and nothing is written but
the outputs below. Probabilities of a study's views are averaged (`aggregate_by_study`), as in the
evaluate stage, because a report is written per study.

Outputs never hold raw identifiers. With the project's anonymization key, study and image ids are
the keyed pseudonyms ingest writes into the manifest (a study seen in training has the same id);
without it, the files are anonymized under a key drawn for this run only and ids are per-run
indices. Each image row carries the file's position in the sorted listing of INPUT. A file that is
not a DICOM whole-body bone scan, or cannot be decoded, is a row of rejected.csv and never stops the
run: its file_index, its path relative to INPUT with identifying values masked as in ingest's
quarantine.csv, or wholly masked (`***/***.dcm`) when nothing in its folder tells which values
identify (a lone unreadable file in a folder named after the patient), and the reason.

Files in DIR: predictions.csv (per image), study_predictions.csv (per study), rejected.csv,
summary.json, and with Grad-CAM gradcam/<image_id>_<layer>.png overlays for the predicted class.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bonescan import classifier_file
from bonescan.checkpoint import file_digest
from bonescan.classifier_file import ClassifierFile, predict_probabilities
from bonescan.config import AnonymizeConfig, Preprocessing
from bonescan.dicom.anonymize import Anonymizer
from bonescan.intake import (
    FileResult,
    PreparedFile,
    QuarantineWriter,
    image_pseudonym,
    iter_files,
    prepare_file,
    study_pseudonym,
)
from bonescan.metrics import aggregate_by_study
from bonescan.runtime import atomic_path, atomic_write_json, resolve_device

__all__ = [
    "ModelSource",
    "PredictSummary",
    "PreparedFile",
    "load_model",
    "model_preprocessing",
    "predict",
    "prepare_file",
    "resolve_model",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"
MLFLOW_SCHEMES = ("models:/", "runs:/")


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelSource:
    """Where the classifier came from (recorded in summary.json).

    Attributes:
        uri: as given: a checkpoint path or an MLflow URI.
        version: registered model version an MLflow `models:/` URI resolved to, else None.
        run_id: MLflow run that logged the model, when known.
        sha: blake2b of the checkpoint file (identifies the weights whatever the URI).
    """

    uri: str
    version: str | None = None
    run_id: str | None = None
    sha: str = ""


def _find_checkpoint(folder: Path) -> Path | None:
    """`<folder>/artifacts/model.pt` (the registry's layout), else `<folder>/model.pt`, else any model.pt."""
    for candidate in (folder / "artifacts" / CHECKPOINT_NAME, folder / CHECKPOINT_NAME):
        if candidate.is_file():
            return candidate
    found = sorted(folder.rglob(CHECKPOINT_NAME))
    return found[0] if found else None


_MODELS_URI = re.compile(
    r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+|latest))(?P<path>/.*)?"
)
_RUNS_URI = re.compile(r"runs:/(?P<run>[^/]+)(?P<path>/.*)?")


def _artifact_location(uri: str, project_root: Path) -> tuple[str, str | None, str | None]:
    """MLflow URI -> (location to download, registered version, run id), through an explicit client.

    `models:/` URIs are resolved here rather than by `download_artifacts`, which looks their name up
    in the process-global registry URI whatever registry it is given.

    Raises:
        ValueError: a `models:/` form other than `@alias`, `/<version>` or `/latest`.
    """
    from bonescan.tracking import client

    runs = _RUNS_URI.fullmatch(uri)
    if runs:
        return uri, None, runs["run"]
    match = _MODELS_URI.fullmatch(uri)
    if match is None:
        raise ValueError(
            f"model {uri}: use models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/<path>"
        )
    registry = client(project_root)
    name = match["name"]
    if match["alias"]:
        found = registry.get_model_version_by_alias(name, match["alias"])
    elif match["version"] == "latest":
        versions = registry.search_model_versions(f"name = '{name}'")
        if not versions:
            raise FileNotFoundError(f"model {uri}: {name!r} has no registered version")
        found = max(versions, key=lambda v: int(v.version))
    else:
        found = registry.get_model_version(name, match["version"])
    location = registry.get_model_version_download_uri(name, found.version)
    return location.rstrip("/") + (match["path"] or ""), str(found.version), found.run_id


def resolve_model(uri: str, dst: Path, project_root: str | Path = ".") -> tuple[Path, ModelSource]:
    """A local checkpoint for `uri`: a path as is, an MLflow URI downloaded under `dst`.

    Args:
        uri: `model.pt`, a folder holding one, `models:/bonescan-classifier@champion`,
            `models:/bonescan-classifier/3`, `models:/bonescan-classifier/latest` or
            `runs:/<run_id>/classifier`.
        dst: empty folder the MLflow artifacts are downloaded to (the caller removes it).
        project_root: where the default tracking store (mlflow.db) lives; MLFLOW_TRACKING_URI overrides.

    Raises:
        FileNotFoundError: the path, registered model, alias, version or run does not exist, or the
            model holds no `model.pt` (the message names the URI).
    """
    project_root = Path(project_root)
    if not uri.startswith(MLFLOW_SCHEMES):
        path = Path(uri)
        checkpoint = _find_checkpoint(path) if path.is_dir() else path
        if checkpoint is None or not checkpoint.is_file():
            raise FileNotFoundError(f"model {uri}: no checkpoint ({CHECKPOINT_NAME}) found there")
        return checkpoint, ModelSource(uri, sha=file_digest(checkpoint))

    from mlflow.artifacts import download_artifacts  # only MLflow URIs need mlflow (a heavy import)
    from mlflow.exceptions import MlflowException

    from bonescan.tracking import tracking_uri

    store = tracking_uri(project_root)
    try:
        location, version, run_id = _artifact_location(uri, project_root)
        local = Path(
            download_artifacts(
                artifact_uri=location, dst_path=str(dst), tracking_uri=store, registry_uri=store
            )
        )
    except MlflowException as exc:  # unknown name, alias, version or run
        raise FileNotFoundError(f"model {uri}: {exc.message} (tracking store {store})") from None
    checkpoint = _find_checkpoint(local) if local.is_dir() else local
    if checkpoint is None or checkpoint.name != CHECKPOINT_NAME:
        raise FileNotFoundError(
            f"model {uri}: no artifacts/{CHECKPOINT_NAME} in the downloaded model (tracking store {store})"
        )
    return checkpoint, ModelSource(uri, version, run_id, file_digest(checkpoint))


def load_model(
    uri: str, device: torch.device | str = "cpu", project_root: str | Path = "."
) -> tuple[nn.Module, ClassifierFile, ModelSource]:
    """The classifier file `uri` resolves to: (model in eval mode, its record, source)."""
    with tempfile.TemporaryDirectory(prefix="bonescan-model-") as tmp:
        checkpoint, source = resolve_model(uri, Path(tmp), project_root)
        model, record = classifier_file.load(checkpoint, device)
    return model, record, source


def model_preprocessing(
    record: ClassifierFile, current: Preprocessing | None, uri: str = "model"
) -> tuple[Preprocessing, str]:
    """(the preprocessing to apply to new files, "checkpoint" or "params") for a classifier checkpoint.

    A model is fed what it was trained on: its checkpoint's record wins over `current` (params.yaml),
    and every difference between the two is logged. A checkpoint without a record (older bonescan)
    falls back to `current` at the checkpoint's image size.

    Raises:
        ValueError: the checkpoint records no preprocessing and `current` is None.
    """
    size = record.image_size
    used = record.preprocessing
    if used is None:
        if current is None:
            raise ValueError(f"model {uri} records no preprocessing: give the params' (ingest, target dataset)")
        log.warning("model %s records no preprocessing (older checkpoint): applying params.yaml's", uri)
        return current.model_copy(update={"image_size": size}), "params"
    for difference in used.differences(current) if current is not None else []:
        log.warning("model %s was trained with %s (params.yaml): applying the model's", uri, difference)
    return used, "checkpoint"


# --------------------------------------------------------------------------- ids


class _Ids:
    """Study and image ids: ingest's keyed pseudonyms, or per-run indices when the key is ephemeral."""

    def __init__(self, keyed: bool):
        self.keyed = keyed
        self._studies: dict[str, str] = {}
        self._images = 0

    def study(self, prepared: PreparedFile, file_index: int) -> str:
        key = prepared.study_uid or f"file:{file_index}"  # no study UID: the file is its own study
        if self.keyed and prepared.study_id:
            return prepared.study_id
        if self.keyed and prepared.study_uid:
            return study_pseudonym(prepared.study_uid)  # == the manifest's study_id
        return self._studies.setdefault(key, f"study-{len(self._studies) + 1:04d}")

    def image(self, prepared: PreparedFile, view: str, index: int) -> str:
        if self.keyed:
            return image_pseudonym(prepared.sop_uid, view, index)  # == the manifest's image_id
        self._images += 1
        return f"image-{self._images:05d}"


# --------------------------------------------------------------------------- inference


class _Images(Dataset):
    """(H, W) arrays -> (1, H, W) tensors, the items `predict_probabilities` reads."""

    def __init__(self, images: Sequence[np.ndarray], num_classes: int):
        self.images, self.num_classes = list(images), num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.from_numpy(self.images[index])[None], 0


@dataclass(frozen=True)
class _Pending:
    file_index: int
    file_sha256: str
    path: str | None
    study_id: str
    image_id: str
    view: str
    image: np.ndarray  # (H, W)


def _file_sha256(path: Path) -> str:
    """Digest of a file's bytes: the user can compute it from their own copy to join outputs to inputs."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class PredictSummary:
    """What one predict run did (summary.json; counts and pseudonymous facts only)."""

    model: dict
    classes: list[str]
    ids: str  # "keyed" (ingest's pseudonyms) or "per-run" (indices of this run)
    files_seen: int = 0
    images: int = 0
    studies: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    study_predictions: dict[str, int] = field(default_factory=dict)
    gradcam_overlays: int = 0
    device: str = "cpu"
    seconds: float = 0.0
    preprocessing: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _gradcam(
    model: nn.Module,
    batch: list[_Pending],
    prob: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[str],
    device: torch.device,
    out: Path,
) -> int:
    from bonescan.gradcam import GalleryItem, gradcam_maps, save_overlays

    inputs = torch.stack([torch.from_numpy(p.image)[None] for p in batch]).to(device)  # (B, 1, H, W)
    inputs = inputs.expand(-1, getattr(model, "in_chans", 1), -1, -1)
    predicted = [int(i) for i in predicted]
    maps = gradcam_maps(model, inputs, predicted)
    items = [
        GalleryItem(
            p.image_id, p.image, f"{classes[k]} {prob[j, k]:.2f}", {name: m[j] for name, m in maps.items()}
        )
        for j, (p, k) in enumerate(zip(batch, predicted, strict=True))
    ]
    return len(save_overlays(items, out))


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
    return path


def _is_within(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def predict(
    input_path: str | Path,
    model_uri: str,
    out_dir: str | Path,
    *,
    anonymize: AnonymizeConfig,
    secret: bytes | None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 32,
    device: str = "auto",
    gradcam: bool = False,
    project_root: str | Path = ".",
    on_file: Callable[[int, int], None] | None = None,
    include_paths: bool = False,
) -> PredictSummary:
    """Classify the DICOM files under `input_path`; write the files named in the module docstring to `out_dir`.

    Args:
        input_path: a DICOM file or a folder (walked recursively); opened read-only, never modified.
        model_uri: checkpoint path or MLflow URI (see `resolve_model`).
        out_dir: output folder; must not lie inside `input_path`.
        anonymize: anonymization profile (params `anonymize`).
        secret: the project's anonymization key -> keyed ids equal to ingest's; None -> a key drawn for
            this run only and per-run indices as ids.
        preprocessing: the current params' (`Params.preprocessing("target")`). The model's own, saved in
            its checkpoint, is what is applied; this one is compared with it (differences are logged)
            and used only for a checkpoint that records none (saved by an older bonescan).
        batch_size: images per forward pass.
        device: "auto" (cuda when present), "cpu" or "cuda".
        gradcam: also write Grad-CAM overlays of the predicted class (needs `model.gradcam_layers()`).
        project_root: where the default MLflow store lives.
        on_file: called as `on_file(done, total)` after every file (progress display).
        include_paths: also write each image's path relative to INPUT (raw, unmasked: it may hold
            identifying folder names, so only on request). Every row carries `file_sha256`, the
            digest of the input file's bytes, a stable key to join the outputs to the inputs.

    Raises:
        FileNotFoundError: `input_path` or the model does not exist.
        ValueError: `out_dir` lies inside `input_path`, or the checkpoint records no preprocessing
            and none is given.
    """
    start = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise FileNotFoundError(f"input {input_path} not found")
    root = input_path if input_path.is_dir() else input_path.parent
    if input_path.is_dir() and _is_within(out_dir, input_path):
        raise ValueError(f"output folder {out_dir} lies inside the input {input_path}: inputs are read-only")
    relpaths = list(iter_files(root)) if input_path.is_dir() else [input_path.name]

    torch_device = resolve_device(device, "--device")
    model, record, source = load_model(model_uri, torch_device, project_root)
    classes = list(record.classes)
    used, origin = model_preprocessing(record, preprocessing, model_uri)
    size = used.image_size
    if gradcam and not hasattr(model, "gradcam_layers"):
        log.warning("%s names no Grad-CAM layers: no overlays are written", record.model_name)
        gradcam = False
    key = secret or secrets.token_bytes(32)  # ephemeral key: nothing linkable to ingest's pseudonyms
    anonymizer = Anonymizer(key, anonymize)
    ids = _Ids(keyed=secret is not None)

    out_dir.mkdir(parents=True, exist_ok=True)
    gradcam_dir = out_dir / "gradcam"
    for stale in gradcam_dir.glob("*.png"):  # overlays of an earlier run into the same folder
        stale.unlink()
    summary = PredictSummary(
        model={**asdict(source), "model_name": record.model_name, "image_size": list(size),
               "stage": record.stage, "decision": record.decision.to_dict(),
               "test_time_flip": record.test_time_flip},
        classes=classes,
        ids="keyed" if ids.keyed else "per-run",
        device=str(torch_device),
        preprocessing={"from": origin, **used.model_dump(mode="json")},
    )  # fmt: skip
    rows: list[dict] = []
    pending: list[_Pending] = []
    seen_instances: set[str] = set()  # anonymized SOPInstanceUIDs
    reasons: Counter[str] = Counter()

    def flush() -> None:
        if not pending:
            return
        dataset = _Images([p.image for p in pending], len(classes))
        prob = predict_probabilities(model, dataset, batch_size, torch_device,
                                     test_time_flip=record.test_time_flip)  # (B, K)  # fmt: skip
        predicted = record.decision.predict(prob)
        for p, row, k in zip(pending, prob, predicted, strict=True):
            rows.append({"file_index": p.file_index, "file_sha256": p.file_sha256,
                         **({"path": p.path} if include_paths else {}),
                         "study_id": p.study_id, "image_id": p.image_id,
                         "view": p.view, "predicted": classes[int(k)],
                         **{f"p_{c}": float(v) for c, v in zip(classes, row, strict=True)}})  # fmt: skip
        if gradcam:
            summary.gradcam_overlays += _gradcam(model, pending, prob, predicted, classes, torch_device, gradcam_dir)
        pending.clear()

    with QuarantineWriter(out_dir / "rejected.csv", strict=True, index=True) as rejected:
        for file_index, relpath in enumerate(relpaths):
            result, prepared = prepare_file(root / relpath, relpath, anonymizer, used, root, key)
            if prepared is not None and prepared.sop_uid in seen_instances:
                reason = "duplicate SOPInstanceUID (an earlier file is the same instance)"
                result = FileResult(relpath, code="duplicate", reason=reason, identifying=result.identifying)
                prepared = None  # counted once: a copy must not weigh twice in its study's mean
            rejected.add(result)
            if prepared is None:
                reasons[result.code] += 1
            else:
                seen_instances.add(prepared.sop_uid)
                study_id = ids.study(prepared, file_index)
                image_ids = [ids.image(prepared, view, i) for i, (view, _) in enumerate(prepared.views)]
                digest = _file_sha256(root / relpath)
                shown = PurePosixPath(relpath).as_posix() if include_paths else None
                for image_id, (view, image) in zip(image_ids, prepared.views, strict=True):
                    pending.append(_Pending(file_index, digest, shown, study_id, image_id, view, image))
                if len(pending) >= batch_size:
                    flush()
            if on_file is not None:
                on_file(file_index + 1, len(relpaths))
        flush()

    prob_cols = [f"p_{c}" for c in classes]
    keys = ["file_index", "file_sha256", *(["path"] if include_paths else [])]
    per_image = pd.DataFrame(
        rows, columns=[*keys, "study_id", "image_id", "view", "predicted", *prob_cols]
    )
    tagged = per_image.assign(
        label="", patient_id=""
    )  # aggregate_by_study checks these; nothing to check here
    studies = aggregate_by_study(tagged, classes, record.decision).drop(columns=["label", "patient_id"])
    views = per_image.groupby("study_id", sort=False)["view"].agg(lambda v: "+".join(sorted(v)))
    studies.insert(2, "views", studies["study_id"].map(views))

    summary.files["predictions"] = _write_csv(per_image, out_dir / "predictions.csv").as_posix()
    summary.files["study_predictions"] = _write_csv(studies, out_dir / "study_predictions.csv").as_posix()
    summary.files["rejected"] = (out_dir / "rejected.csv").as_posix()
    if summary.gradcam_overlays:
        summary.files["gradcam"] = gradcam_dir.as_posix()
    summary.files_seen = len(relpaths)
    summary.images = len(per_image)
    summary.studies = len(studies)
    summary.rejected = rejected.rows
    summary.rejected_reasons = dict(sorted(reasons.items()))
    summary.study_predictions = {c: int((studies["predicted"] == c).sum()) for c in classes}
    summary.seconds = round(time.perf_counter() - start, 3)
    summary_path = out_dir / "summary.json"
    summary.files["summary"] = summary_path.as_posix()
    atomic_write_json(summary_path, asdict(summary))
    log.info(
        "predict: %d files -> %d images of %d studies, %d rejected (%s) in %.1f s",
        summary.files_seen, summary.images, summary.studies, summary.rejected, summary.rejected_reasons,
        summary.seconds,
    )  # fmt: skip
    return summary
