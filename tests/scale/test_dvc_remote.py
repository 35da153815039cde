"""A DVC remote as the shared artifact store: what one machine pushes, another pulls back byte for byte,
and outputs marked `push: false` (raw studies, the quarantine list) never leave the machine that made them."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[2]
# phantoms -> ingest@target -> split@target: the cheapest stages, with both kinds of `push: false` output
TARGET = "split@target"

pytestmark = pytest.mark.slow

GIT_IDENTITY = {  # the scratch repo's commit needs an author; the machine's git config may have none
    "GIT_AUTHOR_NAME": "bonescan-test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "bonescan-test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
TINY = {"phantoms": {"patients": 12, "chest_patients": 4}, "ingest": {"workers": 2}}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _files(path: Path) -> dict[str, str]:
    """Relative path -> md5 of every file at or under `path`."""
    if path.is_file():
        return {path.name: _md5(path)}
    return {str(p.relative_to(path)): _md5(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _cached_outs(project: Path) -> tuple[list[str], list[str]]:
    """Paths of the DVC-cached outputs that exist in `project`: (pushed to remotes, kept local)."""
    pushed, local = [], []
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if out.use_cache and (project / out.def_path).exists():
                    (pushed if out.can_push else local).append(out.def_path)
    return pushed, local


def _in_remote(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # DVC 3 remote layout


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, run_command, tool_env) -> tuple[Path, Path]:
    """A scratch project (code, the real dvc.yaml, tiny params) built up to the split, pushed, and committed."""
    base = tmp_path_factory.mktemp("dvc-remote")
    project, remote = base / "project", base / "remote"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = tool_env | GIT_IDENTITY | {"BONESCAN_SECRET": "scale-test-key-0123456789", "BONESCAN_TRACKING": "0"}
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "repro", TARGET],
        ["dvc", "remote", "add", "-d", "store", str(remote)],  # a user writes s3://..., ssh://... here
        ["dvc", "push"],
        ["git", "add", "-A"],
        ["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "pipeline up to the split"],
    ):
        run_command(cmd, project, env)
    return project, remote


@pytest.fixture(scope="module")
def clone(pushed, tmp_path_factory, run_command, tool_env) -> Path:
    """Another machine: a git clone of the project plus `dvc pull`, nothing else."""
    project, _ = pushed
    path = tmp_path_factory.mktemp("other-machine") / "project"
    run_command(["git", "clone", "-q", str(project), str(path)], path.parent, tool_env)
    # --allow-missing: the `push: false` outputs are absent from the remote by design.
    run_command(["dvc", "pull", "--allow-missing"], path, tool_env)
    return path


def test_pulled_outputs_are_identical_to_the_pushed_ones(pushed, clone):
    project, _ = pushed
    shared, _ = _cached_outs(project)
    assert {"data/interim/target", "data/processed/images", "data/processed/manifest.csv"} <= set(shared)
    for out in shared:
        assert _files(clone / out) == _files(project / out), out


def test_local_only_outputs_never_reach_the_remote_or_the_clone(pushed, clone):
    project, remote = pushed
    shared, local = _cached_outs(project)
    assert set(local) == {"data/raw/phantoms", "reports/quarantine.csv"}
    shared_hashes = {md5 for out in shared for md5 in _files(project / out).values()}
    only_local = {md5 for out in local for md5 in _files(project / out).values()} - shared_hashes
    assert len(only_local) > 20  # raw studies, labels with accession numbers, the quarantine list
    assert all(_in_remote(remote, md5) for md5 in shared_hashes)
    assert not any(_in_remote(remote, md5) for md5 in only_local)
    assert not any((clone / out).exists() for out in local)


def test_pulled_clone_is_up_to_date_without_the_raw_data(clone, run_command, tool_env):
    assert "up to date" in run_command(["dvc", "status", TARGET], clone, tool_env)
    # The whole chain, including the stages whose raw inputs stayed behind: nothing would run.
    dry = run_command(["dvc", "repro", "--allow-missing", "--dry", TARGET], clone, tool_env)
    assert "Running stage" not in dry and "up to date" in dry
