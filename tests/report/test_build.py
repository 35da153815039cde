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
    assert "Images written from" in text and "benign 5" in text
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
    dates = {d for s in cohort.bone for f in s.files for d in re.findall(r"(?<!\d)(?:19|20)\d{6}(?!\d)", f)}
    assert dates, "the study folders are named by their StudyDate"
    forbidden |= dates | {f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in dates}  # as DICOM stores it, and as ISO
    forbidden |= {f"{who.birth_date:%Y%m%d}" for who in identities} | {who.institution[0] for who in identities}
    leaked = sorted(value for value in forbidden if value and value.lower() in shown.lower())
    leaked += sorted(name for name in names if re.search(rf"\b{re.escape(name)}\b", shown))
    assert not leaked


# --------------------------------------------------------------------------- hostile inputs

HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"
QUOTE = '" onmouseover="alert(3)'
BAD_CLASS = f"benign{HOSTILE}"  # a class name is any string params give
PATIENT = "DOE_JOHN_19420314"


def _rewrite(value, old: str, new: str):
    """JSON value with every key and string equal to or ending in `old` renamed (metric keys: recall_benign)."""
    if isinstance(value, dict):
        return {(k[: -len(old)] + new if k.endswith(old) else k): _rewrite(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, old, new) for v in value]
    return new if value == old else value


def _edit(path: Path, change) -> None:
    import json

    data = _rewrite(json.loads(path.read_text()), "benign", BAD_CLASS)
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def hostile(run, tmp_path, project_params):
    """The finished run with a hostile string in every field the page shows, and a raw path next to its inputs."""
    import dataclasses
    import shutil

    import pandas as pd

    root = tmp_path / "run"
    shutil.copytree(run, root)
    sources = ReportSources.from_params(project_params, root)
    for ds in sources.datasets:
        _edit(ds.ingest, lambda d: d.update({f"quarantined_{HOSTILE}": 1}))
        _edit(ds.split, lambda d: None)
        (ds.ingest.parent / "quarantine.csv").write_text(f"file,reason\n{PATIENT}/IMG0001.dcm,not_dicom\n")
    _edit(sources.eval_metrics, lambda d: None)
    _edit(sources.eval_dir / "summary.json", lambda d: d.update(
        {"model": HOSTILE, "fingerprint": QUOTE, "notes": [SCRIPT], "decision": {"kind": SCRIPT}}))
    _edit(sources.gan_report, lambda d: d.update(
        {"archs": {HOSTILE: next(iter(d["archs"].values()))}, "gate": {**d["gate"], "min_fidelity": SCRIPT}}))
    for path in sources.clf_metrics.values():
        _edit(path, lambda d: d.update({"model": SCRIPT, "init": QUOTE}))
    _edit(sources.promotion, lambda d: d.update(
        {"reason": SCRIPT, "registered_model": HOSTILE, "aliases_after": {HOSTILE: QUOTE}}))
    with sources.model_card.open("a") as card:
        card.write(f"\n[open](javascript:alert(4)) <iframe src=x></iframe> {HOSTILE}\n")
    cases_path = sources.eval_dir / "gradcam" / "cases.csv"
    cases = pd.read_csv(cases_path, dtype=str).replace({"benign": BAD_CLASS})
    cases["layer"] = QUOTE
    cases.to_csv(cases_path, index=False)
    datasets = tuple(dataclasses.replace(ds, name=HOSTILE, classes=(*ds.classes[:2], BAD_CLASS))
                     for ds in sources.datasets)  # fmt: skip
    return dataclasses.replace(sources, title=SCRIPT + HOSTILE, classes=(*sources.classes[:2], BAD_CLASS),
                               datasets=datasets)  # fmt: skip


class _Markup(_Resources):
    """Also every tag and attribute name: what a browser would build from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self.links += [value or "" for name, value in attrs if tag == "a" and name == "href"]


def test_a_hostile_string_in_any_input_is_shown_as_text_never_as_markup(hostile):
    html, sections, _ = render_report(hostile)
    page = _Markup()
    page.feed(html)
    text = "".join(page.text)

    assert sections["evaluation"] == sections["gradcam"] == sections["gan"] == sections["promotion"] == "ok"
    assert page.scripts == 0 and not {"iframe", "object", "embed", "form", "base"} & set(page.tags)
    assert not [a for a in page.attributes if a.startswith("on")], "no event handler was injected"
    assert all(link.startswith("#") for link in page.links), "no javascript: or remote link"
    assert all(url.startswith("data:image/png;base64,") for url in page.urls)
    # every field shows the string itself, escaped: title, dataset, class, reason, GAN arch, models, promotion, card
    assert text.count(HOSTILE) >= 10 and text.count(SCRIPT) >= 5 and text.count(QUOTE) >= 3
    assert f"true {BAD_CLASS}" in text and f"quarantined: {HOSTILE}" in text
    assert PATIENT not in html, "quarantine.csv, which names raw files, is never read"


def test_the_policy_forbids_scripts_remote_fetches_and_form_or_base_targets(run, project_params):
    html, _, _ = render_report(ReportSources.from_params(project_params, run))
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives == {"default-src": "'none'", "img-src": "data:", "style-src": "'unsafe-inline'",
                          "base-uri": "'none'", "form-action": "'none'"}  # fmt: skip
    assert html.index("Content-Security-Policy") < html.index("<title>")  # before anything data-derived


def test_an_image_named_outside_its_folder_is_not_inlined(hostile):
    import os

    import pandas as pd
    from PIL import Image

    outside = hostile.eval_dir.parents[1] / "data/raw/radiograph.png"  # a raw image, burned-in text and all
    outside.parent.mkdir(parents=True)
    Image.new("L", (8, 8), 200).save(outside)
    cases_path = hostile.eval_dir / "gradcam" / "cases.csv"
    cases = pd.read_csv(cases_path, dtype=str)
    cases.loc[0, "file"] = os.path.relpath(outside, cases_path.parent)  # ../../../data/raw/radiograph.png
    cases.to_csv(cases_path, index=False)
    (hostile.gan_samples[0] / "linked_final.png").symlink_to(outside)
    with hostile.model_card.open("a") as card:
        card.write(f"\n![raw]({outside}) ![raw]({os.path.relpath(outside, hostile.model_card.parent)})\n")

    html, _, _ = render_report(hostile)
    assert base64.b64encode(outside.read_bytes()).decode() not in html


def test_a_malformed_stage_output_shows_as_not_run_or_a_dash_never_fails_the_report(hostile):
    import json

    (hostile.eval_dir / "gradcam" / "cases.csv").write_text("image_id,label\nx\n")  # columns missing
    hostile.promotion.write_text("[1, 2]")  # JSON, but no object
    hostile.model_card.unlink()
    hostile.gan_report.write_text(json.dumps({**json.loads(hostile.gan_report.read_text()), "gate": {}}))
    html, sections, _ = render_report(hostile)
    assert sections["gradcam"] == sections["promotion"] == NOT_RUN and sections["evaluation"] == "ok"
    assert "Gate: fidelity &ge; –, label lift &ge; –" in html
