"""Where per-item work runs: in this process, in a local process pool, or on Dask.

The interface is one method, so the Dask executor (pipelines/dask_executor.py, the
only module that imports dask) slots in without touching the pipelines;
`open_executor` chooses one from a spec string (--executor, RADLAKE_EXECUTOR).

A worker process can die under an item: the kernel's OOM killer, a crash in a
native decoder, or the per-item time limit (SIGALRM with its default action kills
the process even inside C code that never returns to Python). The pool then breaks
and every item in flight is lost with it, innocent or not. The process executor
re-runs those items one at a time in a fresh pool: the innocent ones succeed, and
the one that kills its worker again is handed to `on_crash`, which turns it into an
ordinary result (a quarantine row), so the job goes on.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Protocol, TypeVar

from radlake.errors import ConfigError, RadlakeError

T = TypeVar("T")
R = TypeVar("R")

OnCrash = Callable[[T, str], R]
"""Turns an item whose worker died into a result, given the reason in words."""


class Executor(Protocol):
    """Runs fn over items and yields results as they complete (any order)."""

    workers: int

    def map_unordered(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        on_crash: OnCrash[T, R] | None = None,
    ) -> Iterator[R]: ...


class SerialExecutor:
    """Everything in the calling process: for one worker, tests, debugging and the API
    (which relies on the decode budget, since a crash here would take the caller)."""

    workers = 1

    def map_unordered(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        on_crash: OnCrash[T, R] | None = None,
    ) -> Iterator[R]:
        for item in items:
            yield fn(item)


def _run_chunk(fn: Callable[[T], R], chunk: Sequence[T], item_seconds: int | None) -> list[R]:
    results = []
    for item in chunk:
        if item_seconds:
            # Default action of SIGALRM: the kernel ends the process, wherever it is.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(item_seconds)
        try:
            results.append(fn(item))
        finally:
            if item_seconds:
                signal.alarm(0)
    return results


class LocalProcessExecutor:
    """A pool of worker processes; work goes out in small chunks to amortise IPC.

    Submission is bounded (a few chunks per worker in flight), so memory stays flat
    however many items there are. item_seconds bounds one item's time in a worker.
    """

    def __init__(
        self, workers: int | None = None, chunk_size: int = 8, item_seconds: float | None = None
    ) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunk_size = chunk_size
        self.item_seconds = math.ceil(item_seconds) if item_seconds else None

    def _pool(self) -> ProcessPoolExecutor:
        # forkserver: workers never inherit the parent's threads, sockets or DB pools.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["radlake.pipelines.worker"])
        return ProcessPoolExecutor(self.workers, mp_context=context)

    def map_unordered(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        on_crash: OnCrash[T, R] | None = None,
    ) -> Iterator[R]:
        iterator = iter(items)
        suspects: deque[T] = deque()
        pool = self._pool()
        try:
            in_flight: dict[Future[list[R]], Sequence[T]] = {}
            while True:
                while not suspects and len(in_flight) < self.workers * 3:
                    batch = list(islice(iterator, self.chunk_size))
                    if not batch:
                        break
                    in_flight[pool.submit(_run_chunk, fn, batch, self.item_seconds)] = batch
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    sent = in_flight.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool:
                        if on_crash is None:
                            raise
                        broken = True
                        suspects.extend(sent)
                        continue
                    yield from results
                if broken:
                    # Every other chunk in flight died with the pool: all are suspects.
                    for sent in in_flight.values():
                        suspects.extend(sent)
                    in_flight.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    assert on_crash is not None
                    pool = yield from self._isolate(fn, suspects, on_crash)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _isolate(
        self, fn: Callable[[T], R], suspects: deque[T], on_crash: OnCrash[T, R]
    ) -> Generator[R, None, ProcessPoolExecutor]:
        """Run each suspect alone in a live pool; the one whose worker dies again is
        handed to on_crash. Returns the pool to go on with (generator return value)."""
        pool = self._pool()
        while suspects:
            item = suspects.popleft()
            started = time.monotonic()
            try:
                results = pool.submit(_run_chunk, fn, [item], self.item_seconds).result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = self._pool()
                yield on_crash(item, self._death_reason(time.monotonic() - started))
                continue
            yield from results
        return pool

    def _death_reason(self, seconds: float) -> str:
        timed_out = bool(self.item_seconds) and seconds >= (self.item_seconds or 0) - 0.5
        return death_reason(self.item_seconds if timed_out else None)


def death_reason(timed_out_after: int | None) -> str:
    """The quarantine reason of an input whose worker died twice under it: stopped by
    the time limit of timed_out_after seconds, or (None) killed or crashed."""
    if timed_out_after:
        return (
            f"took longer than the {timed_out_after} s limit for one input "
            "(RADLAKE_FILE_SECONDS): the worker was stopped"
        )
    return (
        "the worker process died while reading it (killed for memory, or a crash "
        "in a native decoder)"
    )


def default_executor(workers: int | None, item_seconds: float | None = None) -> Executor:
    """A process pool of `workers` (default: one per CPU), even for one worker: a
    worker that dies costs its input a quarantine row, never the job."""
    return LocalProcessExecutor(workers, item_seconds=item_seconds)


class ExecutorUnavailable(RadlakeError, ConnectionError):
    """The compute cluster cannot be reached (or was lost): a fault, never a bad input."""


LOCAL = "local"
DASK_LOCAL = "dask-local"
DASK_SCHEME = "dask://"
EXECUTOR_SPECS = f"{LOCAL}, {DASK_LOCAL} or {DASK_SCHEME}HOST:PORT"


def dask_address(spec: str | None) -> str | None:
    """The scheduler address a spec names: None for the local process pool, "" for
    a Dask cluster started here (dask-local), else "tcp://HOST:PORT".

    Raises:
        ConfigError: the spec is none of local, dask-local, dask://HOST:PORT.
    """
    text = (spec or LOCAL).strip()
    if text.lower() == LOCAL:
        return None
    if text.lower() == DASK_LOCAL:
        return ""
    if text.lower().startswith(DASK_SCHEME):
        host, _, port = text[len(DASK_SCHEME) :].rstrip("/").rpartition(":")
        if host and "/" not in host and port.isdigit() and 0 < int(port) < 65536:
            return f"tcp://{host}:{port}"
    raise ConfigError(f"unknown executor {text!r}: expected {EXECUTOR_SPECS}")


@contextlib.contextmanager
def open_executor(
    spec: str | None, workers: int | None, item_seconds: float | None = None
) -> Iterator[Executor]:
    """The executor a spec names (see dask_address), started and, on leaving, stopped:
    a Dask client is connected before any work (an unreachable scheduler fails here,
    before a job is recorded) and closed afterwards with the cluster it started.

    Raises:
        ConfigError: the spec is not understood.
        ExecutorUnavailable: the Dask scheduler cannot be reached or has no workers.
    """
    address = dask_address(spec)
    if address is None:
        yield default_executor(workers, item_seconds=item_seconds)
        return
    # Imported here: dask is optional and slow to import; only this path needs it.
    from radlake.pipelines.dask_executor import DaskExecutor

    with DaskExecutor(address or None, workers=workers, item_seconds=item_seconds) as executor:
        yield executor
