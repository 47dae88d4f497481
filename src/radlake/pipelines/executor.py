"""Where per-item work runs: in this process, or in a local process pool.

The interface is one method, so a Dask executor (client.map + as_completed) can
slot in later without touching the pipelines.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from itertools import islice
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs fn over items and yields results as they complete (any order)."""

    workers: int

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class SerialExecutor:
    """Everything in the calling process: for one worker, tests and debugging."""

    workers = 1

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        for item in items:
            yield fn(item)


def _run_chunk(fn: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [fn(item) for item in chunk]


class LocalProcessExecutor:
    """A pool of worker processes; work goes out in small chunks to amortise IPC.

    Submission is bounded (a few chunks per worker in flight), so memory stays flat
    however many items there are.
    """

    def __init__(self, workers: int | None = None, chunk_size: int = 8) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunk_size = chunk_size

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        # forkserver: workers never inherit the parent's threads, sockets or DB pools.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["radlake.pipelines.worker"])
        iterator = iter(items)
        in_flight: set[Future[list[R]]] = set()
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            while True:
                while len(in_flight) < self.workers * 3:
                    chunk = list(islice(iterator, self.chunk_size))
                    if not chunk:
                        break
                    in_flight.add(pool.submit(_run_chunk, fn, chunk))
                if not in_flight:
                    return
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()


def default_executor(workers: int | None) -> Executor:
    """A process pool of `workers` (default: one per CPU); serial for one worker."""
    count = workers or os.cpu_count() or 1
    if count <= 1:
        return SerialExecutor()
    return LocalProcessExecutor(count)
