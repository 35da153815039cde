"""The promote stage: register the evaluated classifier in MLflow and move aliases by the rule.

`bonescan promote` logs the evaluated classifier file as an MLflow LoggedModel (the pyfunc of
`pyfunc.py`, with the training config as its params and the test metrics as its metrics, linked to
the test split recorded as the run's `mlflow.data` input) and registers it as a version of
`bonescan-classifier` (a version per distinct model digest: re-running on the same weights reuses it
and refreshes its metrics), points `challenger` at it, and applies
`bonescan.model_registry.rules.decide` against the current `champion`, whose metrics are read back
from its logged model and its test-split fingerprint from its version tag. A promotion moves
`champion` and keeps the old one as `previous-champion`; `rollback` undoes it. Every version carries
a model card. A version keeps a handful of tags (digest, test split, classes, the decision); the rest
lives on the logged model, where the MLflow UI shows params and metrics as such.

Runs and the registry are reached through one explicit `MlflowClient` (`bonescan.tracking.client`);
the fluent, process-global `mlflow.start_run` state is never used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bonescan import classifier_file, tracking
from bonescan.classifier_file import DecisionRule
from bonescan.config import PromoteConfig
from bonescan.data.dataset import load_split
from bonescan.metrics import PairedDifference, paired_bootstrap_difference
from bonescan.model_registry.card import CardSources, card_summary, render_model_card
from bonescan.model_registry.pyfunc import MODEL_ARTIFACT_PATH, save_pyfunc
from bonescan.model_registry.rules import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    Decision,
    PromotionRule,
    aliases_after_promotion,
    aliases_after_rollback,
    decide,
)
from bonescan.runtime import atomic_write_json

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.entities import LoggedModel, Metric
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "Candidate",
    "PromotionResult",
    "current_aliases",
    "find_version",
    "load_candidate",
    "logged_model_id",
    "promote",
    "rollback",
    "version_metrics",
]

log = logging.getLogger(__name__)

TAG_DIGEST = "bonescan.checkpoint_digest"
TAG_TEST_SPLIT = "bonescan.test_split"
TAG_DECISION = "bonescan.promotion.decision"
TAG_REASON = "bonescan.promotion.reason"
TAG_REPLACED = "bonescan.replaced_version"  # the champion this version replaced: the next rollback target
TAG_ROLLED_BACK = "bonescan.rolled_back"
TAG_CLASSES = "classes"
EVAL_TAG_PREFIX = "eval."  # test metrics as version tags: versions registered before logged models
TEST_SPLIT_COLUMNS = ("image_id", "patient_id", "study_id", "view", "label")  # pseudonyms and labels only
_MAX_TAG_VALUE = 5000  # MLflow's limit for a model version tag value

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


def load_candidate(
    checkpoint: str | Path, metrics_file: str | Path, summary_file: str | Path, root: str | Path = "."
) -> Candidate:
    """Read the classifier file, its test metrics and its test-split fingerprint.

    Args:
        checkpoint: the fine-tuned classifier file (`promote.model_file`).
        metrics_file: evaluate's flat test metrics (`promote.metrics_file`).
        summary_file: evaluate's summary (`promote.eval_summary`), which names the model it scored.
        root: the paths above are relative to it.

    Raises:
        FileNotFoundError: the classifier file or the metrics file is missing.
        ValueError: no test-split fingerprint, or the metrics were computed for another model than
            the classifier file on disk (evaluate did not run after the last training).
    """
    root = Path(root)
    checkpoint, metrics_file, summary_file = (
        root / Path(p) for p in (checkpoint, metrics_file, summary_file)
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
    record = classifier_file.read(checkpoint)
    digest = classifier_file.model_digest(record)
    scored = summary.get("model_digest")
    if scored != digest:
        found = f"model {scored[:12]}" if scored else "no model digest (written by an older bonescan)"
        raise ValueError(
            f"{summary_file} records the test metrics of {found}, but {checkpoint} is model {digest[:12]}: "
            "these metrics were not computed for this model; run `bonescan evaluate` first (`dvc repro evaluate`)"
        )
    metrics = {k: v for k, v in metrics.items() if v is None or isinstance(v, int | float)}
    return Candidate(checkpoint, digest, metrics, str(test_split), summary, record.summary())


# --------------------------------------------------------------------------- registry reads


def _not_found(exc: Exception) -> bool:
    """Whether an MLflow error says "does not exist" (any other error is a fault of the store)."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def current_aliases(mlflow: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of the registered model; {} only when the model does not exist yet.

    Raises:
        MlflowException: any other error of the store (locked database, unreachable server): an
            unreadable registry must never read as "no champion yet".
    """
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return {}
        raise
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


def _latest(metrics: Sequence[Metric]) -> dict[str, float | None]:
    """The last value of each metric (a re-run on the same weights logs its metrics again)."""
    latest: dict[str, Metric] = {}
    for metric in sorted(metrics, key=lambda m: (m.timestamp, m.step)):
        latest[metric.key] = metric
    return {k: _number(m.value) for k, m in latest.items()}


def version_metrics(
    mlflow: MlflowClient, version: ModelVersion
) -> tuple[dict[str, float | None], str | None]:
    """A version's test metrics and test-split fingerprint.

    The metrics are those of its logged model (the latest value of each); a version registered before
    bonescan logged models has them as `eval.*` tags, and one registered by hand falls back to the
    metrics and the `bonescan.eval.fingerprint` tag of the run that logged it (the evaluate stage's tags).
    """
    tags = version.tags or {}
    metrics: dict[str, float | None] = {}
    model_id = logged_model_id(mlflow, version)
    if model_id:
        metrics = _latest(mlflow.get_logged_model(model_id).metrics or [])
    metrics = metrics or {
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
    return PromotionRule(
        primary_metric, cfg.min_improvement, cfg.min_class_recall, paired=cfg.paired_bootstrap
    )


# --------------------------------------------------------------------------- paired comparison

PREDICTIONS_ARTIFACT = "evaluation/unit_predictions.csv"  # on the run that registered a version


def decision_scores(
    predictions: pd.DataFrame, unit: str, classes: Sequence[str], decision: DecisionRule
) -> pd.DataFrame:
    """Per unit: id, label and `q_<class>` = the decision rule's scores, whose argmax is the model's decision.

    What a version keeps of its test predictions, so a later challenger is compared with the
    champion's decisions on the same studies without loading the champion's weights.

    Args:
        unit: the id column of the rows ("study_id" or "image_id", as evaluate scored them).
    """
    prob = predictions[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
    out = predictions[[unit, "label"]].rename(columns={unit: "unit_id"}).reset_index(drop=True)
    out[[f"q_{c}" for c in classes]] = decision.scores(prob)
    return out


def _candidate_scores(candidate: Candidate, eval_summary: Path) -> pd.DataFrame | None:
    """The challenger's `decision_scores` from evaluate's per-unit predictions, if evaluate wrote them."""
    by_study = str(candidate.summary.get("unit", "study")) == "study"
    path = eval_summary.parent / ("study_predictions.csv" if by_study else "predictions.csv")
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype={"study_id": str, "image_id": str})
    meta = candidate.checkpoint_meta  # read once by load_candidate
    return decision_scores(frame, "study_id" if by_study else "image_id", meta["classes"],
                           DecisionRule.from_dict(meta.get("decision")))  # fmt: skip


def _champion_scores(mlflow: MlflowClient, version: ModelVersion) -> pd.DataFrame | None:
    """The champion's stored decision scores, or None (registered by an older bonescan, or unreadable)."""
    from mlflow.exceptions import MlflowException

    if not version.run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="bonescan-champion-") as tmp:
        try:
            local = mlflow.download_artifacts(version.run_id, PREDICTIONS_ARTIFACT, tmp)
            return pd.read_csv(local, dtype={"unit_id": str})
        except (MlflowException, OSError, ValueError) as exc:
            log.info("champion version %s has no stored test predictions (%s): margin rule only",
                     version.version, type(exc).__name__)  # fmt: skip
            return None


def paired_difference(
    challenger: pd.DataFrame,
    champion: pd.DataFrame,
    patients: Mapping[str, str],
    classes: Sequence[str],
    metric: str,
    n_boot: int,
) -> PairedDifference | None:
    """The paired bootstrap difference on the units both scored, resampling patients; None if they differ."""
    if set(challenger["unit_id"]) != set(champion["unit_id"]) or not len(challenger):
        return None
    both = challenger.merge(champion, on="unit_id", suffixes=("", "_champion"))
    if (both["label"] != both["label_champion"]).any():
        return None
    columns = [f"q_{c}" for c in classes]
    groups = [patients.get(u, u) for u in both["unit_id"]]  # a unit without a known patient is its own
    y = np.array([list(classes).index(label) for label in both["label"]])
    return paired_bootstrap_difference(
        y,
        both[columns].to_numpy(),
        both[[f"{c}_champion" for c in columns]].to_numpy(),
        groups,
        classes,
        metric,
        n_boot=n_boot,
        seed=0,
    )


def _unit_patients(candidate: Candidate, manifest: Path | None) -> dict[str, str]:
    """Unit id -> pseudonymous patient id, from the manifest's rows of the scored split."""
    if manifest is None or not manifest.is_file():
        return {}
    rows = load_split(manifest, str(candidate.summary.get("split", "test")), include_synthetic=False)
    unit = "study_id" if str(candidate.summary.get("unit", "study")) == "study" else "image_id"
    return dict(zip(rows[unit].astype(str), rows["patient_id"].astype(str), strict=True))


def _decide(
    mlflow: MlflowClient,
    cfg: PromoteConfig,
    primary_metric: str,
    candidate: Candidate,
    version: ModelVersion | None,
    aliases: Mapping[str, str],
    scores: pd.DataFrame | None = None,
    patients: Mapping[str, str] | None = None,
) -> tuple[Decision, float | None]:
    """The rule, plus the two cases it cannot see: the version is already champion, or was rolled back.

    `scores` are the challenger's `decision_scores` and `patients` their units' patients: with the
    champion's stored scores they give the paired bootstrap difference the rule decides by.
    """
    patients = patients or {}
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
    champion_version = mlflow.get_model_version(cfg.registered_model, champion)
    metrics, split = version_metrics(mlflow, champion_version)
    difference = None
    if cfg.paired_bootstrap and split == candidate.test_split and scores is not None:
        stored = _champion_scores(mlflow, champion_version)
        if stored is not None:
            classes = list(candidate.checkpoint_meta.get("classes", []))
            difference = paired_difference(scores, stored, patients, classes, primary_metric, cfg.n_boot)
    decision = decide(
        candidate.metrics,
        metrics,
        _rule(cfg, primary_metric),
        challenger_test_split=candidate.test_split,
        champion_test_split=split,
        difference=difference,
    )
    if cfg.paired_bootstrap and difference is None and decision.promote:
        decision = Decision(True, decision.reason + " (margin rule: no paired predictions of the champion)")
    return decision, metrics.get(primary_metric)


def _version_tags(candidate: Candidate) -> dict[str, str]:
    """What the registry page shows per version: the weights, the split they were scored on, the classes."""
    return {
        TAG_DIGEST: candidate.digest,
        TAG_TEST_SPLIT: candidate.test_split,
        TAG_CLASSES: json.dumps(list(candidate.checkpoint_meta.get("classes", []))),
    }


def _model_params(candidate: Candidate) -> dict[str, str]:
    """The logged model's params: the architecture, its input and the training config (`clf.*`)."""
    meta = candidate.checkpoint_meta
    params = {
        "model_name": str(meta.get("model_name", "")),
        "classes": json.dumps(list(meta.get("classes", []))),
        "image_size": json.dumps(list(meta.get("image_size", []))),
        "in_chans": str(meta.get("in_chans", "")),
    }
    return params | tracking.flatten(meta.get("config") or {}, "clf.")


def _model_tags(candidate: Candidate, project_root: Path) -> dict[str, str]:
    return {TAG_DIGEST: candidate.digest, TAG_TEST_SPLIT: candidate.test_split,
            **tracking.code_version_tags(project_root)}  # fmt: skip


def _test_split(candidate: Candidate, manifest: Path | None) -> PandasDataset | None:
    """The scored test split as an `mlflow.data` dataset: pseudonymous ids and labels, digest = fingerprint.

    Its rows are the manifest's real images of evaluate's split; its digest is the fingerprint
    evaluate recorded for them, the one champion and challenger must share. None without a manifest.
    """
    import mlflow.data

    if manifest is None or not manifest.is_file():
        return None
    split = str(candidate.summary.get("split", "test"))
    rows = load_split(manifest, split, include_synthetic=False)
    table = rows[[c for c in TEST_SPLIT_COLUMNS if c in rows.columns]].reset_index(drop=True)
    source = manifest.name  # the file's name, not where it lies on this machine
    return mlflow.data.from_pandas(
        table, source=source, targets="label", name=split, digest=candidate.test_split
    )


def _log_test_results(
    mlflow: MlflowClient,
    run: tracking.RunHandle,
    candidate: Candidate,
    dataset: PandasDataset | None,
    model_id: str | None,
) -> None:
    """The test split as the run's input, and the test metrics on the run and on the logged model."""
    from mlflow.entities import DatasetInput, InputTag, Metric
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if dataset is not None:
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "test")])
        mlflow.log_inputs(run.run_id, datasets=[entity])
    linked = {"model_id": model_id} if model_id else {}
    if dataset is not None and model_id:
        linked |= {"dataset_name": dataset.name, "dataset_digest": dataset.digest}
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0, run_id=run.run_id, **linked)
               for k, v in candidate.metrics.items() if v is not None]  # fmt: skip
    for i in range(0, len(metrics), 900):  # below MLflow's 1000 entities per batch
        mlflow.log_batch(run.run_id, metrics=metrics[i : i + 900])


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
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        mlflow.create_registered_model(
            cfg.registered_model,
            description="bonescan classifier of whole-body bone scintigraphy "
            "(research use only, not diagnosis). "
            f"Aliases: {CHAMPION}, {CHALLENGER}, {PREVIOUS_CHAMPION}.",
        )
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    model = _log_model(mlflow, run, candidate, project_root)
    # The source is the model's artifact location, not `models:/<model_id>`: the SQL registry resolves
    # that through the process-global tracking URI, whatever store this client is bound to.
    version = mlflow.create_model_version(
        cfg.registered_model, model.artifact_location, run_id=run.run_id, tags=_version_tags(candidate),
        model_id=model.model_id,
    )  # fmt: skip
    link = [{"name": version.name, "version": str(version.version)}]  # what `mlflow.register_model` records
    mlflow.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(link)})
    return version


def logged_model_id(mlflow: MlflowClient, version: ModelVersion) -> str | None:
    """The LoggedModel a version was registered from: the output of the run that logged it, if any.

    The SQL registry keeps no model id with a version; bonescan's promote run logs exactly one model.
    """
    if getattr(version, "model_id", None):
        return version.model_id
    if not version.run_id:
        return None
    outputs = mlflow.get_run(version.run_id).outputs
    models = [o.model_id for o in (outputs.model_outputs if outputs else [])]
    return models[-1] if models else None


def _log_model(
    mlflow: MlflowClient, run: tracking.RunHandle, candidate: Candidate, project_root: Path
) -> LoggedModel:
    """The pyfunc as a LoggedModel of `run` (what `mlflow.pyfunc.log_model(name=...)` records).

    Done step by step through the explicit client: `log_model` would write through the process-global
    tracking URI and active run, into the default experiment rather than this run's.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    experiment = mlflow.get_run(run.run_id).info.experiment_id
    model = mlflow.create_logged_model(
        experiment, name=MODEL_ARTIFACT_PATH, source_run_id=run.run_id, params=_model_params(candidate),
        tags=_model_tags(candidate, project_root), model_type="classifier",
    )  # fmt: skip
    try:
        tic = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bonescan-pyfunc-") as tmp:
            record = Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                           run_id=run.run_id, model_id=model.model_id)  # fmt: skip
            local = save_pyfunc(candidate.checkpoint, Path(tmp) / "model", mlflow_model=record)
            mlflow.log_model_artifacts(model.model_id, str(local))
        mlflow.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    log.info("logged model %s to run %s in %.1f s", model.model_id, run.run_id, time.perf_counter() - tic)
    return mlflow.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


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
    candidate = load_candidate(cfg.model_file, cfg.metrics_file, cfg.eval_summary, root)
    scores = _candidate_scores(candidate, root / cfg.eval_summary)
    patients = _unit_patients(candidate, sources.manifest)
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
        decision, champion_value = _decide(mlflow, cfg, primary_metric, candidate, existing, aliases,
                                           scores, patients)  # fmt: skip
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
        if existing is None:
            version = _register(mlflow, run, cfg, candidate, root)
            if scores is not None:  # what a later challenger is paired against
                with tempfile.TemporaryDirectory(prefix="bonescan-scores-") as tmp:
                    local = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name
                    scores.to_csv(local, index=False, float_format="%.6g")
                    run.log_artifact(local, str(Path(PREDICTIONS_ARTIFACT).parent))
        else:
            version = existing
            mlflow.set_model_version_tag(name, version.version, TAG_TEST_SPLIT, candidate.test_split)
            log.info(
                "checkpoint %s is already version %s; reusing it", candidate.digest[:12], version.version
            )
        _log_test_results(mlflow, run, candidate, _test_split(candidate, sources.manifest),
                          logged_model_id(mlflow, version))  # fmt: skip
        number = str(version.version)
        decision, champion_value = _decide(mlflow, cfg, primary_metric, candidate, version, aliases,
                                           scores, patients)  # fmt: skip
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
        mlflow.update_model_version(name, number, description=card_summary(result, candidate))
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
    except MlflowException as exc:
        if _not_found(exc):
            return False
        raise
    return True


def _write_report(result: PromotionResult, path: Path) -> None:
    atomic_write_json(path, result.to_json())


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
    model_id = logged_model_id(mlflow, version)
    png = sources.confusion_png if sources.confusion_png and sources.confusion_png.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    local_link = Path(os.path.relpath(png.resolve(), path.parent.resolve())).as_posix() if png else None
    path.write_text(render_model_card(candidate, result, cfg, sources, confusion_link=local_link))
    with tempfile.TemporaryDirectory(prefix="bonescan-card-") as tmp:
        named = Path(tmp) / "model_card.md"  # the same name whatever cfg.model_card is called
        named.write_text(render_model_card(candidate, result, cfg, sources, confusion_link=png and png.name))
        for file in [named, png] if png else [named]:
            if model_id:  # next to the model: downloaded with it
                mlflow.log_model_artifact(model_id, str(file), "model_card")
            elif version.run_id:  # a version registered from a run's folder (earlier bonescan)
                mlflow.log_artifact(version.run_id, str(file), f"{MODEL_ARTIFACT_PATH}/model_card")
            run.log_artifact(file, "model_card")  # and on the run that took this decision
