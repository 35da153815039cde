"""The MLflow model registry: the classifier as a pyfunc, one version per checkpoint, promotion by alias.

`bonescan promote` registers the evaluated checkpoint as a version of `bonescan-classifier` (a version
per distinct checkpoint: re-running on the same weights reuses it), points `challenger` at it, and
applies `bonescan.promote.decide` against the current `champion`, whose metrics and test-split
fingerprint are read back from its version tags. A promotion moves `champion` and keeps the old one
as `previous-champion`; `rollback` undoes it. Every version carries a model card.

The logged model is self-contained: an MLflow pyfunc whose directory holds the checkpoint at
`artifacts/model.pt` (what `bonescan predict --model models:/...` loads), the bonescan code under
`code/`, a tensor signature, an input example and pinned pip requirements taken from this
environment, so logging never resolves anything over the network. Its input is the training
preprocessing's output, (B, in_chans, H, W) float32 in [0, 1]; its output is one probability column
per class plus `prediction`.

Runs and the registry are reached through one explicit `MlflowClient` (`bonescan.tracking.client`);
the fluent, process-global `mlflow.start_run` state is never used.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from bonescan import tracking
from bonescan.checkpoint import model_digest
from bonescan.config import PromoteConfig
from bonescan.metrics import MACRO_METRICS
from bonescan.promote import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    Decision,
    PromotionRule,
    aliases_after_promotion,
    aliases_after_rollback,
    decide,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "CardSources",
    "Candidate",
    "ClassifierPyfunc",
    "PromotionResult",
    "current_aliases",
    "example_input",
    "find_version",
    "inference_requirements",
    "load_candidate",
    "promote",
    "render_model_card",
    "rollback",
    "save_pyfunc",
    "version_metrics",
]

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "classifier"  # run artifact folder of the pyfunc model (the version's source)
CHECKPOINT_KEY = "checkpoint"  # pyfunc artifact name: the model dir holds artifacts/model.pt
PREDICTION_COLUMN = "prediction"
TAG_DIGEST = "bonescan.checkpoint_digest"
TAG_TEST_SPLIT = "bonescan.test_split"
TAG_DECISION = "bonescan.promotion.decision"
TAG_REASON = "bonescan.promotion.reason"
TAG_REPLACED = "bonescan.replaced_version"  # the champion this version replaced: the next rollback target
TAG_ROLLED_BACK = "bonescan.rolled_back"
EVAL_TAG_PREFIX = "eval."
PARAMS_TAG_PREFIX = "params.clf."
_MAX_TAG_VALUE = 5000  # MLflow's limit for a model version tag value
# What `load_classifier` imports (bonescan.train and its imports), pinned to this environment's
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
    "pylibjpeg-libjpeg",
    "rich",
)


# --------------------------------------------------------------------------- the pyfunc model


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """A bonescan checkpoint served through MLflow: preprocessed images in, class probabilities out.

    The checkpoint (the `checkpoint` artifact) is rebuilt with `bonescan.train.load_classifier`, so
    the served model is exactly the one `evaluate` scored. Inference runs on the CPU in fp32.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from bonescan.train import load_classifier

        self._model, ckpt = load_classifier(context.artifacts[CHECKPOINT_KEY])
        self._classes = list(ckpt["classes"])

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> pd.DataFrame:
        """Softmax probabilities of (B, in_chans, H, W) images -> (B, classes + `prediction`) frame."""
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            prob = torch.softmax(self._model(images).float(), dim=1).numpy().astype(np.float64)  # (B, K)
        out = pd.DataFrame(prob, columns=self._classes)
        out[PREDICTION_COLUMN] = [self._classes[i] for i in prob.argmax(axis=1)]
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
    """Write the checkpoint as an MLflow pyfunc model directory at `dst` (which must not exist).

    The directory holds `artifacts/model.pt`, `code/bonescan/`, MLmodel with a tensor signature
    (float32, (-1, in_chans, H, W)) and an input example, and pinned requirements.
    """
    from mlflow.models import infer_signature

    from bonescan.train import load_classifier

    checkpoint, dst = Path(checkpoint), Path(dst)
    model, ckpt = load_classifier(checkpoint)
    classes = list(ckpt["classes"])
    example = example_input(int(ckpt["in_chans"]), ckpt["image_size"])
    with torch.inference_mode():
        prob = torch.softmax(model(torch.from_numpy(example)).float(), dim=1).numpy().astype(np.float64)
    output = pd.DataFrame(prob, columns=classes)
    output[PREDICTION_COLUMN] = [classes[i] for i in prob.argmax(axis=1)]
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


# --------------------------------------------------------------------------- the candidate


@dataclass(frozen=True)
class Candidate:
    """The evaluated checkpoint `promote` registers.

    Attributes:
        checkpoint: path of model.pt.
        digest: `model_digest` of its weights and input contract (one registered version per digest;
            a re-run that trains the same weights reuses the version).
        metrics: flat test metrics (evaluate's metrics file).
        test_split: fingerprint of the scored test images; scores compare only on equal fingerprints.
        summary: evaluate's summary (unit, counts, CI coverage), {} when absent.
        checkpoint_meta: the checkpoint's metadata without the weights (model_name, classes, config, ...).
    """

    checkpoint: Path
    digest: str
    metrics: dict[str, float | None]
    test_split: str
    summary: dict[str, Any]
    checkpoint_meta: dict[str, Any]


def load_candidate(cfg: PromoteConfig, root: str | Path = ".") -> Candidate:
    """Read the checkpoint, its test metrics and its test-split fingerprint.

    Raises:
        FileNotFoundError: the checkpoint or the metrics file is missing.
        ValueError: no test-split fingerprint (neither in the metrics nor in the evaluate summary).
    """
    from bonescan.checkpoint import load_checkpoint

    root = Path(root)
    checkpoint, metrics_file, summary_file = (
        root / p for p in (cfg.model_file, cfg.metrics_file, cfg.eval_summary)
    )
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: no test metrics; run `bonescan evaluate` first")
    metrics = json.loads(metrics_file.read_text())
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    test_split = metrics.pop("fingerprint", None) or summary.get("fingerprint")
    if not test_split:
        raise ValueError(
            f"no test-split fingerprint in {metrics_file} or {summary_file}: scores cannot be compared "
            "with the champion's; re-run `bonescan evaluate`"
        )
    meta = load_checkpoint(checkpoint)
    digest = model_digest(meta)
    meta.pop("model", None)
    meta.pop("history", None)
    metrics = {k: v for k, v in metrics.items() if v is None or isinstance(v, int | float)}
    return Candidate(checkpoint, digest, metrics, str(test_split), summary, meta)


# --------------------------------------------------------------------------- registry reads


def current_aliases(mlflow: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of the registered model; {} when it does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def find_version(mlflow: MlflowClient, name: str, digest: str) -> ModelVersion | None:
    """The version registered for the checkpoint with this digest (the earliest if several)."""
    same = [v for v in mlflow.search_model_versions(f"name = '{name}'") if v.tags.get(TAG_DIGEST) == digest]
    return min(same, key=lambda v: int(v.version)) if same else None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def version_metrics(
    mlflow: MlflowClient, version: ModelVersion
) -> tuple[dict[str, float | None], str | None]:
    """A version's test metrics and test-split fingerprint: its `eval.*` tags, else its run's metrics.

    A version registered by hand, without bonescan's tags, falls back to the metrics and the
    `bonescan.eval.fingerprint` tag of the run that logged it (the evaluate stage's tags).
    """
    tags = version.tags or {}
    metrics = {
        k.removeprefix(EVAL_TAG_PREFIX): _number(v) for k, v in tags.items() if k.startswith(EVAL_TAG_PREFIX)
    }
    split = tags.get(TAG_TEST_SPLIT)
    if (not metrics or split is None) and version.run_id:
        run = mlflow.get_run(version.run_id)
        metrics = metrics or dict(run.data.metrics)
        split = split or run.data.tags.get("bonescan.eval.fingerprint")
    return metrics, split


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class CardSources:
    """Optional reports the model card summarises (missing files are left out of the card).

    Attributes:
        manifest: the target dataset's manifest (counts per split and class; no identifier is copied).
        phi_scan: ingest's residual-PHI scan of the anonymized files.
        gan_quality: the GAN quality report (which classes' synthetic images were admitted).
        confusion_png: evaluate's confusion matrix, logged next to the card.
    """

    manifest: Path | None = None
    phi_scan: Path | None = None
    gan_quality: Path | None = None
    confusion_png: Path | None = None

    def under(self, root: Path) -> CardSources:
        """Relative paths taken relative to `root` (the project), like the paths of PromoteConfig."""
        return CardSources(*(None if p is None else root / p for p in astuple(self)))


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` / `rollback` decided and did (reports/promotion.json).

    Attributes:
        action: "promote" (the version became champion), "keep" (it did not), or "rollback".
        promoted: whether `champion` moved to `version`.
        reason: the rule's reason, in words.
        registered_model: the registered model name.
        version: the candidate's version (None in a dry run that would register a new one).
        new_version: whether this run registered the version (False: reused for the same checkpoint).
        champion_before: the champion's version before this run.
        aliases_before: alias -> version before the run.
        aliases_after: alias -> version after the run (equal to aliases_before in a dry run).
        primary_metric: the metric the rule compares.
        challenger_value: the candidate's primary metric.
        champion_value: the champion's primary metric (None without a champion).
        test_split: the candidate's test-split fingerprint.
        checkpoint_digest: `model_digest` of the candidate checkpoint.
        run_id: the MLflow run that recorded the decision (None in a dry run).
        dry_run: nothing was written.
    """

    action: str
    promoted: bool
    reason: str
    registered_model: str
    version: str | None
    new_version: bool = False
    champion_before: str | None = None
    aliases_before: dict[str, str] = field(default_factory=dict)
    aliases_after: dict[str, str] = field(default_factory=dict)
    primary_metric: str = ""
    challenger_value: float | None = None
    champion_value: float | None = None
    test_split: str | None = None
    checkpoint_digest: str | None = None
    run_id: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rule(cfg: PromoteConfig, primary_metric: str) -> PromotionRule:
    return PromotionRule(primary_metric, cfg.min_improvement, cfg.min_class_recall)


def _decide(
    mlflow: MlflowClient,
    cfg: PromoteConfig,
    primary_metric: str,
    candidate: Candidate,
    version: ModelVersion | None,
    aliases: Mapping[str, str],
) -> tuple[Decision, float | None]:
    """The rule, plus the two cases it cannot see: the version is already champion, or was rolled back."""
    champion = aliases.get(CHAMPION)
    if version is not None and champion == str(version.version):
        return Decision(False, f"version {version.version} is already the champion"), candidate.metrics.get(
            primary_metric
        )
    if version is not None and (version.tags or {}).get(TAG_ROLLED_BACK):
        return Decision(False, f"version {version.version} was rolled back; it is not promoted again"), None
    if champion is None:
        return decide(
            candidate.metrics, None, _rule(cfg, primary_metric), challenger_test_split=candidate.test_split
        ), None
    metrics, split = version_metrics(mlflow, mlflow.get_model_version(cfg.registered_model, champion))
    decision = decide(
        candidate.metrics,
        metrics,
        _rule(cfg, primary_metric),
        challenger_test_split=candidate.test_split,
        champion_test_split=split,
    )
    return decision, metrics.get(primary_metric)


def _version_tags(candidate: Candidate, project_root: Path) -> dict[str, str]:
    tags = {
        TAG_DIGEST: candidate.digest,
        TAG_TEST_SPLIT: candidate.test_split,
        "git_commit": tracking.git_commit(project_root),
        "dvc_lock_sha256": tracking.dvc_lock_hash(project_root),
        "model_name": str(candidate.checkpoint_meta.get("model_name", "")),
        "classes": json.dumps(list(candidate.checkpoint_meta.get("classes", []))),
        "image_size": json.dumps(list(candidate.checkpoint_meta.get("image_size", []))),
    }
    tags.update(_eval_tags(candidate.metrics))
    config = candidate.checkpoint_meta.get("config") or {}
    tags.update({f"{PARAMS_TAG_PREFIX}{k}": v[:_MAX_TAG_VALUE] for k, v in tracking.flatten(config).items()})
    return tags


def _eval_tags(metrics: Mapping[str, float | None]) -> dict[str, str]:
    return {f"{EVAL_TAG_PREFIX}{k}": "nan" if v is None else repr(float(v)) for k, v in metrics.items()}


def _apply_aliases(
    mlflow: MlflowClient, name: str, before: Mapping[str, str], after: Mapping[str, str]
) -> None:
    for alias in before.keys() - after.keys():
        mlflow.delete_registered_model_alias(name, alias)
    for alias, version in after.items():
        if before.get(alias) != version:
            mlflow.set_registered_model_alias(name, alias, version)


def _register(
    mlflow: MlflowClient,
    run: tracking.RunHandle,
    cfg: PromoteConfig,
    candidate: Candidate,
    project_root: Path,
) -> ModelVersion:
    """Log the pyfunc model under `run` and register it as a new version."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(cfg.registered_model)
    except MlflowException:
        mlflow.create_registered_model(
            cfg.registered_model,
            description="bonescan classifier of whole-body bone scintigraphy "
            "(research use only, not diagnosis). "
            f"Aliases: {CHAMPION}, {CHALLENGER}, {PREVIOUS_CHAMPION}.",
        )
    with tempfile.TemporaryDirectory(prefix="bonescan-pyfunc-") as tmp:
        tic = time.perf_counter()
        local = save_pyfunc(candidate.checkpoint, Path(tmp) / "model")
        run.log_artifact(local, MODEL_ARTIFACT_PATH)
        log.info("logged the pyfunc model to run %s in %.1f s", run.run_id, time.perf_counter() - tic)
    source = f"{mlflow.get_run(run.run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    return mlflow.create_model_version(
        cfg.registered_model, source, run_id=run.run_id, tags=_version_tags(candidate, project_root)
    )


def promote(
    cfg: PromoteConfig,
    primary_metric: str,
    project_root: str | Path = ".",
    *,
    dry_run: bool = False,
    sources: CardSources | None = None,
) -> PromotionResult:
    """Register the evaluated checkpoint as `challenger` and promote it to `champion` if the rule says so.

    Re-running on the same checkpoint reuses its version (its `eval.*` tags are refreshed from the
    metrics file). The champion's metrics come from its version tags; a version that was rolled back
    is never promoted again. The decision is tagged on the version and on a `promote` stage run (a
    child of $BONESCAN_MLFLOW_PARENT_RUN when set), and written to `cfg.report`; the model card to
    `cfg.model_card` and next to the version's model.

    Args:
        cfg: the promote section of params.
        primary_metric: evaluate.primary_metric, the number models are ranked by.
        project_root: paths in `cfg` are relative to it; its mlflow.db is the default store.
        dry_run: decide and return, changing nothing (no version, alias, run or file is written).
        sources: reports the model card summarises.
    """
    root = Path(project_root)
    sources = (sources or CardSources()).under(root)
    candidate = load_candidate(cfg, root)
    mlflow = tracking.client(root)
    name = cfg.registered_model
    aliases = current_aliases(mlflow, name)
    existing = find_version(mlflow, name, candidate.digest)
    common = dict(
        registered_model=name,
        champion_before=aliases.get(CHAMPION),
        aliases_before=dict(aliases),
        primary_metric=primary_metric,
        challenger_value=candidate.metrics.get(primary_metric),
        test_split=candidate.test_split,
        checkpoint_digest=candidate.digest,
    )
    if dry_run:
        decision, champion_value = _decide(mlflow, cfg, primary_metric, candidate, existing, aliases)
        log.info("dry run: %s", decision.reason)
        return PromotionResult(
            "promote" if decision.promote else "keep", decision.promote, decision.reason,
            version=str(existing.version) if existing else None, new_version=existing is None,
            aliases_after=dict(sorted(aliases.items())), champion_value=champion_value, dry_run=True,
            **common,
        )  # fmt: skip

    with tracking.stage_run("promote", root) as run:
        run.log_params(
            {"promote": cfg.model_dump(mode="json"), "evaluate": {"primary_metric": primary_metric}}
        )
        run.log_metrics({k: v for k, v in candidate.metrics.items() if v is not None})
        if existing is None:
            version = _register(mlflow, run, cfg, candidate, root)
        else:
            version = existing
            for key, value in _eval_tags(candidate.metrics).items():
                if (version.tags or {}).get(key) != value:
                    mlflow.set_model_version_tag(name, version.version, key, value)
            mlflow.set_model_version_tag(name, version.version, TAG_TEST_SPLIT, candidate.test_split)
            log.info(
                "checkpoint %s is already version %s; reusing it", candidate.digest[:12], version.version
            )
        number = str(version.version)
        decision, champion_value = _decide(mlflow, cfg, primary_metric, candidate, version, aliases)
        after = {**aliases, CHALLENGER: number}
        if decision.promote:
            after = aliases_after_promotion(after, number)
            if aliases.get(CHAMPION):
                mlflow.set_model_version_tag(name, number, TAG_REPLACED, aliases[CHAMPION])
        _apply_aliases(mlflow, name, aliases, after)
        action = "promote" if decision.promote else "keep"
        for key, value in ((TAG_DECISION, action), (TAG_REASON, decision.reason[:_MAX_TAG_VALUE])):
            mlflow.set_model_version_tag(name, number, key, value)
        run.set_tags({TAG_DECISION: action, TAG_REASON: decision.reason,
                      "bonescan.registered_version": number,
                      TAG_DIGEST: candidate.digest, TAG_TEST_SPLIT: candidate.test_split})  # fmt: skip
        result = PromotionResult(
            action, decision.promote, decision.reason, version=number, new_version=existing is None,
            aliases_after=dict(sorted(after.items())), champion_value=champion_value, run_id=run.run_id,
            **common,
        )  # fmt: skip
        _write_card(mlflow, run, version, candidate, result, cfg, sources, root / cfg.model_card)
        mlflow.update_model_version(name, number, description=_card_summary(result, candidate))
    _write_report(result, root / cfg.report)
    log.info("%s version %s: %s", action, number, decision.reason)
    return result


def rollback(cfg: PromoteConfig, project_root: str | Path = ".") -> PromotionResult:
    """Make `previous-champion` the champion again; the demoted version is tagged as rolled back.

    `previous-champion` then points at the champion the restored version had itself replaced (so a
    second rollback goes one step further back), or is removed when there is none.

    Raises:
        ValueError: there is no previous champion.
    """
    root = Path(project_root)
    mlflow = tracking.client(root)
    name = cfg.registered_model
    aliases = current_aliases(mlflow, name)
    previous = aliases.get(PREVIOUS_CHAMPION)
    if previous is None:
        raise ValueError(
            f"{name} has no {PREVIOUS_CHAMPION!r} version to roll back to (aliases: {aliases or 'none'})"
        )
    restored = mlflow.get_model_version(name, previous)
    earlier = (restored.tags or {}).get(TAG_REPLACED)
    if earlier is not None and not _exists(mlflow, name, earlier):
        earlier = None  # deleted since
    after = aliases_after_rollback(aliases, earlier)
    demoted = aliases.get(CHAMPION)
    reason = f"rolled back: version {previous} is champion again" + (
        f", version {demoted} demoted" if demoted else ""
    )
    with tracking.stage_run("promote", root) as run:
        if demoted:
            mlflow.set_model_version_tag(name, demoted, TAG_ROLLED_BACK, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            mlflow.set_model_version_tag(name, demoted, TAG_DECISION, "rollback")
            mlflow.set_model_version_tag(name, demoted, TAG_REASON, reason)
        _apply_aliases(mlflow, name, aliases, after)
        run.set_tags({TAG_DECISION: "rollback", TAG_REASON: reason, "bonescan.registered_version": previous})
    tags = restored.tags or {}
    result = PromotionResult(
        "rollback", True, reason, name, previous, champion_before=demoted, aliases_before=dict(aliases),
        aliases_after=dict(sorted(after.items())), test_split=tags.get(TAG_TEST_SPLIT),
        checkpoint_digest=tags.get(TAG_DIGEST), run_id=run.run_id,
    )  # fmt: skip
    _write_report(result, root / cfg.report)
    log.info("%s", reason)
    return result


def _exists(mlflow: MlflowClient, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def _write_report(result: PromotionResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _write_card(
    mlflow: MlflowClient,
    run: tracking.RunHandle,
    version: ModelVersion,
    candidate: Candidate,
    result: PromotionResult,
    cfg: PromoteConfig,
    sources: CardSources,
    path: Path,
) -> None:
    """The card as a file, on this run, and next to the version's model (refreshed on every decision)."""
    png = sources.confusion_png if sources.confusion_png and sources.confusion_png.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    local_link = Path(os.path.relpath(png.resolve(), path.parent.resolve())).as_posix() if png else None
    path.write_text(render_model_card(candidate, result, cfg, sources, confusion_link=local_link))
    with tempfile.TemporaryDirectory(prefix="bonescan-card-") as tmp:
        named = Path(tmp) / "model_card.md"  # the same name whatever cfg.model_card is called
        named.write_text(render_model_card(candidate, result, cfg, sources, confusion_link=png and png.name))
        for file in [named, png] if png else [named]:
            if version.run_id:  # next to the model: downloaded with it
                mlflow.log_artifact(version.run_id, str(file), f"{MODEL_ARTIFACT_PATH}/model_card")
            if version.run_id != run.run_id:  # and on the run that took this decision
                run.log_artifact(file, "model_card")


def _card_summary(result: PromotionResult, candidate: Candidate) -> str:
    value = result.challenger_value
    shown = "n/a" if value is None else f"{value:.3f}"
    low, high = (candidate.metrics.get(f"{result.primary_metric}_ci_{s}") for s in ("low", "high"))
    ci = f" ({low:.3f} - {high:.3f})" if isinstance(low, float) and isinstance(high, float) else ""
    return (
        f"{candidate.checkpoint_meta.get('model_name', 'classifier')}: {result.primary_metric} {shown}{ci} "
        f"on test split {result.test_split}. Decision: {result.action} ({result.reason}). "
        "Research use only, not diagnosis; "
        f"see model_card/model_card.md."
    )


# --------------------------------------------------------------------------- the model card


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _read_json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; left out of the model card", path.name)
        return None


def _data_section(manifest: Path | None, classes: Sequence[str]) -> list[str]:
    if manifest is None or not manifest.is_file():
        return ["Data counts unavailable (no manifest at the configured path)."]
    frame = pd.read_csv(manifest, usecols=lambda c: c in {"label", "split", "synthetic", "patient_id"})
    if "synthetic" in frame:
        frame = frame[~frame["synthetic"].astype(str).str.lower().isin({"true", "1"})]
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    counts = counts.reindex(
        columns=[c for c in classes if c in counts.columns] + sorted(set(counts.columns) - set(classes))
    )
    splits = [s for s in ("train", "val", "test") if s in counts.index] + sorted(
        set(counts.index) - {"train", "val", "test"}
    )
    lines = [
        "Real images per split and class (anonymized, ingested; synthetic and augmented images excluded):",
        "",
    ]
    lines += ["| split | " + " | ".join(counts.columns) + " | images | patients |",
              "|---" * (len(counts.columns) + 3) + "|"]  # fmt: skip
    patients = frame.groupby("split")["patient_id"].nunique() if "patient_id" in frame else {}
    for split in splits:
        row = counts.loc[split]
        lines.append(f"| {split} | " + " | ".join(str(int(row[c])) for c in counts.columns)
                     + f" | {int(row.sum())} | {int(patients.get(split, 0))} |")  # fmt: skip
    return lines


def _gan_section(report: dict | None) -> list[str]:
    if not report:
        return []
    lines = [
        "",
        "Synthetic oversampling (GAN quality gate; admitted classes' images were added to training):",
        "",
    ]
    lines += ["| arch | class | fidelity | diversity SSIM | admitted |", "|---|---|---|---|---|"]
    for arch, values in (report.get("archs") or {}).items():
        for name, c in (values.get("classes") or {}).items():
            lines.append(f"| {arch} | {name} | {_fmt(c.get('fidelity'))} | {_fmt(c.get('diversity_ssim'))} | "
                         f"{'yes' if c.get('admitted') else 'no'} |")  # fmt: skip
    return lines


def _preprocessing_line(recorded: dict | None) -> list[str]:
    if not recorded:
        return ["- Preprocessing: not recorded in this checkpoint (`bonescan predict` applies params.yaml's)"]
    ingest = recorded.get("ingest", {})
    views = "anterior + posterior views" if recorded.get("split_views") else "one view per file"
    return [
        f"- Preprocessing (saved in the checkpoint, repeated by `bonescan predict`): modalities "
        f"{', '.join(recorded.get('modalities', []))}, {views}, body crop at {ingest.get('crop_threshold')} of "
        f"the robust maximum with margin {ingest.get('crop_margin')}, posterior mirrored: "
        f"{ingest.get('mirror_posterior')}, counts saturated at percentile {ingest.get('intensity_percentile')}"
    ]


def render_model_card(
    candidate: Candidate,
    result: PromotionResult,
    cfg: PromoteConfig,
    sources: CardSources | None = None,
    *,
    confusion_link: str | None = None,
) -> str:
    """Markdown model card of one registered version: use, data, metrics with CIs, decision, config, limits.

    Only counts, metrics and configuration appear; no identifier, path of a patient's file or image.

    Args:
        candidate: the registered checkpoint and its test metrics.
        result: the decision taken on it.
        cfg: the promotion rule's settings.
        sources: reports summarised in the data section.
        confusion_link: relative link to the confusion-matrix PNG, shown as an image when given.
    """
    sources = sources or CardSources()
    meta, metrics, summary = candidate.checkpoint_meta, candidate.metrics, candidate.summary
    classes = list(meta.get("classes", []))
    size = meta.get("image_size", ["?", "?"])
    ci = summary.get("ci")
    ci_text = f"{round(100 * ci)} %" if isinstance(ci, float) else "bootstrap"
    aliases = ", ".join(f"{a} = v{v}" for a, v in result.aliases_after.items())
    lines = [
        f"# Model card: {result.registered_model} version {result.version}",
        "",
        f"- Model: `{meta.get('model_name', '?')}`, {len(classes)} classes ({', '.join(classes)}), input "
        f"{meta.get('in_chans', '?')} x {size[0]} x {size[1]} (channels x height x width), float32 in [0, 1]",
        *_preprocessing_line(meta.get("preprocessing")),
        f"- Model digest (blake2b of weights and input contract): `{candidate.digest}`; MLflow run "
        f"`{result.run_id}`",
        f"- Aliases after this decision: {aliases or 'none'}",
        "",
        "## Intended use",
        "",
        "Research on automated classification of whole-body bone scintigraphy (healthy / metastasis / benign "
        "change) and on oversampling and transfer learning for small, imbalanced medical image sets. **Not a "
        "medical device and not for diagnosis**: outputs must not inform the care of a patient. Inputs are "
        "anterior/posterior whole-body views preprocessed exactly as in training (`bonescan predict`).",
        "",
        "## Data",
        "",
        *_data_section(sources.manifest, classes),
    ]
    phi = _read_json(sources.phi_scan)
    if phi is not None:
        lines += ["", "Anonymization: DICOM PS3.15 Annex E Basic Profile with retained longitudinal "
                      "information "
                      f"(modified dates); the residual-PHI scan found {phi.get('leaks', 'n/a')} leak(s) in "
                      f"{phi.get('files', 'n/a')} anonymized file(s)."]  # fmt: skip
    lines += _gan_section(_read_json(sources.gan_quality))
    unit = summary.get("unit", "unit")
    lines += [
        "",
        "## Evaluation",
        "",
        f"Test split `{candidate.test_split}` (fingerprint of its image ids and labels): "
        f"{_fmt(summary.get('n_units', metrics.get('n_units')))} {unit} unit(s) of "
        f"{_fmt(summary.get('n_patients', metrics.get('n_patients')))} patients; {ci_text} intervals from "
        f"{_fmt(summary.get('n_boot', metrics.get('n_boot')))} patient-level bootstrap resamples.",
        "",
        f"| metric | value | {ci_text} CI |",
        "|---|---|---|",
    ]
    for name in MACRO_METRICS:
        if name in metrics:
            lines.append(f"| {name} | {_fmt(metrics[name])} | {_fmt(metrics.get(f'{name}_ci_low'))} - "
                         f"{_fmt(metrics.get(f'{name}_ci_high'))} |")  # fmt: skip
    lines += ["", "| class | precision | recall | f1 |", "|---|---|---|---|"]
    for name in classes:
        cells = [
            f"{_fmt(metrics.get(f'{m}_{name}'))} ({_fmt(metrics.get(f'{m}_{name}_ci_low'))} - "
            f"{_fmt(metrics.get(f'{m}_{name}_ci_high'))})"
            for m in ("precision", "recall", "f1")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if confusion_link:
        lines += ["", f"![confusion matrix]({confusion_link})"]
    lines += [
        "",
        "## Promotion decision",
        "",
        f"- Decision: **{result.action}**: {result.reason}",
        f"- Rule: {result.primary_metric} must beat the champion by at least {cfg.min_improvement} on the "
        "same "
        f"test split, and every class recall must reach {cfg.min_class_recall}.",
        f"- Champion before: {('version ' + result.champion_before) if result.champion_before else 'none'}"
        + (
            f" ({result.primary_metric} {_fmt(result.champion_value)})"
            if result.champion_value is not None
            else ""
        ),
        "",
        "## Training configuration",
        "",
        "| key | value |",
        "|---|---|",
        *[
            f"| {k} | {v} |"
            for k, v in tracking.flatten(meta.get("config") or {}).items()
            if not k.endswith("_dir")
        ],
        "",
        "## Limitations",
        "",
        "- Small test set: the intervals above are wide; differences between versions inside them are not "
        "evidence.",
        "- Trained and tested on one data source; performance on other cameras, protocols, tracers or "
        "populations is unknown. The embedded demo data are synthetic phantoms, not patients.",
        "- Training data may include GAN-generated images; their realism is judged only by the quality gate "
        "above.",
        "- Probabilities are not calibrated; Grad-CAM maps show what drove a score, not where a lesion is.",
        "- Single-label classification per study: co-existing findings and other diseases are out of scope.",
    ]
    return "\n".join(lines) + "\n"
