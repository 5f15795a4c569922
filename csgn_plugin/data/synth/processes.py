"""Rendering spread over processes: SynthCC's trees and the captioned corpus.

Both give every image its own random stream, so what they write does not depend on how many
processes render it or in which order; :func:`render_in_processes` only has to hand out the jobs
and bring every result, or a worker's exception, back to the caller.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional, TypeVar

__all__ = ["default_workers", "render_in_processes"]

Job = TypeVar("Job")
Result = TypeVar("Result")


def default_workers(items: int, per_worker: int) -> int:
    """One process per CPU, but no more than one per ``per_worker`` items (a process costs its
    start and a copy of the caller's memory pages it writes to)."""
    return max(1, min(os.cpu_count() or 1, items // per_worker))


def render_in_processes(
    func: Callable[[Job], Result], jobs: Sequence[Job], workers: Optional[int] = None
) -> Iterator[Result]:
    """``func(job)`` for every job, in the jobs' order, by ``workers`` forked processes (1: in
    this process).

    Forked, so ``func`` and what it reads are the caller's as they are (nothing imported again).
    An exception of any kind in a worker, a stopped run's ``KeyboardInterrupt`` included, is
    raised here and the remaining jobs are cancelled: a :class:`ProcessPoolExecutor` returns
    them, where a ``multiprocessing.Pool`` would wait forever for a worker that died."""
    if workers is None or workers <= 1 or len(jobs) <= 1:
        yield from map(func, jobs)
        return
    pool = ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")
    )
    try:
        yield from pool.map(func, jobs)
    finally:
        pool.shutdown(cancel_futures=True)
