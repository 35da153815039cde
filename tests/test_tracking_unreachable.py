"""Specification of an unreachable tracking server: a stage runs on untracked after a short probe, and
promote fails at once with a message naming the server, instead of MLflow's minutes of retries."""

from __future__ import annotations

import logging
import socket

import pytest

from bonescan import tracking
from bonescan.config import PromoteConfig
from bonescan.model_registry import promote
from tests.classifier_files import write_classifier


@pytest.fixture
def dead_server(monkeypatch):
    """An http tracking URI on a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://user:secret@127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in tracking._HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    return uri


@pytest.mark.timeout(60)
def test_a_stage_runs_untracked_when_the_server_does_not_answer(dead_server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="bonescan.tracking")
    with tracking.tracked_stage("evaluate", {"base": {"seed": 1}}, tmp_path) as tracker:
        tracker.log_metrics({"macro_f1": 0.5})  # a no-op, not a retry loop
    assert "does not answer" in caplog.text and "runs untracked" in caplog.text
    assert "secret" not in caplog.text  # credentials in the URI are never logged


@pytest.mark.timeout(60)
def test_promote_fails_at_once_naming_the_server_and_changes_nothing(dead_server, tmp_path):
    import json

    from bonescan import classifier_file

    record = write_classifier(tmp_path / "models/classifier/model.pt", ["a", "b"], (16, 8))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text('{"macro_f1": 0.5}')
    (tmp_path / "reports/eval").mkdir(parents=True)
    summary = {"fingerprint": "0123456789abcdef", "model_digest": classifier_file.model_digest(record)}
    (tmp_path / "reports/eval/summary.json").write_text(json.dumps(summary))
    with pytest.raises(tracking.TrackingUnavailableError, match=r"127\.0\.0\.1:\d+ does not answer"):
        promote(PromoteConfig(), "macro_f1", tmp_path)
    assert not (tmp_path / "reports/promotion.json").exists()


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them(dead_server, monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    with pytest.raises(tracking.TrackingUnavailableError):
        tracking.client(tmp_path)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
