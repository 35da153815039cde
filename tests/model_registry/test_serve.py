"""Specification of serving: `mlflow models serve` on the registered champion answers a request made of
a study (a DICOM file's bytes, base64 in JSON) on loopback, in the local environment (nothing downloaded),
and opens no file of its host that a request names."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bonescan import classifier_file
from bonescan.config import PromoteConfig
from bonescan.model_registry import promote
from bonescan.model_registry.pyfunc import PATH_ROOT_ENV
from tests.classifier_files import write_classifier
from tests.model_registry.conftest import CLASSES, SIZE, TRAINED_ON_DICOM

pytestmark = pytest.mark.slow
STARTUP_S = 180  # two shared CPU cores: the server imports torch and mlflow before it answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_champion(root: Path) -> None:
    """What clf_finetune, evaluate and promote leave in the project's store: a champion version."""
    record = write_classifier(
        root / "models/classifier/model.pt", CLASSES, SIZE, preprocessing=TRAINED_ON_DICOM
    )
    (root / "metrics").mkdir()
    (root / "metrics/eval.json").write_text(
        json.dumps({"macro_f1": 0.5, **{f"recall_{c}": 0.5 for c in CLASSES}})
    )
    (root / "reports/eval").mkdir(parents=True)
    summary = {
        "split": "test",
        "fingerprint": "0123abcd",
        "model_digest": classifier_file.model_digest(record),
    }
    (root / "reports/eval/summary.json").write_text(json.dumps(summary))
    assert promote(PromoteConfig(), "macro_f1", root).promoted


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow models serve exited with {server.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):  # noqa: S310 (loopback)
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer within {STARTUP_S} s")


def test_the_served_champion_classifies_a_dicom_study_and_explains_a_refused_file(
    mlflow_store, phantom_study, monkeypatch
):
    monkeypatch.delenv(PATH_ROOT_ENV, raising=False)  # no folder of the host is given to the server
    register_champion(mlflow_store)
    bin_dir = str(Path(sys.executable).parent)  # the server starts `uvicorn` from PATH
    mlflow_cli = shutil.which("mlflow", path=bin_dir) or "mlflow"
    port = free_port()
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # fmt: skip
    log = (mlflow_store / "serve.log").open("w")
    server = subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", "models:/bonescan-classifier@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, cwd=mlflow_store, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server)
        study = base64.b64encode(phantom_study.read_bytes()).decode()
        text = base64.b64encode(b"a referral letter, not a scan").decode()
        with pytest.raises(urllib.error.HTTPError) as malformed:  # MLflow decodes base64 before the model
            post(f"{url}/invocations", {"dataframe_split": {"columns": ["content"], "data": [["QUJDR"]]}})
        got = post(
            f"{url}/invocations", {"dataframe_split": {"columns": ["content"], "data": [[study], [text]]}}
        )  # the server outlived the bad request
        on_host = str(phantom_study)  # a study the server could read, named by the client
        named = post(f"{url}/invocations", {"dataframe_split": {"columns": ["path"], "data": [[on_host]]}})
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
            server.wait(timeout=30)
        log.close()
    assert malformed.value.code == 400
    scan, letter = got["predictions"]
    assert scan["reason"] == "" and scan["n_views"] == 2 and scan["prediction"] in CLASSES
    assert sum(scan[c] for c in CLASSES) == pytest.approx(1.0, abs=1e-6)
    assert letter["reason"].startswith("not_dicom") and letter["prediction"] == ""
    [named] = named["predictions"]
    assert named["reason"].startswith("path_refused: this model reads no files") and named["prediction"] == ""
