"""Specification of the ordered process pool: input order kept, a dying worker survived or reported, an
exception in a worker raised in the caller, and no worker left behind by a killed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonescan.parallel import ordered_map


def square_or_die(x: int) -> int:
    if x == 5:
        os._exit(3)  # a codec segfault takes the whole worker process down
    return x * x


def square_or_raise(x: int) -> int:
    if x == 5:
        raise ValueError("no five")
    return x * x


def _refuse(x: int) -> None:
    raise RuntimeError(f"worker died on {x}")


@pytest.mark.slow
def test_ordered_map_keeps_order_and_survives_a_dying_worker():
    results = list(
        ordered_map(square_or_die, range(12), workers=2, chunksize=2, on_crash=lambda x: f"crash {x}")
    )
    assert results == [x * x if x != 5 else "crash 5" for x in range(12)]


@pytest.mark.slow
def test_a_dying_worker_is_an_error_when_on_crash_raises():
    with pytest.raises(RuntimeError, match="worker died on 5"):
        list(ordered_map(square_or_die, range(12), workers=2, chunksize=1, on_crash=_refuse))


@pytest.mark.slow
def test_an_exception_in_a_worker_is_raised_in_the_caller_after_the_results_before_it():
    results = ordered_map(square_or_raise, range(12), workers=2, chunksize=1, on_crash=_refuse)
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="no five"):
        next(results)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (its reaper may be slow in a container)


PARENT_SCRIPT = """
import os, time
from bonescan.parallel import ordered_map

def report_and_wait(_):
    print(os.getpid(), flush=True)  # the worker's pid, on the stdout it inherited
    time.sleep(120)

if __name__ == "__main__":
    list(ordered_map(report_and_wait, [0], workers=1, chunksize=1, on_crash=lambda x: x))
"""


def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)  # what kill -9 of the stage does
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()
