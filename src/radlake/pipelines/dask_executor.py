# distributed annotates only part of its API (Client, LocalCluster, as_completed are
# untyped); mypy's strict check of calls into it is turned off for this module alone.
# mypy: disable-error-code="no-untyped-call"
"""The Dask executor: the same per-item work as the process pool, on a Dask cluster.

`DaskExecutor(None)` starts a LocalCluster of `workers` single-threaded worker
processes; `DaskExecutor("tcp://host:port")` uses a running scheduler. Workers run
the pipeline's own worker function (they write blobs to the store, so they must see
the input paths and the store URL); results come back to this process, which alone
writes the catalog. Chunks of items go out with bounded submission, like the pool.

Guarantees, the same as LocalProcessExecutor's:

- Time limit: a worker process runs each item under a deadline enforced by SIGALRM
  with its default action, which ends the process even inside C code that never
  returns to Python. Dask runs tasks in a thread, where Python cannot install a
  handler, but the default action needs none and `alarm()` works from any thread;
  one process-wide alarm is set to the earliest deadline of the process's threads.
  The nanny (every Dask worker has one unless started with --no-nanny) restarts the
  worker, and the scheduler reports the task lost.
- Lost worker (SIGKILL, OOM, os._exit, the time limit): the scheduler turns a task
  whose workers keep dying into KilledWorker (after `allowed-failures` retries; the
  LocalCluster started here allows none, since this executor retries by itself).
  Every item of such a chunk becomes a suspect; once the work in flight has drained,
  each suspect runs alone, so the innocent ones succeed and the one that kills its
  worker again is handed to `on_crash`. Whether the time limit stopped it is told by
  an event the isolated run logs on the scheduler as it starts.
- An unreachable scheduler is ExecutorUnavailable (one line); the client and the
  cluster this executor started are closed on leaving.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from types import TracebackType
from typing import Any, TypeVar

from radlake.errors import ConfigError
from radlake.pipelines.executor import ExecutorUnavailable, OnCrash, death_reason

try:
    import dask
    from distributed import (
        CancelledError,
        Client,
        Future,
        KilledWorker,
        LocalCluster,
        as_completed,
        get_worker,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        "the Dask executor needs dask[distributed]: pip install 'radlake[dask]'"
    ) from exc

T = TypeVar("T")
R = TypeVar("R")

STARTED_TOPIC = "radlake-isolated-start"
"""Scheduler event an isolated item logs as it starts: {"key", "seconds"}."""


class _Deadlines:
    """Per-thread deadlines of one worker process, enforced by one process-wide alarm.

    The alarm always stands at the earliest deadline, so a worker with several
    threads keeps every item's limit. When it fires, the kernel ends the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[int, float] = {}

    @contextlib.contextmanager
    def limit(self, seconds: int) -> Iterator[None]:
        if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None):
            # Someone installed a handler (it would run in the main thread and not stop
            # this one): fall back to a watchdog thread that kills the process.
            with _watchdog(seconds):
                yield
            return
        me = threading.get_ident()
        with self._lock:
            self._by_thread[me] = time.monotonic() + seconds
            self._arm()
        try:
            yield
        finally:
            with self._lock:
                self._by_thread.pop(me, None)
                self._arm()

    def _arm(self) -> None:
        if not self._by_thread:
            signal.alarm(0)
            return
        left = min(self._by_thread.values()) - time.monotonic()
        signal.alarm(max(1, math.ceil(left)))


@contextlib.contextmanager
def _watchdog(seconds: int) -> Iterator[None]:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_DEADLINES = _Deadlines()


def _run_chunk(
    fn: Callable[[T], R], chunk: Sequence[T], item_seconds: int | None, isolated: bool
) -> list[R]:
    """Runs in a Dask worker: fn over the chunk, each item under the time limit."""
    if isolated:
        worker = get_worker()
        worker.log_event(
            STARTED_TOPIC, {"key": str(worker.get_current_task()), "seconds": item_seconds}
        )
    results = []
    for item in chunk:
        if item_seconds:
            with _DEADLINES.limit(item_seconds):
                results.append(fn(item))
        else:
            results.append(fn(item))
    return results


class DaskExecutor:
    """Runs items on a Dask cluster: a LocalCluster started here (address None), or
    the scheduler at address ("tcp://host:port").

    Use it as a context manager to connect once (failing before any work when the
    scheduler is unreachable); map_unordered alone connects and closes around itself.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        chunk_size: int = 8,
        item_seconds: float | None = None,
        connect_seconds: float = 10.0,
    ) -> None:
        self.address = address
        # A LocalCluster gets this many processes; a running cluster says its own
        # number of threads once connected.
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunk_size = chunk_size
        self.item_seconds = math.ceil(item_seconds) if item_seconds else None
        self.connect_seconds = connect_seconds
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None

    @property
    def client(self) -> Client | None:
        """The connected client (None before open and after close)."""
        return self._client

    def __enter__(self) -> DaskExecutor:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Start the LocalCluster, or connect to the scheduler (idempotent).

        Raises:
            ExecutorUnavailable: no scheduler answered at the address, or it has no
                workers.
        """
        if self._client is not None:
            return
        if self.address is None:
            self._client = self._start_local()
            return
        try:
            client = Client(self.address, timeout=self.connect_seconds)
        except (OSError, TimeoutError):
            raise ExecutorUnavailable(
                f"no Dask scheduler answered at {self.address} within "
                f"{self.connect_seconds:g} s: start one "
                "(`dask scheduler`) or choose another executor (--executor, RADLAKE_EXECUTOR)"
            ) from None
        try:
            client.wait_for_workers(1, timeout=self.connect_seconds)
        except TimeoutError:
            client.close()
            raise ExecutorUnavailable(
                f"the Dask scheduler at {self.address} has no workers after "
                f"{self.connect_seconds:g} s: start some (`dask worker {self.address}`)"
            ) from None
        self.workers = max(1, sum(client.nthreads().values()))
        self._client = client

    def _start_local(self) -> Client:
        settings = {
            # This executor isolates suspects itself: a task is failed at the first
            # death of its worker, not retried blindly on three more.
            "distributed.scheduler.allowed-failures": 0,
            # One task per single-threaded worker, so a death takes one chunk with it.
            "distributed.scheduler.worker-saturation": 1.0,
            # The statistical profiler samples every task thread's stack 100 times a
            # second under the GIL: CPU the workers need for decoding (the nanny
            # hands this configuration to the worker processes it starts).
            "distributed.worker.profile.enabled": False,
        }
        with dask.config.set(settings):
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                # The scheduler serves HTTP (metrics) whatever we ask: on a free port,
                # so a second cluster on this machine starts without a warning.
                dashboard_address="127.0.0.1:0",
                # Expected deaths (a poison input) are reported as quarantine rows;
                # the scheduler's and nannies' log lines would only alarm a user.
                silence_logs=logging.CRITICAL,
            )
        return Client(self._cluster)

    def close(self) -> None:
        """Close the client and the cluster started here (best effort, idempotent)."""
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        # Best effort: the scheduler may be gone already, and closing must not hide
        # the error that brought us here.
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    def map_unordered(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        on_crash: OnCrash[T, R] | None = None,
    ) -> Iterator[R]:
        """fn over items on the cluster, results as they complete.

        Raises:
            KilledWorker: a worker died and on_crash is None.
            ExecutorUnavailable: the cluster could not be reached, or was lost.
        """
        owned = self._client is None
        self.open()
        assert self._client is not None
        try:
            yield from _Run(self, self._client, fn, on_crash).results(iter(items))
        finally:
            if owned:
                self.close()


class _Run:
    """One map_unordered call: the futures in flight, the suspects, the isolation."""

    def __init__(
        self,
        executor: DaskExecutor,
        client: Client,
        fn: Callable[[Any], Any],
        on_crash: OnCrash[Any, Any] | None,
    ) -> None:
        self.executor, self.client, self.fn, self.on_crash = executor, client, fn, on_crash
        self.in_flight: dict[Future[list[Any]], tuple[list[Any], bool]] = {}
        self.completed = as_completed()
        self.suspects: deque[Any] = deque()

    def _submit(self, batch: list[Any], isolated: bool) -> None:
        future = self.client.submit(
            _run_chunk, self.fn, batch, self.executor.item_seconds, isolated, pure=False
        )
        self.in_flight[future] = (batch, isolated)
        self.completed.add(future)

    def _fill(self, items: Iterator[Any]) -> None:
        if self.suspects:
            # Drain first: a suspect runs alone, so if its worker dies it is the cause.
            if not self.in_flight:
                self._submit([self.suspects.popleft()], isolated=True)
            return
        while len(self.in_flight) < self.executor.workers * 3:
            batch = list(islice(items, self.executor.chunk_size))
            if not batch:
                return
            self._submit(batch, isolated=False)

    def results(self, items: Iterator[Any]) -> Iterator[Any]:
        try:
            while True:
                self._fill(items)
                if not self.in_flight:
                    return
                future = next(self.completed)
                batch, isolated = self.in_flight.pop(future)
                try:
                    results = future.result()
                except KilledWorker:
                    if self.on_crash is None:
                        raise
                    if isolated:
                        yield self.on_crash(batch[0], self._death_reason(str(future.key)))
                    else:
                        self.suspects.extend(batch)
                    continue
                except CancelledError:
                    raise ExecutorUnavailable(
                        "lost the Dask scheduler during the job: nothing lost; run the "
                        "same command again to resume"
                    ) from None
                yield from results
        finally:
            if self.in_flight:
                with contextlib.suppress(Exception):
                    self.client.cancel(list(self.in_flight))

    def _death_reason(self, key: str) -> str:
        """Stopped by the time limit if the isolated run's last start was at least
        the limit ago (by the scheduler's clock), else killed or crashed."""
        limit = self.executor.item_seconds
        if not limit:
            return death_reason(None)
        started = [
            stamp
            for stamp, message in self.client.get_events(STARTED_TOPIC)
            if isinstance(message, dict) and message.get("key") == key
        ]
        if not started:
            return death_reason(None)  # died before it could say it started
        now = float(self.client.run_on_scheduler(time.time))
        return death_reason(limit if now - max(started) >= limit - 0.5 else None)
