"""MLflow run tracking: one parent run per pipeline run, one child run per stage.

With `bonescan.model_registry` (the registered model, the promote stage) this is the only code that
imports mlflow; stage functions report through callbacks and return values.

Run structure: one parent run per pipeline run (created by the Prefect flow or by hand), one child
run per stage. The parent run id travels explicitly, as an argument or through the
`BONESCAN_MLFLOW_PARENT_RUN` environment variable that the flow sets for the `dvc repro` subprocess,
never through MLflow's thread-local "active run". Every call goes through an `MlflowClient` bound to
one tracking URI, so two pipelines in one process cannot write into each other's runs.

mlflow itself is imported lazily (about 2 s): a stage with tracking switched off never pays for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bonescan.runtime import is_main_process

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "BONESCAN_MLFLOW_PARENT_RUN"
EXPERIMENT_ENV = "BONESCAN_MLFLOW_EXPERIMENT"
TRACKING_ENV = "BONESCAN_TRACKING"  # "0" / "false" / "off" / "no": no stage run is tracked
DEFAULT_EXPERIMENT = "bonescan"
REGISTERED_MODEL = "bonescan-classifier"
ARTIFACTS_DIR = "mlartifacts"  # next to a SQLite store: the store and its artifacts move together
_MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value
_BATCH = 900  # below MLflow's 1000-entities-per-log_batch limit
_MAX_ARTIFACT_BYTES = 20 * 2**20  # "small artifacts": reports, curves, grids; never models or data
_OFF = {"0", "false", "off", "no"}
_NOT_IN_KEYS = re.compile(r"[^\w.\- /:]")  # characters MLflow rejects in metric and param names


def store_root(project_root: str | Path = ".") -> Path:
    """The project that owns the default store, also from inside a queued DVC experiment.

    `dvc exp run --queue` runs stages in a throw-away copy at `<project>/.dvc/tmp/exps/<tmp>/`; a
    store there would vanish with it, so such runs are logged to the project's own mlflow.db.
    """
    root = Path(project_root).resolve()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri(project_root: str | Path = ".") -> str:
    """`MLFLOW_TRACKING_URI` if set, else SQLite at an absolute path inside the project."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{store_root(project_root) / 'mlflow.db'}"


class TrackingUnavailableError(ConnectionError):
    """The MLflow tracking server does not answer (checked before any call that would retry for minutes)."""


# MLflow retries an unreachable server 7 times with exponential backoff (about 250 s per call);
# bonescan asks for a bounded wait unless the user set these.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}  # fmt: skip
PROBE_TIMEOUT_S = 5.0


def probe_server(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail within `timeout_s` when an http(s) tracking server does not answer its /health endpoint.

    Raises:
        TrackingUnavailableError: naming the server and the reason (credentials are never shown).
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    shown = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310 (http(s) only)
            return
    except urllib.error.HTTPError:
        return  # it answers (a proxy or an auth layer may refuse /health; the real call will say more)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailableError(
            f"MLflow tracking server {shown} does not answer within {timeout_s:.0f} s ({type(reason).__name__}); "
            "check MLFLOW_TRACKING_URI"
        ) from None


def client(project_root: str | Path = ".") -> MlflowClient:
    """An MlflowClient bound to the project's store; an http(s) server is probed first and retried briefly.

    Raises:
        TrackingUnavailableError: an http(s) tracking server that does not answer.
    """
    from mlflow import MlflowClient

    uri = tracking_uri(project_root)
    if uri.startswith(("http://", "https://")):
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)  # read by MLflow's HTTP layer at each request
        probe_server(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def tracking_enabled(enabled: bool = True) -> bool:
    """Whether stage runs are tracked: params' `tracking.enabled`, switched off by `BONESCAN_TRACKING=0`."""
    return enabled and os.environ.get(TRACKING_ENV, "").strip().lower() not in _OFF


def flatten(params: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    """Nested params -> {"clf.optimizer.lr": "0.001"}; lists become JSON strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            flat[name] = text[:_MAX_PARAM_LENGTH]
    return flat


def numeric_items(values: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    """Nested results -> {"mu_acgan.mean_fidelity": 0.8}: numbers and booleans (as 0/1) only.

    Strings, lists and None are left out (MLflow metrics are numbers); keys are made MLflow-safe.
    """
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = _NOT_IN_KEYS.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            flat.update(numeric_items(value, f"{name}."))
        elif isinstance(value, int | float):  # bool included: True -> 1.0
            flat[name] = float(value)
    return flat


def git_commit(project_root: str | Path = ".") -> str:
    """The checked-out commit (with a `-dirty` suffix for uncommitted changes), or "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dvc_lock_hash(project_root: str | Path = ".") -> str:
    """sha256 of dvc.lock: identifies the exact data, params and code hashes behind a run."""
    lock = Path(project_root) / "dvc.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none"


def _artifact_location(uri: str) -> str | None:
    """`mlartifacts/` next to a SQLite store; None (the server's default) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).resolve().as_uri()


def experiment_id(mlflow: MlflowClient, name: str | None = None) -> str:
    name = name or os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=_artifact_location(mlflow.tracking_uri))


@dataclass(frozen=True)
class RunHandle:
    """A run and the client that owns it: everything logs through this explicit pair."""

    client: MlflowClient
    run_id: str

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)


GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: its UI shows and links the commit
GIT_DIRTY_TAG = "bonescan.git_dirty"  # "true": the commit had uncommitted changes on top
DVC_LOCK_TAG = "dvc_lock_sha256"


def code_version_tags(project_root: str | Path = ".") -> dict[str, str]:
    """The code and data a run or a logged model came from: git commit (when known) and dvc.lock hash."""
    tags = {DVC_LOCK_TAG: dvc_lock_hash(project_root)}
    commit = git_commit(project_root)
    if commit != "unknown":
        tags[GIT_COMMIT_TAG] = commit.removesuffix("-dirty")
        tags[GIT_DIRTY_TAG] = str(commit.endswith("-dirty")).lower()
    return tags


def start_pipeline_run(project_root: str | Path = ".", run_name: str | None = None) -> RunHandle:
    """The parent run of one pipeline run, tagged with the code and data versions."""
    mlflow = client(project_root)
    run = mlflow.create_run(
        experiment_id(mlflow),
        run_name=run_name or "pipeline",
        tags={"bonescan.kind": "pipeline", **code_version_tags(project_root)},
    )
    return RunHandle(mlflow, run.info.run_id)


def finish(run: RunHandle, status: str = "FINISHED") -> None:
    run.client.set_terminated(run.run_id, status=status)


def _create_stage_run(
    stage: str, project_root: str | Path, parent_run_id: str | None, experiment: str | None = None
) -> RunHandle:
    """A stage's run: in its parent's experiment when it has a parent (MLflow nests runs per experiment)."""
    parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV)
    mlflow = client(project_root)
    tags = {"bonescan.kind": "stage", "bonescan.stage": stage, **code_version_tags(project_root)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
        exp = mlflow.get_run(parent_run_id).info.experiment_id
    else:
        exp = experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV) or experiment)
    run = mlflow.create_run(exp, run_name=stage, tags=tags)
    return RunHandle(mlflow, run.info.run_id)


@contextmanager
def stage_run(
    stage: str,
    project_root: str | Path = ".",
    parent_run_id: str | None = None,
) -> Iterator[RunHandle]:
    """A child run for one stage, nested under `parent_run_id` (or $BONESCAN_MLFLOW_PARENT_RUN).

    Without a parent the stage still gets a run of its own, so `dvc repro` alone is tracked too.
    The run is marked FAILED if the stage raises. MLflow errors propagate; stages use `tracked_stage`.
    """
    handle = _create_stage_run(stage, project_root, parent_run_id)
    try:
        yield handle
    except BaseException:
        finish(handle, "FAILED")
        raise
    finish(handle)


# --------------------------------------------------------------------------- stage tracking


def _stats_dict(stats: object) -> Mapping[str, object]:
    """A dataclass (train.EpochStats) or a mapping (a GAN epoch); anything else logs nothing."""
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    if isinstance(stats, Mapping):
        return stats
    log.warning("not logging epoch stats of type %s: expected a dataclass or a mapping", type(stats).__name__)
    return {}


def _mentions_raw_data(value: str) -> bool:
    return "data/raw" in value.replace("\\", "/")


class StageTracker:
    """What a stage command logs to its MLflow run; inert (every method a no-op) when tracking is off.

    A tracking failure never fails the stage: the first MLflow error is logged as one warning, the run
    is marked FAILED if the store still answers, and every later call does nothing. Only counts,
    metrics, configuration and small report files are logged: params naming raw-data paths are
    dropped, and nothing under `<project>/data` is ever uploaded.
    """

    def __init__(self, stage: str, run: RunHandle | None, project_root: str | Path = ".") -> None:
        self.stage = stage
        self._run = run
        self.run_id = run.run_id if run else None  # kept after the run ends, e.g. to look it up
        self._root = Path(project_root).resolve()
        self.seconds = 0.0  # time spent in MLflow calls: the price of tracking this stage

    @property
    def active(self) -> bool:
        return self._run is not None

    def _call(self, what: str, fn: Callable[[RunHandle], None]) -> None:
        if self._run is None:
            return
        tic = time.perf_counter()
        try:
            fn(self._run)
        except Exception as exc:  # a broken store must not cost the stage its result
            log.warning("MLflow tracking of stage %s stopped while %s (%s: %s); the stage goes on untracked",
                        self.stage, what, type(exc).__name__, exc)
            run, self._run = self._run, None
            with suppress(Exception):
                finish(run, "FAILED")
        finally:
            self.seconds += time.perf_counter() - tic

    def log_params(self, params: Mapping[str, object]) -> None:
        """Nested config sections, logged flattened (`clf.finetune.lr`); raw-data paths are left out."""
        flat = {k: v for k, v in flatten(params).items() if not _mentions_raw_data(v)}
        self._call("logging params", lambda run: run.log_params(flat))

    def log_metrics(self, metrics: Mapping[str, object], step: int | None = None, prefix: str = "") -> None:
        """The numeric leaves of (nested) `metrics`, keys prefixed; strings and None are skipped."""
        values = numeric_items(metrics, prefix)
        if values:
            self._call("logging metrics", lambda run: run.log_metrics(values, step=step))

    def log_epoch(self, stats: object, prefix: str = "") -> None:
        """One epoch's stats (a dataclass or mapping with an `epoch` field) as metrics at step=epoch."""
        if self._run is None:
            return
        row = dict(_stats_dict(stats))
        epoch = row.pop("epoch", None)
        row.pop("step", None)  # a GAN's global step: the x axis is the epoch
        self.log_metrics(row, step=int(epoch) if isinstance(epoch, int | float) else None, prefix=prefix)

    def epoch_callback(self, prefix: str = "") -> Callable[[object], None]:
        """A `callback` for the training functions: each epoch's stats, keys prefixed by `prefix`."""
        return lambda stats: self.log_epoch(stats, prefix)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self._call("setting tags", lambda run: run.set_tags(tags))

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Upload the existing small files among `paths` (folders: their files, recursively).

        Missing paths are skipped (a stage may not write every optional file); anything under
        `<project>/data` or larger than 20 MiB is refused with a warning.
        """
        if self._run is None:
            return
        for path in paths:
            path = Path(path)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                if not file.is_file() or not self._may_upload(file):
                    continue
                sub = file.parent.relative_to(path) if path.is_dir() else Path()
                dest = "/".join(p for p in (artifact_path, *sub.parts) if p) or None
                self._call(f"uploading {file.name}", lambda run, f=file, d=dest: run.log_artifact(f, d))

    def _may_upload(self, file: Path) -> bool:
        resolved = file.resolve()
        if resolved.is_relative_to(self._root / "data"):
            log.warning("not uploading %s to MLflow: files under data/ stay in the DVC store", file.name)
            return False
        if resolved.stat().st_size > _MAX_ARTIFACT_BYTES:
            log.warning("not uploading %s to MLflow: larger than %d MiB", file.name, _MAX_ARTIFACT_BYTES >> 20)
            return False
        return True

    def close(self, status: str = "FINISHED") -> None:
        self._call("closing the run", lambda run: finish(run, status))
        if self._run is not None:
            log.info("MLflow run %s of stage %s: %s (tracking took %.2f s)", self._run.run_id, self.stage,
                     status.lower(), self.seconds)
        self._run = None


@contextmanager
def tracked_stage(
    stage: str,
    params: Mapping[str, object] | None = None,
    project_root: str | Path = ".",
    *,
    enabled: bool = True,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[StageTracker]:
    """Track one stage command as an MLflow run, a child of the pipeline run when there is one.

    The run sits under `parent_run_id` or $BONESCAN_MLFLOW_PARENT_RUN (in the parent's experiment),
    else in `experiment` ($BONESCAN_MLFLOW_EXPERIMENT wins); it is tagged with the stage, the git
    commit and the dvc.lock hash, gets `params` flattened, and ends FINISHED, or FAILED if the stage
    raises (the exception propagates).

    Tracking is off, and nothing is imported or created (no mlflow.db), when `enabled` is false,
    $BONESCAN_TRACKING is "0"/"false"/"off"/"no", or this is not rank 0 under torchrun: the
    yielded tracker then does nothing. A tracking failure (a locked SQLite store, an unreachable
    server) never fails a stage that succeeded: it is logged as a warning and the stage goes on
    untracked.

    Args:
        stage: the DVC stage name, e.g. "clf_finetune".
        params: the resolved config sections the stage reads, e.g. {"base": ..., "clf": ...}.
        project_root: where the default SQLite store (mlflow.db) and git/DVC metadata live.
        enabled: params' `tracking.enabled`.
        experiment: params' `tracking.experiment` (default "bonescan").
        parent_run_id: the pipeline run; None reads $BONESCAN_MLFLOW_PARENT_RUN.
    """
    run = None
    tic = time.perf_counter()
    if tracking_enabled(enabled) and is_main_process():
        try:
            run = _create_stage_run(stage, project_root, parent_run_id, experiment)
        except Exception as exc:
            log.warning("MLflow tracking of stage %s could not start (%s: %s); the stage runs untracked",
                        stage, type(exc).__name__, exc)
    tracker = StageTracker(stage, run, project_root)
    tracker.seconds = time.perf_counter() - tic
    if params:
        tracker.log_params(params)
    try:
        yield tracker
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")
