"""Specification of the MLflow run structure: explicit parent/child runs in a project-local store."""

from __future__ import annotations

import pytest

from bonescan import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    return tmp_path


def test_default_store_is_sqlite_at_an_absolute_path_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_params_are_flattened_with_dotted_keys():
    flat = tracking.flatten({"clf": {"optimizer": {"lr": 0.001}, "image_size": [256, 96]}, "seed": 1})
    assert flat == {"clf.optimizer.lr": "0.001", "clf.image_size": "[256, 96]", "seed": "1"}


def test_stage_run_is_a_child_of_the_explicit_parent(store):
    parent = tracking.start_pipeline_run(store)
    with tracking.stage_run("split", store, parent_run_id=parent.run_id) as run:
        run.log_params({"split": {"seed": 42}})
        run.log_metrics({"patients_in_two_splits": 0, "note": "not a number"})
    tracking.finish(parent)
    child = run.client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.tags["bonescan.stage"] == "split"
    assert child.data.params == {"split.seed": "42"}
    assert child.data.metrics == {"patients_in_two_splits": 0.0}
    assert child.info.status == "FINISHED"


def test_parent_comes_from_the_environment_when_not_given(store, monkeypatch):
    parent = tracking.start_pipeline_run(store)
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
    with tracking.stage_run("ingest", store) as run:
        pass
    assert run.client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_a_failing_stage_marks_its_run_failed(store):
    with pytest.raises(RuntimeError), tracking.stage_run("evaluate", store) as run:
        raise RuntimeError("boom")
    assert run.client.get_run(run.run_id).info.status == "FAILED"


def test_runs_are_tagged_with_code_and_data_versions(store):
    (store / "dvc.lock").write_text("schema: '2.0'\n")
    parent = tracking.start_pipeline_run(store)
    tags = parent.client.get_run(parent.run_id).data.tags
    assert tags["dvc_lock_sha256"] == tracking.dvc_lock_hash(store) != "none"
    assert "git_commit" in tags
