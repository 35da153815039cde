"""`dvc plots show` renders offline: the project's DVC config points at an HTML template that carries the vendored
Vega, Vega-Lite and Vega-Embed builds, so the page it writes loads no script, style or image from the network."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / ".dvc" / "offline_plots"
DVC = Path(sys.executable).parent / "dvc"

DVC_YAML = """\
plots:
  - train.csv:
      template: linear
      x: epoch
      y: loss
"""


def _load_build():
    spec = importlib.util.spec_from_file_location("offline_plots_build", OFFLINE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


class _References(HTMLParser):
    """Every URL the page would fetch by itself: script/img/iframe src, link href (script bodies are not markup)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        wanted = {"script": "src", "img": "src", "iframe": "src", "link": "href", "source": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def page_references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "//"))


@pytest.fixture
def plots_project(tmp_path) -> Path:
    """A DVC project with one linear plot and the bonescan DVC config (hence its HTML template)."""
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    shutil.copytree(
        OFFLINE, tmp_path / ".dvc" / "offline_plots", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "train.csv").write_text("epoch,loss\n1,0.9\n2,0.5\n3,0.3\n")
    return tmp_path


def show(project: Path, *args: str) -> str:
    out = project / "out"
    proc = subprocess.run(
        [str(DVC), "plots", "show", "-o", str(out), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (out / "index.html").read_text(encoding="utf-8")


def test_dvc_plots_page_loads_nothing_from_the_network(plots_project):
    html = show(plots_project)

    assert "vegaEmbed(" in html, "the plot itself is on the page"
    assert [url for url in page_references(html) if is_remote(url)] == []
    assert "cdn.jsdelivr.net" not in html
    for entry in build.SCRIPTS:
        assert (OFFLINE / "vendor" / entry.file).read_text(encoding="utf-8") in html, (
            f"{entry.file} is inlined"
        )


def test_without_the_template_dvc_pages_would_load_vega_from_a_cdn(plots_project):
    """What the template is for, and proof that the reference check above sees script URLs."""
    (plots_project / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    remote = [url for url in page_references(show(plots_project)) if is_remote(url)]
    assert remote and all("cdn.jsdelivr.net/npm/vega" in url for url in remote)


def test_vendored_scripts_are_the_recorded_npm_builds_with_their_licences():
    for entry in build.SCRIPTS:
        data = (OFFLINE / "vendor" / entry.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.file
        licence = (OFFLINE / "vendor" / entry.licence).read_text()
        assert "University of Washington Interactive Data Lab" in licence
        assert "Redistribution and use in source and binary forms" in licence  # BSD 3-clause
    assert "d3-array@" in (OFFLINE / "vendor" / "THIRD_PARTY_LICENSES.txt").read_text()


def test_committed_template_is_built_from_the_vendored_scripts():
    assert (OFFLINE / "template.html").read_text(encoding="utf-8") == build.build(), (
        "template.html is stale: run `python .dvc/offline_plots/build.py`"
    )


def test_template_has_dvc_placeholders_but_not_the_cdn_scripts_one():
    template = (OFFLINE / "template.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in template and "{refresh_tag}" in template
    assert "{scripts}" not in template, "DVC would put its CDN <script> tags there"


def test_a_vendored_file_that_differs_from_its_recorded_build_is_refused(tmp_path, monkeypatch):
    entry = build.SCRIPTS[0]
    (tmp_path / entry.file).write_text("/* not vega */")
    monkeypatch.setattr(build, "VENDOR", tmp_path)
    with pytest.raises(ValueError, match=f"not that of vega@{entry.version}"):
        build.build()


def test_a_script_that_would_end_its_script_element_is_refused(tmp_path, monkeypatch):
    code = b"var s = '</script><script src=https://example.org/x.js>';"
    (tmp_path / "x.min.js").write_bytes(code)
    entry = build.Vendored("x.min.js", "x", "1.0.0", "LICENSE.x", hashlib.sha256(code).hexdigest())
    monkeypatch.setattr(build, "VENDOR", tmp_path)
    monkeypatch.setattr(build, "SCRIPTS", (entry,))
    with pytest.raises(ValueError, match="cannot be inlined"):
        build.build()
