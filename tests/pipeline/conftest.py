"""A scratch DVC project with two tiny stages, so flow tests exercise real `dvc repro` quickly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.stages import stage_environment

DVC_YAML = """\
stages:
  make_a:
    cmd: python -c "open('a.txt', 'w').write('1')"
    outs: [a.txt]
  make_b:
    cmd: python -c "import json; json.dump(dict(b=int(open('a.txt').read()) + 1), open('b.json', 'w'))"
    deps: [a.txt]
    metrics:
      - b.json:
          cache: false
"""


def make_project(path: Path) -> Path:
    (path / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=path, env=stage_environment(), check=True, capture_output=True)
    return path


@pytest.fixture
def scratch_project(tmp_path) -> Path:
    return make_project(tmp_path)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
