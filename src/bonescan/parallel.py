"""Process pools whose results come back in input order, so a stage's output never depends on its worker count.

The one home of this helper: the ingest stage decodes files and `bonescan phantoms` renders patients
through it. Workers are spawned (never forked from a parent that may hold torch or BLAS threads) and
exit by themselves when the parent is killed, so a dead stage leaves no process waiting on its queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

log = logging.getLogger(__name__)

__all__ = ["ordered_map"]


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    # A killed (kill -9) parent cannot tell its workers to stop; they would wait on the task queue forever.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int, period_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(period_s)
    os._exit(1)


def _run_chunk(func: Callable, chunk: list) -> list:
    return [func(item) for item in chunk]


def ordered_map(
    func: Callable,
    items: Iterable,
    *,
    workers: int,
    chunksize: int,
    on_crash: Callable,
    initializer: Callable | None = None,
    initargs: tuple = (),
    workers_key: str = "workers",
) -> Iterator:
    """`map(func, items)` over a process pool: lazy input, bounded in-flight work, results in input order.

    Unlike `Pool.imap` (whose feeder thread drains the whole input at once) at most `4 * workers`
    chunks are in flight, so memory does not grow with the number of items. When a worker process
    dies (a codec segfault on a malformed stream), the items of the lost chunks are re-run one at a
    time in a fresh pool; an item that kills its worker again yields `on_crash(item)` instead (which
    may raise, for work where a crash is an error). An exception raised by `func` reaches the caller.

    Args:
        func, items: as for `map`; both picklable (`func` a module-level function or a partial of one).
        workers: processes in the pool.
        chunksize: items handed to a worker at once.
        on_crash: item -> the result that stands for an item whose worker died on it twice.
        initializer, initargs: run once in each worker (to send large, shared context once).
        workers_key: the params key that sets `workers`, named when workers cannot start.
    """
    iter_items = iter(items)
    chunks = iter(lambda: list(islice(iter_items, chunksize)), [])
    window = 4 * workers
    suspects: deque = deque()
    context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads (torch, BLAS)
    while True:
        pending: deque[tuple[list, Future]] = deque()
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(initializer, initargs)
        )
        try:
            _check_pool(pool, workers_key)
            while suspects:  # isolate: one item, one task, nothing else in flight
                try:
                    result = pool.submit(_run_chunk, func, [suspects[0]]).result()[0]
                except BrokenProcessPool:
                    yield on_crash(suspects.popleft())
                    break
                suspects.popleft()
                yield result
            else:
                for chunk in chunks:
                    pending.append((chunk, pool.submit(_run_chunk, func, chunk)))
                    while pending and (len(pending) >= window or pending[0][1].done()):
                        results = pending[0][1].result()
                        pending.popleft()
                        yield from results
                while pending:
                    results = pending[0][1].result()
                    pending.popleft()
                    yield from results
                return
        except BrokenProcessPool:
            log.warning(
                "a worker process died; re-running %d item(s) one at a time", sum(len(c) for c, _ in pending)
            )
            suspects.extend(item for chunk, _ in pending for item in chunk)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True


def _check_pool(pool: ProcessPoolExecutor, workers_key: str) -> None:
    """Fail loudly when workers cannot even start, instead of reporting every item as a crash."""
    try:
        pool.submit(_ready).result()
    except BrokenProcessPool:
        raise RuntimeError(
            f"{workers_key.split('.')[0]} worker processes failed to start (see their traceback above); "
            f"run from a script or the CLI, or set {workers_key}: 1"
        ) from None
