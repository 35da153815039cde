"""Servers on loopback for the scale-out tests: started as a user would, stopped with all their children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the project's virtual environment: dvc, mlflow, prefect


class Servers:
    """Long-running commands of one test module, each in its own process group so no child outlives it."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[subprocess.Popen] = []

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def start(
        self, cmd: Sequence[str], health_url: str, env: dict[str, str], timeout: float = 120.0
    ) -> subprocess.Popen:
        """Run `cmd` in the background and wait until `health_url` answers 200."""
        log = self._log_dir / f"{Path(cmd[0]).name}-{len(self._procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(cmd)} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(health_url, timeout=2) as response:
                    if response.status == 200:
                        return proc
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"{health_url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the group we created: the server and its workers
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    running = Servers(tmp_path_factory.mktemp("server-logs"))
    try:
        yield running
    finally:
        running.stop_all()


def run_ok(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command to completion; its output, or a failure that shows it."""
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def run_command():
    return run_ok


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    """The caller's environment with the virtual environment's tools first on PATH."""
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
