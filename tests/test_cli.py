"""The command line: every contract command exists, has --help, and errors are one clear line."""

from __future__ import annotations

import logging

import pytest

from bonescan.cli import _log_level, build_parser, main

COMMANDS = [
    "phantoms",
    "anonymize",
    "ingest",
    "split",
    "ceiling",
    "secret",
    "plan",
    "summary",
    "gan-pretrain",
    "gan-finetune",
    "synthesize",
    "evaluate",
    "experiments",
    "predict",
    "promote",
    "report",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: bonescan" in capsys.readouterr().out


def test_bad_params_file_is_a_one_line_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("ingest:\n  wrokers: 2\ndatasets: {}\n")
    assert main(["split", "--params", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "ingest.wrokers: unknown key" in err
    assert "Traceback" not in err


def test_secret_is_created_once_and_kept(tmp_path, capsys):
    key = tmp_path / ".secrets" / "anonymize.key"
    assert main(["secret", "--path", str(key)]) == 0
    first = key.read_bytes()
    assert main(["secret", "--path", str(key)]) == 0
    assert key.read_bytes() == first
    assert key.stat().st_mode & 0o077 == 0


def test_under_torchrun_only_the_first_rank_logs_progress():
    assert _log_level(False, {}) == logging.INFO and _log_level(True, {"RANK": "0"}) == logging.DEBUG
    assert _log_level(True, {"RANK": "1"}) == logging.WARNING  # warnings and errors still reach every log


def test_a_missing_anonymization_key_is_a_one_line_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BONESCAN_SECRET", raising=False)
    assert main(["ingest", "--dataset", "target"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_phantom_stage_generates_nothing_when_no_dataset_reads_the_cohort(tmp_path, monkeypatch):
    """A hospital's params point every dataset elsewhere: `dvc repro` must not spend time on phantoms."""
    from pathlib import Path

    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for name, dataset in params["datasets"].items():
        dataset.update(raw_dir=f"/data/hospital/{name}", labels=f"/data/hospital/{name}/labels.csv")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["phantoms"]) == 0
    out = tmp_path / params["phantoms"]["out_dir"]
    assert [p.name for p in out.iterdir()] == ["NOT_USED.txt"]
