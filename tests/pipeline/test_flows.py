"""The `retrain` flow, in Prefect's ephemeral mode and against a real server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from bonescan import tracking
from pipeline.flows import is_gpu_stage, report_file, report_markdown, retrain, retry_only_transient
from pipeline.stages import FailureKind, StageFailed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_ephemeral():
    with prefect_test_harness(server_startup_timeout=120):
        yield


class _State:
    def __init__(self, data):
        self.data = data


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (StageFailed("s", FailureKind.TRANSIENT, -9, ""), True),
        (StageFailed("s", FailureKind.LOCKED, 1, ""), False),
        (StageFailed("s", FailureKind.ERROR, 1, ""), False),
        (ValueError("x"), False),
    ],
)
def test_only_transient_failures_are_retried(exc, retry):
    assert retry_only_transient(None, None, _State(exc)) is retry


def test_training_stages_carry_the_gpu_concurrency_tag():
    assert is_gpu_stage("gan_pretrain") and is_gpu_stage("clf_finetune")
    assert not is_gpu_stage("ingest@target")


@pytest.mark.slow
def test_flow_runs_stages_in_order_and_a_second_run_skips_them(prefect_ephemeral, scratch_project, mlflow_store):
    first = retrain(project_root=str(scratch_project))
    assert [r.stage for r in first] == ["make_a", "make_b"]
    assert all(r.ran for r in first)
    assert json.loads((scratch_project / "b.json").read_text()) == {"b": 2}
    second = retrain(project_root=str(scratch_project))
    assert not any(r.ran for r in second)

    client = tracking.client(scratch_project)
    runs = client.search_runs([tracking.experiment_id(client)], filter_string="tags.`bonescan.kind` = 'pipeline'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.mark.slow
def test_served_flow_runs_when_triggered_through_a_real_server(tmp_path, scratch_project, mlflow_store):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),  # this checkout, whatever the venv installs
    }
    (scratch_project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    serve = None
    try:
        _wait_for(f"{api}/health", timeout=180)
        serve = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", "--project-root", str(scratch_project), "--no-schedule"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        script = (
            "import sys\n"
            "from prefect.deployments import run_deployment\n"
            "for _ in range(60):\n"
            "    try:\n"
            "        run = run_deployment('retrain/bonescan-retrain', timeout=240)\n"
            "        break\n"
            "    except Exception as exc:  # deployment not registered yet\n"
            "        import time; time.sleep(2)\n"
            "print(run.state.type.value)\n"
        )
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=400)
        assert out.stdout.strip().splitlines()[-1] == "COMPLETED", out.stdout + out.stderr
        assert (scratch_project / "b.json").is_file()
    finally:
        for proc in (serve, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_the_flow_artifact_names_the_html_report_only_once_it_is_built(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert report_file(str(tmp_path)) is None
    assert "not built" in report_markdown(str(tmp_path))
    page = tmp_path / "reports" / "index.html"
    page.parent.mkdir()
    page.write_text("<html></html>")
    assert report_file(str(tmp_path)) == page
    assert page.as_uri() in report_markdown(str(tmp_path))
