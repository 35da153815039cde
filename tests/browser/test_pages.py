"""What a user sees, checked in a real browser with no network: the `dvc plots show` page, the MLflow UI's page of
the registered model with its `champion` alias, the Prefect UI's page of the served `retrain` deployment with its
cron schedule, and the offline HTML report. The servers run as a user starts them, on loopback; each page must show
its content (text, and pixels that are not a blank page) without a single request leaving the machine."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.browser.conftest import ROOT, non_background_fraction
from tests.scale.conftest import Servers

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(480)]

BIN = Path(sys.executable).parent
MODEL = "bonescan-classifier"  # DESIGN.md's registered model name and alias
ALIAS = "champion"
DEPLOYMENT = "retrain/bonescan-retrain"  # pipeline.serve's deployment of the flow `retrain`
CRON = "0 3 29 2 *"  # never fires during a test: the page shows the schedule, nothing runs
CRON_IN_WORDS = "At 03:00 AM on day 29 of the month, only in February"  # how the Prefect UI writes it
PAGE_TIMEOUT_MS = 60_000  # the UIs are single-page apps: their data arrives after load, slowly on 2 cores
# Distinct colours among every 3rd pixel of each canvas matching a selector: a chart's axes, marks and legend
# give dozens, an empty or failed one one or two.
CANVAS_COLOURS = """selector => [...document.querySelectorAll(selector)].map(c => {
    if (!c.width || !c.height) return -1;  // a chart with no data: Vega draws nothing
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length; i += 4 * 3) seen.add(data.slice(i, i + 4).join());
    return seen.size;
})"""


def _registered_champion(db: Path, artifacts: Path) -> None:
    """A run with a tiny pyfunc model, registered as MODEL, version 1 aliased ALIAS."""
    import mlflow.pyfunc
    from mlflow import MlflowClient

    class Identity(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[float]) -> list[float]:
            return model_input

    model_dir = artifacts.parent / "model"
    mlflow.pyfunc.save_model(model_dir, python_model=Identity(), pip_requirements=[])
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    experiment = client.create_experiment("bonescan", artifact_location=artifacts.as_uri())
    run = client.create_run(experiment, run_name="clf_finetune")
    client.log_metric(run.info.run_id, "macro_f1", 0.7)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, ALIAS, version.version)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, request) -> tuple[str, str]:
    """`mlflow ui` on a store holding the champion, `prefect server start` (UI on) and `python -m pipeline.serve`
    serving `retrain` on CRON; their base URLs. Both servers boot while the MLflow store is being written."""
    running = Servers(tmp_path_factory.mktemp("browser-server-logs"))
    tmp = tmp_path_factory.mktemp("browser-servers")
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    prefect_port, mlflow_port = running.free_port(), running.free_port()
    prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    prefect_env = env | {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": f"{prefect_url}/api",
        "PREFECT_UI_API_URL": f"{prefect_url}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true",
        "BONESCAN_TRACKING": "0",
    }
    db = tmp / "mlflow.db"
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(2) as pool:
            # --no-services: the API and UI without the scheduler and other loops, which would only compete
            # for the CPU and could create runs of the deployment; the page reads the schedule from the API.
            booting = [pool.submit(
                running.start,
                [str(BIN / "prefect"), "server", "start", "--no-services",
                 "--host", "127.0.0.1", "--port", str(prefect_port)],
                f"{prefect_url}/api/health", prefect_env, 240,
            )]  # fmt: skip
            shutil.copy(request.getfixturevalue("empty_mlflow_db"), db)  # (its migrations run meanwhile)
            booting.append(pool.submit(
                running.start,
                [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}",
                 "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                f"{mlflow_url}/health", env, 180,
            ))  # fmt: skip
            _registered_champion(db, tmp / "mlartifacts")  # the UI reads the store per request
            log.info("MLflow store written after %.0f s", time.monotonic() - started)
            for server in booting:
                server.result()
        log.info("mlflow ui and prefect server up after %.0f s", time.monotonic() - started)

        project = tmp / "project"  # where a scheduled run would go: params only, so nothing could run there
        project.mkdir()
        shutil.copy(ROOT / "params.yaml", project / "params.yaml")
        # `-m pipeline.serve` imports the project's `pipeline` package, wherever pytest was started from.
        serve_env = prefect_env | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        }
        running.start(
            [sys.executable, "-m", "pipeline.serve", "--cron", CRON, "--project-root", str(project)],
            f"{prefect_url}/api/deployments/name/{DEPLOYMENT}", serve_env, 120,
        )  # fmt: skip
        log.info("deployment %s served after %.0f s", DEPLOYMENT, time.monotonic() - started)
        yield mlflow_url, prefect_url
    finally:
        running.stop_all()


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _assert_painted(png: bytes, what: str) -> None:
    fraction = non_background_fraction(png)
    assert fraction > 0.02, f"{what}: only {fraction:.1%} of the screenshot differs from the background"


def _charts_without_data(dvc_yaml: dict) -> int:
    """Vega charts of `dvc plots show` (top-level and stage plots) none of whose data files hold a row
    in this checkout: their stage has not written them yet, or wrote only the header (stage 1 with
    `clf.pretrain_source: none` trains no epoch), and Vega draws an empty chart."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def resolved(path: str) -> Path:
        def value(match: re.Match) -> str:
            node = params
            for part in match.group(1).split("."):
                node = node[part]
            return str(node)

        return ROOT / re.sub(r"\$\{([\w.]+)\}", value, path)

    missing = 0
    for entry in dvc_yaml["plots"]:
        if isinstance(entry, str):
            continue  # an image folder, not a Vega chart
        ((name, spec),) = entry.items()
        sources = list(spec["y"]) if isinstance(spec.get("y"), dict) else [name]
        missing += not any(_has_rows(resolved(source)) for source in sources)
    for stage in dvc_yaml["stages"].values():
        for entry in stage.get("do", stage).get("plots", []):
            missing += not _has_rows(resolved(entry if isinstance(entry, str) else next(iter(entry))))
    return missing


def _has_rows(path: Path) -> bool:
    """A plot folder, or a data file with more than its header line."""
    if path.is_dir():
        return True
    return path.is_file() and (path.suffix != ".csv" or len(path.read_text().splitlines()) > 1)


def test_dvc_plots_page_draws_every_chart_offline(browser, screenshots, tmp_path):
    out = tmp_path / "dvc_plots"
    proc = subprocess.run(
        [str(BIN / "dvc"), "plots", "show", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (out / "index.html").read_text(encoding="utf-8")
    charts = html.count("vegaEmbed(")  # one call per Vega chart DVC wrote
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    image_dirs = [p for p in dvc_yaml["plots"] if isinstance(p, str) and p.endswith("/samples")]
    assert charts >= 3 and image_dirs, "the project's plots: training curves and GAN sample grids"

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((out / "index.html").as_uri())  # returns on `load`: every <script> has been fetched by then
    assert browser.remote_requests() == []
    page.wait_for_function(
        f"document.querySelectorAll('.vega-embed canvas').length >= {charts}", timeout=PAGE_TIMEOUT_MS
    )
    _assert_painted(page.screenshot(path=screenshots / "dvc-plots.png", full_page=True), "dvc plots page")

    assert errors == []
    colours = page.evaluate(CANVAS_COLOURS, ".vega-embed canvas")
    # Every chart with data is drawn; only charts whose files no run has written yet are empty.
    assert len(colours) == charts and colours.count(-1) == _charts_without_data(dvc_yaml), colours
    assert min(c for c in colours if c >= 0) > 10, colours
    text = page.inner_text("body")
    assert all(f"{folder}/" in text for folder in image_dirs), "each sample grid is captioned with its path"
    assert page.evaluate(
        "[...document.images].length > 0 && [...document.images].every(i => i.naturalWidth > 0)"
    )


def test_mlflow_model_page_shows_the_champion(servers, browser, screenshots):
    mlflow_url, _ = servers
    page = browser.new_page()
    page.goto(f"{mlflow_url}/#/models/{MODEL}")
    champion = page.get_by_text(re.compile(rf"^@\s*{ALIAS}$"))
    champion.wait_for(timeout=PAGE_TIMEOUT_MS)
    row = page.get_by_role("row").filter(has=champion)
    text = page.inner_text("body")
    _assert_painted(page.screenshot(path=screenshots / "mlflow-registered-model.png"), "MLflow model page")

    assert MODEL in text
    assert "Version 1" in row.inner_text(), "the alias sits on the registered version"
    assert browser.remote_requests() == []


def test_prefect_deployment_page_shows_the_cron_schedule(servers, browser, screenshots):
    _, prefect_url = servers
    deployment = _json(f"{prefect_url}/api/deployments/name/{DEPLOYMENT}")
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [CRON]

    page = browser.new_page()
    page.goto(f"{prefect_url}/deployments/deployment/{deployment['id']}")
    page.get_by_text(CRON_IN_WORDS).wait_for(timeout=PAGE_TIMEOUT_MS)
    text = page.inner_text("body")
    _assert_painted(page.screenshot(path=screenshots / "prefect-deployment.png"), "Prefect deployment page")

    assert "bonescan-retrain" in text and "retrain" in text
    assert "pipeline/flows.py:retrain" in text, "the served flow's entrypoint"
    assert browser.remote_requests() == []


def test_html_report_renders_offline(browser, screenshots, tmp_path):
    """`bonescan report` on a finished run's outputs (made in the test: a real tiny evaluation, the other
    stages' files) opens with every section drawn and every image decoded, and fetches nothing."""
    from bonescan.config import load_params
    from bonescan.report.build import ReportSources, build_report
    from tests.report_inputs import CLASSES, run_params, write_run_outputs

    params = run_params(load_params(ROOT / "params.yaml"))
    write_run_outputs(tmp_path, params)
    report = build_report(ReportSources.from_params(params, tmp_path), tmp_path / params.report.out).path

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(report.as_uri())  # returns on `load`: scripts, styles and images have been fetched
    assert browser.remote_requests() == []
    assert browser.requests == [report.as_uri()], "the page itself, nothing beside it (images are inlined)"
    _assert_painted(page.screenshot(path=screenshots / "html-report.png", full_page=True), "HTML report")

    assert errors == []
    assert page.title() == params.report.title
    text = page.inner_text("body")
    assert "bonescan" in text.lower()
    for heading in ("Data: ingest and PHI scan", "Split", "GAN oversampling", "Classifier training", "Test metrics",
                    "ROC, precision-recall and reliability", "Confusion matrix", "Grad-CAM", "Promotion decision",
                    "Model card"):  # fmt: skip
        assert heading in text
    assert "macro_f1 (primary)" in text and "ECE" in text and "alias champion" in text
    assert all(f"true {cls}" in text for cls in CLASSES)
    images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) >= 10 and all(done and w > 0 and h > 0 for done, w, h in images), images
    canvases = page.evaluate(CANVAS_COLOURS, "canvas")
    assert all(colours > 10 for colours in canvases), f"a blank chart in the report: {canvases}"
