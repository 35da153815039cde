"""Specification of MLflow tracking: explicit parent/child runs in a project-local store, stage runs that
log config, curves, results and small reports, that can be switched off, and that never fail a stage."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bonescan import tracking
from bonescan.cli import main

CLASSES = ["healthy", "metastasis", "benign"]


@pytest.fixture
def store(mlflow_store):
    return mlflow_store


def _runs(root, stage: str | None = None):
    mlflow = tracking.client(root)
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    query = f"tags.`bonescan.stage` = '{stage}'" if stage else ""
    return mlflow.search_runs(experiments, filter_string=query)


# --------------------------------------------------------------------------- run structure


def test_default_store_is_sqlite_at_an_absolute_path_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_a_queued_dvc_experiment_logs_to_the_projects_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    assert tracking.tracking_uri(workspace) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_params_are_flattened_with_dotted_keys():
    flat = tracking.flatten({"clf": {"optimizer": {"lr": 0.001}, "image_size": [256, 96]}, "seed": 1})
    assert flat == {"clf.optimizer.lr": "0.001", "clf.image_size": "[256, 96]", "seed": "1"}


def test_metrics_keep_numeric_leaves_only_with_safe_keys():
    values = {"acc": 0.5, "model": "mobilenet", "ci": [0.1, 0.9], "none": None, "admitted": {"benign (rare)": True}}
    assert tracking.numeric_items(values, "q.") == {"q.acc": 0.5, "q.admitted.benign _rare_": 1.0}


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
    git = ["git", "-C", str(store), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "dvc.lock"], check=True)
    subprocess.run([*git, "commit", "-qm", "lock"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    parent = tracking.start_pipeline_run(store)
    tags = parent.client.get_run(parent.run_id).data.tags
    assert tags["dvc_lock_sha256"] == tracking.dvc_lock_hash(store) != "none"
    assert tags["mlflow.source.git.commit"] == head and tags["bonescan.git_dirty"] == "false"  # MLflow's own tag


# --------------------------------------------------------------------------- tracked stages


def test_tracked_stage_is_a_child_of_the_pipeline_run_with_params_metrics_and_tags(store, monkeypatch):
    (store / "dvc.lock").write_text("schema: '2.0'\n")
    parent = tracking.start_pipeline_run(store)
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
    config = {"base": {"seed": 42}, "clf": {"finetune": {"lr": 0.001, "epochs": 2}}}
    with tracking.tracked_stage("clf_finetune", config, store, experiment="elsewhere") as track:
        track.log_metrics({"val_macro_f1": 0.75, "model": "mobilenet_v3_small", "stopped_early": 0})
    run = parent.client.get_run(track.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.info.experiment_id == parent.client.get_run(parent.run_id).info.experiment_id  # nested in the UI
    assert run.data.tags["bonescan.stage"] == "clf_finetune"
    assert run.data.tags["dvc_lock_sha256"] == tracking.dvc_lock_hash(store)
    assert run.data.params == {"base.seed": "42", "clf.finetune.lr": "0.001", "clf.finetune.epochs": "2"}
    assert run.data.metrics == {"val_macro_f1": 0.75, "stopped_early": 0.0}
    assert run.info.status == "FINISHED"


def test_a_stage_without_parent_gets_a_run_in_the_configured_experiment(store):
    with tracking.tracked_stage("augment", {}, store, experiment="knee-xray") as track:
        pass
    mlflow = tracking.client(store)
    run = mlflow.get_run(track.run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "knee-xray"
    assert "mlflow.parentRunId" not in run.data.tags


@dataclass
class _Epoch:
    epoch: int
    train_loss: float
    val_macro_f1: float


def test_per_epoch_stats_are_curves_with_the_epoch_as_step(store):
    with tracking.tracked_stage("clf_pretrain", {}, store) as track:
        callback = track.epoch_callback()
        for epoch, loss in ((1, 0.9), (2, 0.5), (3, 0.4)):
            callback(_Epoch(epoch, loss, 0.1 * epoch))
        track.log_epoch({"epoch": 1, "step": 40, "g_loss": 2.0}, prefix="mu_acgan.")  # a GAN's mapping
    mlflow = tracking.client(store)
    history = mlflow.get_metric_history(track.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5), (3, 0.4)]
    assert [m.step for m in mlflow.get_metric_history(track.run_id, "mu_acgan.g_loss")] == [1]
    assert "epoch" not in mlflow.get_run(track.run_id).data.metrics
    assert "mu_acgan.step" not in mlflow.get_run(track.run_id).data.metrics


def test_small_reports_are_uploaded_but_nothing_under_data(store):
    (store / "reports").mkdir()
    (store / "reports" / "gan_quality.md").write_text("| class | fidelity |\n")
    samples = store / "plots" / "gan" / "pretrain" / "samples"
    samples.mkdir(parents=True)
    (samples / "acgan_final.png").write_bytes(b"\x89PNG")
    (samples.parent / "acgan.csv").write_text("epoch,g_loss\n1,2.0\n")
    (store / "data" / "raw").mkdir(parents=True)
    (store / "data" / "raw" / "labels.csv").write_text("accession,label\n")
    with tracking.tracked_stage("gan_pretrain", {}, store) as track:
        track.log_artifacts([store / "reports" / "gan_quality.md", store / "data" / "raw", store / "missing.md"])
        track.log_artifacts([store / "plots" / "gan" / "pretrain"], "plots")
    mlflow = tracking.client(store)
    top = sorted(a.path for a in mlflow.list_artifacts(track.run_id))
    assert top == ["gan_quality.md", "plots"]
    assert sorted(a.path for a in mlflow.list_artifacts(track.run_id, "plots")) == ["plots/acgan.csv", "plots/samples"]
    assert [a.path for a in mlflow.list_artifacts(track.run_id, "plots/samples")] == ["plots/samples/acgan_final.png"]
    assert (store / tracking.ARTIFACTS_DIR).is_dir()  # artifacts sit next to the SQLite store


def test_params_naming_raw_data_paths_are_not_logged(store):
    config = {"datasets": {"target": {"raw_dir": "data/raw/hospital_export", "classes": CLASSES}}}
    with tracking.tracked_stage("ingest", config, store) as track:
        pass
    params = tracking.client(store).get_run(track.run_id).data.params
    assert params == {"datasets.target.classes": '["healthy", "metastasis", "benign"]'}


def test_a_failing_tracked_stage_marks_its_run_failed_and_raises(store):
    with pytest.raises(ValueError, match="bad manifest"), tracking.tracked_stage("augment", {}, store) as track:
        raise ValueError("bad manifest")
    assert tracking.client(store).get_run(track.run_id).info.status == "FAILED"


# --------------------------------------------------------------------------- switched off / failing


@pytest.mark.parametrize("switch", ["env", "params"])
def test_disabled_tracking_creates_no_run_and_no_store(tmp_path, monkeypatch, switch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if switch == "env":
        monkeypatch.setenv(tracking.TRACKING_ENV, "0")
    with tracking.tracked_stage("evaluate", {"evaluate": {"n_boot": 10}}, tmp_path, enabled=switch == "env") as track:
        track.log_metrics({"accuracy": 1.0})
        track.epoch_callback()({"epoch": 1, "loss": 0.1})
        track.log_artifacts([tmp_path])
    assert not track.active
    assert track.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_only_rank_zero_logs_under_torchrun(store, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with tracking.tracked_stage("clf_finetune", {}, store) as track:
        track.log_metrics({"val_macro_f1": 0.5})
    assert not track.active
    assert list(_runs(store)) == []


def test_disabled_tracking_never_imports_mlflow(tmp_path):
    code = (
        "import sys; from bonescan import tracking\n"
        f"with tracking.tracked_stage('augment', {{'a': 1}}, {str(tmp_path)!r}, enabled=False) as t:\n"
        "    t.log_metrics({'x': 1.0})\n"
        "assert 'mlflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_store_that_cannot_be_opened_does_not_fail_the_stage(store, monkeypatch, caplog):
    def locked(_root):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(tracking, "client", locked)
    with (
        caplog.at_level(logging.WARNING, logger="bonescan.tracking"),
        tracking.tracked_stage("evaluate", {"evaluate": {"n_boot": 10}}, store) as track,
    ):
        track.log_metrics({"accuracy": 0.9})
        result = "stage output"
    assert result == "stage output"
    assert not track.active
    assert "could not start" in caplog.text and "database is locked" in caplog.text


def test_a_store_failing_mid_run_stops_tracking_with_one_warning(store, monkeypatch, caplog):
    calls = []

    def broken(self, metrics, step=None):
        calls.append(step)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(tracking.RunHandle, "log_metrics", broken)
    with (
        caplog.at_level(logging.WARNING, logger="bonescan.tracking"),
        tracking.tracked_stage("clf_finetune", {"clf": {"model": "x"}}, store) as track,
    ):
        for epoch in (1, 2, 3):
            track.log_epoch({"epoch": epoch, "train_loss": 1.0})
    assert calls == [1]  # the first failure switches tracking off for the rest of the stage
    assert caplog.text.count("stopped while") == 1
    assert tracking.client(store).get_run(track.run_id).info.status == "FAILED"


# --------------------------------------------------------------------------- CLI wiring


def _project(root, evaluate: dict | None = None) -> None:
    """A params.yaml for a tiny project in `root` (relative paths, as DVC runs the stages)."""
    dataset = {"raw_dir": "data/raw/bone", "classes": CLASSES, "interim_dir": "data/interim",
               "out_dir": "data/processed", "reports_dir": "reports", "metrics_dir": "metrics"}
    params = {"base": {"image_size": [32, 16], "classes": CLASSES}, "datasets": {"target": dataset},
              "clf": {"model": "soft_threshold_net", "finetune": {"epochs": 2}}, "evaluate": evaluate or {}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_evaluate_command_logs_metrics_tags_and_reports_but_no_per_image_rows(store, monkeypatch):
    from bonescan.data.manifest import MANIFEST_COLUMNS, write_manifest
    from bonescan.dicom.read import write_png16
    from bonescan.models import build

    monkeypatch.chdir(store)
    _project(store, {"n_boot": 20, "gradcam_per_class": 1, "device": "cpu"})
    rng = np.random.default_rng(0)
    rows = []
    for p in range(6):
        label = CLASSES[p % 3]
        for view in ("anterior", "posterior"):
            path = f"data/processed/images/i{p}{view[0]}.png"
            write_png16(np.clip(0.2 + 0.3 * (p % 3) + 0.1 * rng.standard_normal((32, 16)), 0, 1), store / path)
            rows.append([f"i{p}{view[0]}", f"P{p}", f"S{p}", view, label, "test", "false", "dicom:NM", path])
    write_manifest(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), store / "data/processed/manifest.csv")
    (store / "models/classifier").mkdir(parents=True)
    torch.manual_seed(0)
    model = build("soft_threshold_net", 3)
    torch.save({"model": model.state_dict(), "model_name": "soft_threshold_net", "num_classes": 3, "in_chans": 1,
                "classes": CLASSES, "image_size": [32, 16], "config": {}}, store / "models/classifier/model.pt")

    assert main(["evaluate"]) == 0
    (run,) = _runs(store, "evaluate")
    assert run.info.status == "FINISHED"
    assert run.data.params["evaluate.n_boot"] == "20"
    assert not any(k.startswith("datasets.") for k in run.data.params)
    assert {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "n_images"} <= set(run.data.metrics)
    assert run.data.metrics["n_images"] == 12
    assert run.data.tags["bonescan.eval.split"] == "test"
    assert len(run.data.tags["bonescan.eval.fingerprint"]) > 8
    artifacts = {a.path for a in tracking.client(store).list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/report.md", "evaluate/confusion_matrix.png", "evaluate/confusion.csv"} <= artifacts
    assert not {"evaluate/predictions.csv", "evaluate/study_predictions.csv"} & artifacts


def test_clf_finetune_command_logs_epoch_curves_final_metrics_and_plot(store, monkeypatch):
    import bonescan.train as train

    def fake_finetune(cfg, augment, classes, size, resume=True, progress=True, callback=None, preprocessing=None):
        assert tuple(preprocessing.image_size) == tuple(size)  # the CLI saves the params' preprocessing
        for epoch in (1, 2):
            callback(train.EpochStats(epoch, 1.0 / epoch, 0.9, 0.5, 0.4 * epoch, 1e-3, 100.0, 1.0))
        (store / cfg.plots_dir).mkdir(parents=True, exist_ok=True)
        (store / cfg.plots_dir / "finetune.csv").write_text("epoch,train_loss\n1,1.0\n2,0.5\n")
        return train.StageResult("clf_finetune", cfg.model, "clf_pretrain", "models/classifier/model.pt",
                                 list(classes), train_images=30, val_images=6, epochs_run=2, best_epoch=2,
                                 best={"val_macro_f1": 0.8, "val_loss": 0.9})

    monkeypatch.chdir(store)
    _project(store)
    monkeypatch.setattr(train, "finetune_classifier", fake_finetune)
    assert main(["clf-finetune", "--no-progress"]) == 0
    (run,) = _runs(store, "clf_finetune")
    mlflow = tracking.client(store)
    assert [(m.step, m.value) for m in mlflow.get_metric_history(run.info.run_id, "val_macro_f1")] == [
        (1, 0.4), (2, 0.8), (0, 0.8)]  # two epochs, then the best epoch's value as the final metric
    assert run.data.metrics["train_images"] == 30
    assert run.data.params["clf.model"] == "soft_threshold_net"
    assert run.data.params["clf.finetune.epochs"] == "2"
    assert "augment.mode" in run.data.params
    assert [a.path for a in mlflow.list_artifacts(run.info.run_id, "plots")] == ["plots/finetune.csv"]
    assert (store / "metrics/clf_finetune.json").is_file()


def test_a_stage_command_without_tracking_writes_its_metrics_and_no_store(tmp_path, monkeypatch):
    import bonescan.train as train

    def fake_finetune(cfg, augment, classes, size, resume=True, progress=True, callback=None, preprocessing=None):
        callback(train.EpochStats(1, 1.0, 0.9, 0.5, 0.4, 1e-3, 100.0, 1.0))
        return train.StageResult("clf_finetune", cfg.model, "none", "m.pt", list(classes))

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(tracking.TRACKING_ENV, "0")
    monkeypatch.chdir(tmp_path)
    _project(tmp_path)
    monkeypatch.setattr(train, "finetune_classifier", fake_finetune)
    assert main(["clf-finetune", "--no-progress"]) == 0
    assert (tmp_path / "metrics/clf_finetune.json").is_file()
    assert not (tmp_path / "mlflow.db").exists()
