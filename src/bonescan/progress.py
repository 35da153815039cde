"""Progress reporting kept out of training loops: a running mean and a rich bar wrapping a loader.

The loop body only calls `meter.update(loss.detach(), n)`; `track()` reads the meter every few
steps to redraw the bar (loss and images/s), so a CUDA sync happens at display time, not per step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

__all__ = ["RunningMean", "track"]

T = TypeVar("T")


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


def track(
    iterable: Iterable[T],
    description: str,
    meter: RunningMean,
    total: int | None = None,
    enabled: bool = True,
    refresh_every: int = 5,
) -> Iterator[T]:
    """Yield from `iterable`, drawing a rich progress bar with the meter's loss and throughput.

    Disabled (or on a non-terminal stderr, e.g. under DVC) it yields the items untouched.
    """
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield from iterable
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, stats="")
        for step, item in enumerate(iterable, start=1):
            yield item
            if step % refresh_every == 0 or step == total:
                stats = f"loss {meter.mean:.4f}  {meter.rate:.1f} img/s"
                progress.update(task, completed=step, stats=stats)
            else:
                progress.update(task, completed=step)
