"""The end-of-run summary reads the stages' own output files and says plainly what has not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bonescan.config import load_params
from bonescan.summary import (
    evaluation_table,
    gan_table,
    promotion_line,
    render_summary,
    report_line,
    training_table,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


def _text(renderable) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_every_table_says_not_run_yet_in_an_empty_project(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    console = Console(width=200, record=True)
    render_summary(params, console)
    text = console.export_text()
    assert text.count("not run yet") >= 5
    assert "nothing registered yet" in text


def test_evaluation_table_shows_each_metric_with_its_interval(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(Path(params.evaluate.metrics_file), {"macro_f1": 0.674, "macro_f1_ci_low": 0.487, "macro_f1_ci_high": 0.795,
                                                "recall_benign": 0.333})
    text = _text(evaluation_table(params))
    assert "0.674" in text and "0.487 - 0.795" in text
    assert "recall_benign" in text


def test_gan_table_lists_both_architectures_and_the_gate_decision(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls = {"ssim_to_real": 0.14, "diversity_ssim": 0.69, "fidelity": 0.97, "judge_real_recall": 0.456,
           "tstr_recall": 1.0, "admitted": True}
    rejected = {**cls, "fidelity": 0.0, "admitted": False}
    _write(Path(params.gan.report), {
        "archs": {"mu_acgan": {"classes": {"benign": cls}}, "acgan": {"classes": {"benign": rejected}}},
        "synthesis": {"arch": "mu_acgan", "written": {"benign": 12}},
    })
    text = _text(gan_table(params))
    assert "yes (12 written)" in text and "0.456" in text  # the judge's recall on real images
    assert "acgan" in text and " no " in text
    assert "12 images written from mu_acgan" in text


def test_gan_table_names_no_architecture_when_the_gate_admitted_nothing(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rejected = {"ssim_to_real": 0.14, "diversity_ssim": 0.69, "fidelity": 0.1, "admitted": False}
    _write(Path(params.gan.report), {
        "archs": {"acgan": {"classes": {"benign": rejected}}},
        "synthesis": {"arch": "acgan", "written": {"benign": 0}},  # auto's tie-break among refused generators
    })
    text = _text(gan_table(params))
    assert "no synthetic images written" in text and "from acgan" not in text


def test_training_table_reads_both_transfer_stages(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(Path(params.clf.metrics_dir) / "clf_finetune.json", {"init": "source", "train_images": 1056,
                                                               "best_epoch": 7, "val_macro_f1": 0.622})
    text = _text(training_table(params))
    assert "1056" in text and "0.622" in text
    assert "clf_pretrain" in text and "not run yet" in text


def test_promotion_line_states_version_and_reason(tmp_path):
    path = tmp_path / "promotion.json"
    _write(path, {"registered_model": "bonescan-classifier", "version": "3", "promoted": False,
                  "reason": "gain below the required 0.0100"})
    line = promotion_line(path)
    assert "version 3 kept as challenger" in line and "gain below" in line


def test_summary_names_the_html_report_once_it_exists(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "not built yet" in report_line(params)
    Path(params.report.out).parent.mkdir(parents=True, exist_ok=True)
    Path(params.report.out).write_text("<html></html>")
    console = Console(width=200, record=True)
    render_summary(params, console)
    assert f"HTML report: {params.report.out}" in console.export_text()
