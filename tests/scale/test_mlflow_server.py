"""A shared MLflow tracking server: with MLFLOW_TRACKING_URI pointing at it, stage runs, their artifacts and
registered models land on the server (artifacts proxied into its own store), and any client loads them back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonescan import classifier_file, tracking
from bonescan.config import PromoteConfig
from bonescan.model_registry import CHAMPION, example_input, promote
from tests.classifier_files import write_classifier

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CLASSES = ["healthy", "metastasis", "benign"]
SIZE = (32, 16)


@pytest.fixture(scope="module")
def server(servers, tmp_path_factory, tool_env) -> tuple[str, Path]:
    """`mlflow server` as a team runs it (here SQLite; in production PostgreSQL and s3:// artifacts)."""
    store = tmp_path_factory.mktemp("mlflow-server")
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{store / 'server.db'}",
        "--artifacts-destination", str(store / "artifacts"),  # clients upload through the server
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    servers.start(cmd, f"{url}/health", env=tool_env)
    return url, store / "artifacts"


@pytest.fixture
def project(tmp_path, monkeypatch, server) -> Path:
    """A machine's project folder whose runs go to the shared server, not to a local mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server[0])
    for name in (tracking.PARENT_RUN_ENV, tracking.EXPERIMENT_ENV, tracking.TRACKING_ENV, "RANK"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _server_client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def test_stage_runs_and_their_artifacts_land_on_the_server(project, server):
    url, artifact_store = server
    (project / "reports").mkdir()
    (project / "reports" / "summary.md").write_text("# tiny report\n")
    parent = tracking.start_pipeline_run(project, run_name="retrain")
    with tracking.tracked_stage(
        "clf_finetune", {"clf": {"lr": 0.001}}, project, parent_run_id=parent.run_id
    ) as t:
        t.log_epoch({"epoch": 1, "val_macro_f1": 0.5})
        t.log_artifacts([project / "reports" / "summary.md"], "reports")
    tracking.finish(parent)

    other_machine = _server_client(url)
    run = other_machine.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.params["clf.lr"] == "0.001" and run.data.metrics["val_macro_f1"] == 0.5
    assert [a.path for a in other_machine.list_artifacts(t.run_id, "reports")] == ["reports/summary.md"]
    assert list(artifact_store.rglob("summary.md")), "the artifact is in the server's store"
    assert not (project / "mlflow.db").exists() and not (project / tracking.ARTIFACTS_DIR).exists()


def _evaluated_checkpoint(root: Path) -> None:
    """What clf_finetune and evaluate leave behind: a tiny checkpoint, its test metrics and split fingerprint."""
    record = write_classifier(root / "models" / "classifier" / "model.pt", CLASSES, SIZE)
    metrics = {"macro_f1": 0.7, **{f"recall_{c}": 0.7 for c in CLASSES}}
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps(metrics))
    (root / "reports" / "eval").mkdir(parents=True)
    (root / "reports" / "eval" / "summary.json").write_text(json.dumps(
        {"fingerprint": "0123456789abcdef", "model_digest": classifier_file.model_digest(record)}
    ))


def test_promoted_model_loads_back_from_the_shared_registry(project, server):
    import mlflow

    url, _ = server
    _evaluated_checkpoint(project)
    result = promote(PromoteConfig(), "macro_f1", project)
    assert result.promoted

    name = PromoteConfig().registered_model
    other_machine = _server_client(url)
    assert other_machine.get_model_version_by_alias(name, CHAMPION).version == result.version
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{CHAMPION}", tracking_uri=url)
    images = pd.DataFrame({"image": list(example_input(1, SIZE))})  # one (1, H, W) image per row
    probabilities = mlflow.pyfunc.load_model(local).predict(images)[CLASSES].to_numpy()
    assert probabilities.shape == (1, len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
