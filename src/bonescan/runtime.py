"""Where and how code runs: device choice, torchrun's process group, DDP unwrap, autocast, atomic writes.

The one home of these helpers (torchvision's references keep theirs in `utils.py`): the classifier and
GAN training loops, evaluation, prediction, tracking and the CLI all call them, so a fix to device
selection or to crash-safe writing is made once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistEnv",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "autocast",
    "cpu_budget",
    "dist_env",
    "is_main_process",
    "process_group",
    "resolve_device",
    "set_torch_threads",
    "unwrap",
]


# --------------------------------------------------------------------------- devices and processes


def cpu_budget(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU quota.

    `os.cpu_count()` (and torch's default thread count) can report the host's cores inside a
    container limited to two, and torch then runs a dozen threads on two CPUs, which measured 10x
    slower than one thread per process.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(float(quota) // float(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def set_torch_threads(threads: int | None, processes: int | None = None) -> int:
    """Set torch's intra-op threads: `threads`, else OMP_NUM_THREADS, else the CPU budget shared by
    this node's processes (`processes`, default torchrun's LOCAL_WORLD_SIZE, 1 outside torchrun).

    Returns the count set.
    """
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    if threads is None:
        local = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        threads = max(1, cpu_budget() // max(1, local))
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    return DistEnv(rank, world, local)


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the one process that writes metrics and logs runs."""
    return dist_env().is_main


def resolve_device(choice: str, key: str = "device") -> torch.device:
    """"auto" -> this process's CUDA device when present, else the CPU; "cuda" without a GPU fails.

    Args:
        choice: "auto", "cpu" or "cuda" (a params value).
        key: the dotted params key `choice` came from, named in the error.

    Raises:
        RuntimeError: `choice` is "cuda" and no CUDA device is available.
    """
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", dist_env().local_rank)
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{key} must be 'auto', 'cpu' or 'cuda', got {choice!r}")
    return torch.device("cpu")


@contextmanager
def process_group(device: torch.device) -> Iterator[DistEnv]:
    """Join torchrun's process group for the duration of the block (a no-op for a single process).

    NCCL on CUDA, gloo on the CPU. A group that is already initialised (an outer stage joined it) is
    used as is and left for its owner to destroy, so nested blocks never tear it down early.
    """
    env = dist_env()
    if not env.distributed or dist.is_initialized():
        yield env
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield env
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (the one to save, inspect or sample from)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def autocast(device: torch.device, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on CUDA when `enabled`; full precision on the CPU (bf16 CPU kernels are slower there)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# --------------------------------------------------------------------------- crash-safe files


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it when the block succeeds.

    A kill or an exception mid-write leaves the previous file intact and no partial file under the
    final name; the temporary file is removed on failure. Readers (DVC, a resuming run, another
    stage) therefore only ever see a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, payload: object) -> Path:
    """Indented JSON with a trailing newline, written atomically."""
    return atomic_write(path, json.dumps(payload, indent=2) + "\n")
