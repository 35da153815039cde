"""The DVC stages as the flow sees them: their order, how to run one, and why one failed.

DVC stays the source of truth: stages run through `dvc repro --single-item`, so an unchanged stage
is skipped by DVC's own hashes and dvc.lock is updated as with a plain `dvc repro`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import networkx as nx
from dvc.repo import Repo


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # worth a retry: killed process, lost connection, device hiccup
    LOCKED = "locked"  # another `dvc repro` holds the repo lock: retrying would only race it
    ERROR = "error"  # bad data, bad params or a bug: a retry gives the same result


# Messages of failures that a later attempt can survive.
_TRANSIENT = re.compile(
    r"Connection (refused|reset|aborted)|Temporary failure|temporarily unavailable|timed out|"
    r"Too many open files|CUDA error: (out of memory|an illegal memory access)|NCCL error|"
    r"Resource temporarily unavailable|BrokenPipeError",
    re.IGNORECASE,
)
# DVC 3.67's lock messages: the repository lock (dvc/lock.py FAILED_TO_LOCK_MESSAGE, "Unable to acquire
# lock. Most likely another DVC process is running ...") and a stage's read/write lock on its deps and
# outs (dvc/rwlock.py: "'<path>' is busy, it is being blocked by:\n  (PID n): <cmd>"), both LockError.
_LOCKED = re.compile(
    r"Unable to acquire lock|is busy, it is being blocked by|is locked by|LockError", re.IGNORECASE
)
_LOCK_HINT = (
    "another DVC process holds a lock on this repository or on this stage's files (not retried: a retry "
    "would race it); wait for it to finish, or, if no such process exists, remove .dvc/tmp/rwlock and "
    ".dvc/tmp/lock"
)


class StageFailed(RuntimeError):
    """A stage's `dvc repro` exited non-zero; `kind` decides whether a retry makes sense."""

    def __init__(self, stage: str, kind: FailureKind, returncode: int, tail: str) -> None:
        hint = f": {_LOCK_HINT}" if kind is FailureKind.LOCKED else ""
        super().__init__(f"stage {stage!r} failed ({kind.value}, exit {returncode}){hint}:\n{tail}")
        self.stage, self.kind, self.returncode = stage, kind, returncode


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool  # False when DVC found nothing changed
    seconds: float
    output: str


def classify_failure(returncode: int, output: str) -> FailureKind:
    if _LOCKED.search(output):
        return FailureKind.LOCKED
    # Negative: killed by a signal; 137/143: SIGKILL/SIGTERM seen through a shell (OOM killer, preemption).
    if returncode < 0 or returncode in (137, 143) or _TRANSIENT.search(output):
        return FailureKind.TRANSIENT
    return FailureKind.ERROR


def stage_order(project_root: str | Path = ".") -> list[str]:
    """Every stage of dvc.yaml in dependency order (foreach items as `name@item`)."""
    root = Path(project_root).resolve()
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        return [_address(stage, root) for stage in reversed(list(nx.topological_sort(graph)))]


def _address(stage, root: Path) -> str:
    """A stage's name as `dvc repro` takes it when run from the project root."""
    dvcfile = Path(stage.dvcfile.path).resolve().relative_to(root)
    return stage.name if dvcfile == Path("dvc.yaml") else f"{dvcfile}:{stage.name}"


def dvc_command(*args: str) -> list[str]:
    """`dvc ARGS` of this interpreter's environment (a flow worker's PATH may lack the venv)."""
    return [str(Path(sys.executable).parent / "dvc"), *args]


def stage_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with this interpreter's bin first, so `dvc` and `bonescan` resolve to it."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_stage(
    stage: str,
    project_root: str | Path = ".",
    env: dict[str, str] | None = None,
    force: bool = False,
    timeout: float | None = None,
) -> StageResult:
    """`dvc repro --single-item STAGE`; raises StageFailed with the failure classified."""
    import time

    cmd = dvc_command("repro", "--single-item", stage)
    if force:
        cmd.append("--force")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=project_root, env=stage_environment(env), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise StageFailed(stage, FailureKind.TRANSIENT, -1, f"timed out after {exc.timeout} s") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise StageFailed(stage, classify_failure(proc.returncode, output), proc.returncode, tail)
    ran = f"Running stage '{stage}'" in output
    return StageResult(stage, ran, time.monotonic() - start, output)


def push_outputs(project_root: str | Path = ".", remote: str | None = None, timeout: float | None = None) -> str:
    """`dvc push [-r REMOTE]`: a worker's results reach the shared artifact store, not only its own cache.

    Outputs marked `push: false` in dvc.yaml (raw data, the quarantine list) are never sent.
    Raises StageFailed("push", ...) with the failure classified (a lost connection is transient).
    """
    cmd = dvc_command("push", *(["--remote", remote] if remote else []))
    try:
        proc = subprocess.run(
            cmd, cwd=project_root, env=stage_environment(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise StageFailed("push", FailureKind.TRANSIENT, -1, f"timed out after {exc.timeout} s") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise StageFailed("push", classify_failure(proc.returncode, output), proc.returncode, tail)
    return output.strip()


def _scalars(data: object, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted keys -> numbers, strings and booleans of nested dicts (lists, e.g. per-file details, are left out)."""
    if isinstance(data, dict):
        return [row for key, value in data.items() for row in _scalars(value, f"{prefix}{key}.")]
    if isinstance(data, list) or data is None:
        return []
    return [(prefix.rstrip("."), data)]


def render_metrics(files: dict[str, dict]) -> str:
    """One two-column markdown table per metrics file (DVC's own table is one row per file, thousands wide)."""
    parts = []
    for name, data in files.items():
        rows = _scalars(data)
        if not rows:
            continue
        lines = [f"### {name}", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                  for key, value in rows]  # fmt: skip
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "no metrics yet"


def metrics_markdown(project_root: str | Path = ".") -> str:
    """Every stage's summary metrics (`dvc metrics show --json`) as markdown tables, one per file."""
    proc = subprocess.run(
        dvc_command("metrics", "show", "--json"),
        cwd=project_root,
        env=stage_environment(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"`dvc metrics show` failed:\n\n```\n{proc.stderr}\n```"
    workspace = next(iter(json.loads(proc.stdout or "{}").values()), {})
    files = {name: entry.get("data", {}) for name, entry in workspace.get("data", {}).items()}
    return render_metrics(files)
