"""A training stage on several GPUs: its command run by hand under torchrun (DDP, one process per device),
then recorded with `dvc commit`, so DVC treats the result exactly as if `dvc repro` had produced it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = {
    "base": {"image_size": [64, 32]},
    "phantoms": {"patients": 6, "chest_patients": 12},
    "ingest": {"workers": 2},
    "clf": {"model": "soft_threshold_net", "pretrain_source": "source", "pretrain": {"epochs": 1, "batch_size": 4}},
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def project(tmp_path, run_command, tool_env) -> tuple[Path, dict[str, str]]:
    """A scratch project with the source domain ingested and split: clf_pretrain's inputs, nothing more."""
    shutil.copytree(
        ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = tool_env | {
        "BONESCAN_SECRET": "scale-test-key-0123456789",
        "BONESCAN_TRACKING": "0",
        "OMP_NUM_THREADS": "1",  # two ranks on a 2-core CI machine
        "COLUMNS": "200",  # one log record per line
    }
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "repro", "split@source"],
    ):
        run_command(cmd, tmp_path, env)
    return tmp_path, env


def test_stage_trained_under_torchrun_and_committed_is_up_to_date(project, run_command):
    path, env = project
    out = run_command(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
         str(BIN / "bonescan"), "clf-pretrain", "--no-progress"],
        path, env, timeout=240,
    )  # fmt: skip
    assert "DistributedDataParallel: 2 processes (gloo)" in out
    assert out.count("clf_pretrain epoch 1/1") == 1, "rank 0 alone logs progress"
    assert (path / "models" / "clf_pretrain" / "model.pt").is_file()

    run_command(["dvc", "commit", "--force", "clf_pretrain"], path, env)
    assert "clf_pretrain" in yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    assert "up to date" in run_command(["dvc", "status", "clf_pretrain"], path, env)
    dry = run_command(["dvc", "repro", "--dry", "clf_pretrain"], path, env)
    assert "Running stage" not in dry
