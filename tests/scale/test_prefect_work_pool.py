"""The `retrain` flow on a Prefect work pool: deployed from a project checkout with the cron of params, run by
a worker process (as on another machine) that polls the pool, loads the flow from the checkout and runs its
DVC stages there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "bonescan-test-pool"
CRON = "0 3 29 2 *"  # a schedule that never fires during a test: only the triggered run happens

DVC_YAML = """\
stages:
  make_a:
    cmd: python -c "open('a.txt', 'w').write('1')"
    outs: [a.txt]
"""


@pytest.fixture(scope="module")
def prefect_api(servers, tmp_path_factory, tool_env) -> tuple[str, dict[str, str]]:
    """A Prefect server on loopback and the environment that points clients and workers at it."""
    port = servers.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = tool_env | {
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "BONESCAN_TRACKING": "0",  # MLflow is not what this test is about
    }
    env.pop("PYTHONPATH", None)  # the worker must find the flow's code in the checkout itself
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    servers.start(cmd, f"{api}/health", env=env, timeout=180)
    return api, env


@pytest.fixture
def checkout(tmp_path, run_command, tool_env) -> Path:
    """A project checkout as a worker machine holds it: pipeline code, params, a (tiny) dvc.yaml, DVC init'ed."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["orchestration"]["cron"] = CRON
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_command(cmd, tmp_path, tool_env)
    return tmp_path


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_worker_runs_the_deployed_flow_in_the_checkout(prefect_api, checkout, run_command):
    api, env = prefect_api
    prefect = str(BIN / "prefect")
    run_command([prefect, "work-pool", "create", POOL, "--type", "process"], checkout, env)
    run_command([sys.executable, "-m", "pipeline.deploy", "--pool", POOL], checkout, env)

    deployment = _get(f"{api}/deployments/name/retrain/bonescan-retrain")
    assert deployment["work_pool_name"] == POOL
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [CRON]
    assert deployment["parameters"]["project_root"] == str(checkout.resolve())

    out = run_command([prefect, "deployment", "run", "retrain/bonescan-retrain"], checkout, env)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    # --run-once: poll the pool once, run what is due, wait for it, exit (a real worker keeps polling).
    run_command(
        [prefect, "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"], checkout.parent, env
    )

    flow_run = _get(f"{api}/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["work_pool_name"] == POOL
    assert (checkout / "a.txt").read_text() == "1"
    assert "make_a" in (checkout / "dvc.lock").read_text()
    assert not (checkout / "mlflow.db").exists(), (
        "the worker's environment (BONESCAN_TRACKING=0) reaches the flow"
    )


def test_deploying_to_a_missing_pool_fails_naming_it(prefect_api, checkout):
    _, env = prefect_api
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.deploy", "--pool", "no-such-pool"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "no Prefect work pool 'no-such-pool'" in proc.stderr
    assert "prefect work-pool create no-such-pool --type process" in proc.stderr
