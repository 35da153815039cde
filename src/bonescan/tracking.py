"""MLflow helpers: the only module that imports mlflow.

Run structure: one parent run per pipeline run (created by the Prefect flow or by hand), one child
run per stage. The parent run id travels explicitly, as an argument or through the
`BONESCAN_MLFLOW_PARENT_RUN` environment variable that the flow sets for the `dvc repro` subprocess,
never through MLflow's thread-local "active run". Every call goes through an `MlflowClient` bound to
one tracking URI, so two pipelines in one process cannot write into each other's runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "BONESCAN_MLFLOW_PARENT_RUN"
EXPERIMENT_ENV = "BONESCAN_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "bonescan"
REGISTERED_MODEL = "bonescan-classifier"
_MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value
_BATCH = 900  # below MLflow's 1000-entities-per-log_batch limit


def tracking_uri(project_root: str | Path = ".") -> str:
    """`MLFLOW_TRACKING_URI` if set, else SQLite at an absolute path inside the project."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def client(project_root: str | Path = ".") -> MlflowClient:
    uri = tracking_uri(project_root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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


def experiment_id(mlflow: MlflowClient, name: str | None = None) -> str:
    name = name or os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name)


@dataclass(frozen=True)
class RunHandle:
    """A run and the client that owns it: everything logs through this explicit pair."""

    client: MlflowClient
    run_id: str

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)


def start_pipeline_run(project_root: str | Path = ".", run_name: str | None = None) -> RunHandle:
    """The parent run of one pipeline run, tagged with the code and data versions."""
    mlflow = client(project_root)
    run = mlflow.create_run(
        experiment_id(mlflow),
        run_name=run_name or "pipeline",
        tags={
            "bonescan.kind": "pipeline",
            "git_commit": git_commit(project_root),
            "dvc_lock_sha256": dvc_lock_hash(project_root),
        },
    )
    return RunHandle(mlflow, run.info.run_id)


def finish(run: RunHandle, status: str = "FINISHED") -> None:
    run.client.set_terminated(run.run_id, status=status)


@contextmanager
def stage_run(
    stage: str,
    project_root: str | Path = ".",
    parent_run_id: str | None = None,
) -> Iterator[RunHandle]:
    """A child run for one stage, nested under `parent_run_id` (or $BONESCAN_MLFLOW_PARENT_RUN).

    Without a parent the stage still gets a run of its own, so `dvc repro` alone is tracked too.
    The run is marked FAILED if the stage raises.
    """
    parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV)
    mlflow = client(project_root)
    tags = {
        "bonescan.kind": "stage",
        "bonescan.stage": stage,
        "git_commit": git_commit(project_root),
        "dvc_lock_sha256": dvc_lock_hash(project_root),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow.create_run(experiment_id(mlflow), run_name=stage, tags=tags)
    handle = RunHandle(mlflow, run.info.run_id)
    try:
        yield handle
    except BaseException:
        finish(handle, "FAILED")
        raise
    finish(handle)
