"""The offline HTML report: one self-contained page of a run, read from the stages' outputs, that never
makes a network request, never shows an identifier, and says "not run" for a stage that did not run."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bonescan.config import load_params
from bonescan.report.build import NOT_RUN, ReportSources, build_report, render_report
from tests.report_inputs import CLASSES, run_params, write_run_outputs

ROOT = Path(__file__).resolve().parents[2]


class _Resources(HTMLParser):
    """Every URL the page would load (src, href of stylesheets, srcset) and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "srcset", "poster", "data"):
            if attrs.get(key):
                self.urls.append(attrs[key])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Resources:
    parser = _Resources()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def project_params():
    return run_params(load_params(ROOT / "params.yaml"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, project_params) -> Path:
    root = tmp_path_factory.mktemp("run")
    write_run_outputs(root, project_params)
    return root


def test_the_report_shows_every_stage_of_a_finished_run(run, project_params):
    result = build_report(ReportSources.from_params(project_params, run), run / "reports/index.html")
    html = result.path.read_text()
    text = " ".join(_parse(html).text)

    assert result.sections == dict.fromkeys(result.sections, "ok")
    assert 'class="not-run"' not in html
    assert "files seen" in text and "0 leak(s)" in text and "quarantined: not dicom" in text
    assert "Patients in two splits" in text
    assert "admitted" in text and "rejected" in text  # the gate's decisions
    assert "macro_f1 (primary)" in text and "balanced_accuracy" in text
    assert "ECE" in text and "Brier" in text and "temperature-scaled" in text
    assert "ROC AUC" in text and "operating point" in text
    assert "promote" in text and "alias champion" in text
    assert "Model card: bonescan-classifier version 3" in text
    for cls in CLASSES:
        assert f"true {cls}" in text  # a Grad-CAM column per class


def test_the_page_is_self_contained_every_image_inlined_and_nothing_fetched(run, project_params):
    html, _, count = render_report(ReportSources.from_params(project_params, run))
    page = _parse(html)

    assert page.scripts == 0
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)
    assert len(page.images) == count >= 10  # sample grids, curves, reliability, confusion, Grad-CAM cases
    for uri in page.images:
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"https?://", html.replace("https://203.0.113.7", "REMOTE")), "no absolute URL at all"
    assert "203.0.113.7" not in html, "the model card's remote image is dropped, not linked"


def test_the_model_cards_markdown_cannot_inject_html(run, project_params):
    html, _, _ = render_report(ReportSources.from_params(project_params, run))
    assert "<script>" not in html and "&lt;script&gt;alert" in html


def test_the_gradcam_grid_has_a_column_per_class_and_rows_of_correct_and_wrong_cases(run, project_params):
    html, _, _ = render_report(ReportSources.from_params(project_params, run))
    grid = html[html.index('<table class="gradcam">'): html.index("</table>", html.index('<table class="gradcam">'))]
    header = re.findall(r"<th>true (\w+)</th>", grid)
    rows = re.findall(r"<tr><th>(correct|wrong)</th>", grid)
    assert header == CLASSES and rows == ["correct", "wrong"]


def test_a_run_without_gan_or_promotion_renders_those_sections_as_not_run(tmp_path, project_params):
    write_run_outputs(tmp_path, project_params, gan=False, promote=False)
    result = build_report(ReportSources.from_params(project_params, tmp_path), tmp_path / "reports/index.html")
    text = " ".join(_parse(result.path.read_text()).text)

    assert result.sections["gan"] == result.sections["promotion"] == NOT_RUN
    assert result.sections["evaluation"] == "ok"
    assert f"GAN stages: {NOT_RUN}" in text and f"promote: {NOT_RUN}" in text and f"model card: {NOT_RUN}" in text


def test_an_empty_project_gives_a_page_of_not_run_sections_not_an_error(tmp_path, project_params):
    result = build_report(ReportSources.from_params(project_params, tmp_path), tmp_path / "reports/index.html")
    assert set(result.sections.values()) == {NOT_RUN}
    assert result.images == 0 and "<title>" in result.path.read_text()


def test_the_report_stage_reads_only_files_that_are_its_dvc_deps(project_params):
    """What the page shows changes only through its deps, so `dvc repro` rebuilds it when they change."""
    import yaml

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    params = load_params(ROOT / "params.yaml")
    resolved = [_resolve(d, params) for d in stage["deps"]]
    sources = ReportSources.from_params(params, ".")
    read = [*(p for ds in sources.datasets for p in (ds.ingest, ds.phi_scan, ds.split)), sources.gan_report,
            *sources.gan_samples, *sources.clf_metrics.values(), sources.eval_metrics, sources.eval_dir,
            sources.promotion, sources.model_card]  # fmt: skip
    for path in read:
        assert any(Path(path) == Path(d) or Path(d) in Path(path).parents for d in resolved), path
    assert stage["outs"] == ["${report.out}"]


def _resolve(text: str, params) -> str:
    """dvc.yaml's ${a.b.c} interpolation against params."""
    def lookup(match):
        value = params.model_dump(mode="json")
        for part in match.group(1).split("."):
            value = value[part]
        return str(value)

    return re.sub(r"\$\{([^}]+)\}", lookup, text)


def test_bonescan_report_writes_the_page_and_logs_it_to_the_stages_mlflow_run(mlflow_store, monkeypatch):
    import shutil

    from bonescan import tracking
    from bonescan.cli import main

    shutil.copy(ROOT / "params.yaml", mlflow_store / "params.yaml")
    monkeypatch.chdir(mlflow_store)
    assert main(["report"]) == 0
    assert (mlflow_store / "reports/index.html").is_file()

    client = tracking.client(mlflow_store)
    [run] = client.search_runs([tracking.experiment_id(client)], filter_string="tags.`bonescan.stage` = 'report'")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "report")] == ["report/index.html"]
    assert run.data.metrics["section.evaluation"] == 0.0  # nothing had run in this project


@pytest.mark.slow  # a phantom cohort through ingest, split and evaluate: ~1 min on 2 cores
def test_no_name_id_accession_or_raw_path_of_the_phantom_inputs_reaches_the_report(tmp_path, monkeypatch):
    from bonescan.config import DatasetConfig, IngestConfig, PhantomConfig
    from bonescan.data.split import run_split
    from bonescan.dicom.phantom import sample_patient_identity, write_cohort
    from bonescan.evaluate import run_evaluate
    from bonescan.ingest import ingest_dataset
    from tests.classifier_files import write_classifier

    secret, size = b"test-secret-0123456789abcdef", (64, 32)
    cohort_cfg = PhantomConfig(patients=10, chest_patients=0, bone_size=(256, 64))
    cohort = write_cohort(cohort_cfg, tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    base = load_params(ROOT / "params.yaml")
    target = DatasetConfig(**{**base.datasets["target"].model_dump(), "raw_dir": str(tmp_path / "raw/bone"),
                              "labels": str(tmp_path / "raw/bone/labels.csv")})  # fmt: skip
    params = run_params(base.model_copy(update={"datasets": {"target": target}}))
    ingest_dataset("target", target, IngestConfig(workers=1), params.anonymize, size, secret)
    run_split("target", target, params.split, secret=secret)
    write_classifier(tmp_path / "model.pt", target.classes, size)
    run_evaluate(params.evaluate.model_copy(update={"temperature_scaling": False}), target.classes,
                 params.manifest("target"), tmp_path / "model.pt")  # fmt: skip
    html = build_report(ReportSources.from_params(params), params.report.out).path.read_text()
    shown = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)

    assert "0 leak(s)" in shown and "files seen" in shown, "the ingest of the phantoms is in the report"
    identities = [sample_patient_identity(cohort_cfg.seed, "bone", i) for i in range(cohort_cfg.patients)]
    forbidden = {str(tmp_path), "raw/bone", *(s.accession for s in cohort.bone)}
    names = set()  # DICOM names are upper case; as whole words ("MAX" is no leak in "max_diversity_ssim")
    for who in identities:
        names |= set(who.name.split("^")[:2])
        forbidden |= {who.patient_id, who.folder, who.phone, who.address, *who.other_ids}
    forbidden |= {f for s in cohort.bone for f in s.files} | {b.path for b in cohort.bad_files}
    leaked = sorted(value for value in forbidden if value and value.lower() in shown.lower())
    leaked += sorted(name for name in names if re.search(rf"\b{re.escape(name)}\b", shown))
    assert not leaked
