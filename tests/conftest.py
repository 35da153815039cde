"""Fixtures shared across test packages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bonescan import tracking


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow database: its schema migrations take seconds, so tests copy it."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, empty_mlflow_db) -> Path:
    """A project folder with its own MLflow store ($MLFLOW_TRACKING_URI) and no pipeline run around it."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in (tracking.PARENT_RUN_ENV, tracking.EXPERIMENT_ENV, tracking.TRACKING_ENV, "RANK"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path
