"""Progress of long loops, kept out of their bodies: a rich bar in a terminal, log lines everywhere else.

Under DVC, in CI or with stderr sent to a file there is no terminal: a bar would print nothing (or
thousands of redraws), so the same updates become log lines with the rate and the ETA, at most one
per `every_s` seconds or per `fraction` of the total, and a closing line for a loop that logged at
all (a short loop stays silent). A loop body only calls `bar.update(done)`; `track()` wraps an
iterable (a loader) and reads a `RunningMean` every few steps, so a CUDA sync happens at display
time, not per step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor

__all__ = ["ProgressLog", "RunningMean", "eta", "format_duration", "progress", "track"]

log = logging.getLogger(__name__)

T = TypeVar("T")
EVERY_S = 30.0  # a log line at least this often: enough to see a stage is alive, few enough to read
FRACTION = 0.1  # and one per 10 % of the total


class RunningMean:
    """Sample-weighted mean of a per-batch value, accumulated on the value's device."""

    def __init__(self) -> None:
        self.total: Tensor | float = 0.0
        self.count = 0
        self.start = time.perf_counter()

    def update(self, value: Tensor | float, n: int) -> None:
        """Add a batch mean `value` over `n` samples."""
        self.total = self.total + value * n
        self.count += n

    @property
    def mean(self) -> float:
        total = self.total.item() if isinstance(self.total, Tensor) else self.total
        return total / self.count if self.count else float("nan")

    @property
    def rate(self) -> float:
        """Samples per second since the meter was created."""
        return self.count / max(time.perf_counter() - self.start, 1e-9)

    def as_tensor(self, device: torch.device) -> Tensor:
        """(sum, count) as a float64 tensor, for an all-reduce across processes."""
        total = self.total.detach().double() if isinstance(self.total, Tensor) else torch.tensor(self.total)
        return torch.stack([total.to(device, torch.float64), torch.tensor(float(self.count), device=device)])


def format_duration(seconds: float) -> str:
    """4:05 or 1:02:03 (hours, minutes, seconds), as rich's time columns show them."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(done: int, total: int, elapsed_s: float) -> str:
    """ "ETA 4:05" at the rate so far (`done` items in `elapsed_s`), "done in 4:05" when all are done."""
    if done >= total:
        return f"done in {format_duration(elapsed_s)}"
    if done <= 0 or elapsed_s <= 0:
        return "ETA unknown"
    return f"ETA {format_duration((total - done) * elapsed_s / done)}"


class Bar(Protocol):
    def update(self, done: int, stats: str = "") -> None: ...


class ProgressLog:
    """Progress as log lines: `description: 40/200 steps (20%), 3.10 steps/s, ETA 0:52, <stats>`.

    The rate counts only what this run did (`completed` at the start is excluded, so a resumed run's
    ETA is honest). A line is written when `every_s` seconds have passed since the last one or `done`
    enters a new `fraction` of `total`; `close` writes a last line if any was written.

    Args:
        description: what runs, e.g. "mu_acgan finetune".
        total: the number of items, None when unknown (no percentage or ETA then).
        unit: the item's name in the lines ("files", "steps", "batches").
        completed: items already done before this run (a resumed training).
        every_s: seconds between lines at most; None: only per fraction.
        fraction: a line per this share of `total`; None: only per time.
        clock: seconds, monotonic (a fake one in tests).
        logger: where lines go (the caller's module logger).
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        unit: str = "it",
        completed: int = 0,
        every_s: float | None = EVERY_S,
        fraction: float | None = FRACTION,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.every_s, self.fraction, self.clock, self.logger = every_s, fraction, clock, logger
        self.start_done = self.done = self.logged_done = completed
        self.start = self.last = clock()
        self.lines = 0
        self._stats = ""
        self._bucket = self._bucket_of(completed)

    def _bucket_of(self, done: int) -> int:
        if not (self.total and self.fraction):
            return 0
        return int(done / self.total / self.fraction + 1e-9)  # 30 / 50 / 0.1 is 5.999..

    def rate(self, now: float | None = None) -> float:
        """Items per second of this run so far."""
        elapsed = (self.clock() if now is None else now) - self.start
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        rate = self.rate(now)
        parts = [f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
                 if self.total else f"{self.done} {self.unit}"]  # fmt: skip
        parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 0.01 else f"{1 / rate:.0f} s per {self.unit}"
                     if rate > 0 else f"no {self.unit} done yet")  # fmt: skip
        if self.total and (rate > 0 or self.done >= self.total):
            parts.append(eta(self.done - self.start_done, self.total - self.start_done, now - self.start))
        if self._stats:
            parts.append(self._stats)
        return f"{self.description}: " + ", ".join(parts)

    def update(self, done: int, stats: str = "") -> None:
        self.done, self._stats = done, stats
        now = self.clock()
        bucket = self._bucket_of(done)
        timely = self.every_s is not None and now - self.last >= self.every_s
        if timely or bucket > self._bucket:
            self._write(now)
        self._bucket = max(bucket, self._bucket)

    def close(self) -> None:
        """The closing line of a loop that logged (unless its last line already said all)."""
        if self.lines and self.logged_done != self.done:
            self._write(self.clock())

    def _write(self, now: float) -> None:
        self.logger.info("%s", self.line(now))
        self.last, self.logged_done = now, self.done
        self.lines += 1


class _Silent:
    def update(self, done: int, stats: str = "") -> None:
        pass


class _RateColumn(ProgressColumn):
    """Items per second in the task's unit (rich's own speed column is for bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = f"{speed:.1f} {task.fields.get('unit', 'it')}/s" if speed else ""
        return Text(shown, style="progress.data.speed")


class _RichBar:
    def __init__(self, bar: Progress, task: int):
        self._bar, self._task = bar, task

    def update(self, done: int, stats: str = "") -> None:
        self._bar.update(self._task, completed=done, stats=stats)


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    unit: str = "it",
    completed: int = 0,
    enabled: bool = True,
    every_s: float | None = EVERY_S,
    fraction: float | None = FRACTION,
    console: Console | None = None,
    logger: logging.Logger = log,
) -> Iterator[Bar]:
    """A progress display for one loop: a rich bar on a terminal's stderr, else a `ProgressLog`.

    Disabled (a non-main process under torchrun, `--no-progress`), updates do nothing.
    """
    if not enabled:
        yield _Silent()
        return
    console = console or Console(stderr=True)
    if not console.is_terminal:
        lines = ProgressLog(description, total, unit=unit, completed=completed, every_s=every_s,
                            fraction=fraction, logger=logger)  # fmt: skip
        yield lines
        lines.close()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, completed=completed, stats="", unit=unit)
        yield _RichBar(bar, task)


def track(
    iterable: Iterable[T],
    description: str,
    meter: RunningMean | None = None,
    total: int | None = None,
    enabled: bool = True,
    refresh_every: int = 5,
    *,
    unit: str = "batches",
    every_s: float | None = EVERY_S,
    fraction: float | None = None,
    console: Console | None = None,
    logger: logging.Logger = log,
) -> Iterator[T]:
    """Yield from `iterable` under `progress(...)`, showing the meter's loss and images/s every few steps.

    Off a terminal the lines come per `every_s` only by default: a training epoch has its own line.
    """
    with progress(description, total, unit=unit, enabled=enabled, every_s=every_s, fraction=fraction,
                  console=console, logger=logger) as bar:  # fmt: skip
        step = 0
        for step, item in enumerate(iterable, start=1):
            yield item
            if step % refresh_every == 0 or step == total:
                bar.update(step, f"loss {meter.mean:.4f}, {meter.rate:.1f} img/s" if meter else "")
        bar.update(step, f"loss {meter.mean:.4f}, {meter.rate:.1f} img/s" if meter and step else "")
