"""Specification of the runtime helpers: device choice, torchrun's environment, DDP unwrap, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bonescan.runtime import (
    atomic_path,
    atomic_write,
    atomic_write_json,
    autocast,
    cpu_budget,
    dist_env,
    is_main_process,
    resolve_device,
    set_torch_threads,
    unwrap,
)


def test_auto_picks_the_cpu_without_a_gpu_and_cuda_without_one_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(RuntimeError, match="clf.device is 'cuda' but no CUDA device"):
        resolve_device("cuda", "clf.device")
    with pytest.raises(ValueError, match="gan.train.device"):
        resolve_device("tpu", "gan.train.device")


def test_auto_takes_this_process_local_rank_gpu_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)


def test_torchrun_environment_decides_rank_zero(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert is_main_process() and not dist_env().distributed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not is_main_process() and dist_env().distributed and dist_env().world_size == 2


def test_unwrap_returns_a_plain_module_unchanged():
    net = nn.Linear(2, 2)
    assert unwrap(net) is net


def test_autocast_is_off_on_the_cpu():
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled()


def test_an_atomic_write_replaces_the_file_whole_and_a_failed_one_leaves_it_intact(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"a": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_the_cpu_budget_is_capped_by_a_cgroup_quota(tmp_path):
    """A container limited to 1.5 CPUs on a bigger host gets one thread, not the host's core count."""
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cpu_budget(quota) == 1
    quota.write_text("max 100000\n")
    assert cpu_budget(quota) == cpu_budget(tmp_path / "absent") >= 1


def test_torch_threads_follow_params_or_share_the_budget_between_local_processes(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
        assert set_torch_threads(None) == 1  # never zero threads
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert set_torch_threads(None) == cpu_budget() == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's explicit environment wins over the budget
        assert set_torch_threads(None) == 1
    finally:
        torch.set_num_threads(before)
