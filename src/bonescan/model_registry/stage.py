"""The promote stage: register the evaluated classifier in MLflow and move aliases by the rule.

`bonescan promote` registers the evaluated classifier file as a version of `bonescan-classifier` (a
version per distinct model digest: re-running on the same weights reuses it), points `challenger` at
it, and applies `bonescan.model_registry.rules.decide` against the current `champion`, whose metrics
and test-split fingerprint are read back from its version tags. A promotion moves `champion` and keeps
the old one as `previous-champion`; `rollback` undoes it. Every version carries a model card.

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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bonescan import classifier_file, tracking
from bonescan.config import PromoteConfig
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
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "Candidate",
    "PromotionResult",
    "current_aliases",
    "find_version",
    "load_candidate",
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
EVAL_TAG_PREFIX = "eval."
PARAMS_TAG_PREFIX = "params.clf."
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
    checkpoint, metrics_file, summary_file = (root / Path(p) for p in (checkpoint, metrics_file, summary_file))
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
    except MlflowException as exc:
        if not _not_found(exc):
            raise
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
    candidate = load_candidate(cfg.model_file, cfg.metrics_file, cfg.eval_summary, root)
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
