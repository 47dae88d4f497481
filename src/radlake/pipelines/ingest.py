"""Ingest: inputs -> store (originals, previews) + catalog rows, as one recorded job.

Crash safety comes from ordering: blobs are written (atomically, content-addressed)
before the catalog rows that point at them, and rows are inserted in batches, one
transaction each, keyed by sha256. Killing the process at any point and running the
same command again finishes the work with no duplicate and no missing row.

One input never stops a job: each ends catalogued, already present or quarantined,
even when its worker dies. A fault of the store or the catalog is retried (the
store's and `run_transaction`'s bounded backoff); when it persists the job is marked
failed and `IngestFault` says so in one line. Nothing is lost then: what was written
is consistent, and the same command finishes the work.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from radlake.catalog.db import DEFAULT_RETRY_SECONDS, run_transaction
from radlake.catalog.models import Image, Job, utcnow
from radlake.catalog.persist import (
    add_images,
    add_quarantined,
    ensure_source,
)
from radlake.domain import CataloguedInput, RejectedInput
from radlake.errors import CatalogError, RadlakeError, StorageError
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import discover, input_key
from radlake.pipelines.executor import Executor, default_executor
from radlake.pipelines.jobs import ACTIVE_JOBS, mark_interrupted
from radlake.pipelines.worker import (
    DEFAULT_MAX_INPUT_BYTES,
    WorkerContext,
    crashed_input,
    process_bytes,
    process_input,
)
from radlake.storage.store import ObjectStore

BATCH_SIZE = 256
BATCH_SECONDS = 2.0
T = TypeVar("T")

Progress = Callable[[int, int], None]
"""Called with (inputs done, inputs in all) as work completes."""
Outcome = CataloguedInput | RejectedInput


class IngestFault(RadlakeError, ConnectionError):
    """The store or the catalog kept failing: the job stopped, nothing was lost."""


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """What one input may cost (settings RADLAKE_MAX_DECODED_MB, _MAX_INPUT_MB,
    _FILE_SECONDS) and how long faults are retried (RADLAKE_RETRY_SECONDS)."""

    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    file_seconds: float | None = 300.0
    retry_seconds: float = DEFAULT_RETRY_SECONDS


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """Counts of one ingest job; catalogued + already_present + quarantined == inputs."""

    job_id: int
    inputs: int
    catalogued: int
    already_present: int
    quarantined: int
    bytes_read: int
    seconds: float

    @property
    def files_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (
            f"{self.inputs} inputs: {self.catalogued} catalogued, "
            f"{self.already_present} already present, {self.quarantined} quarantined "
            f"in {self.seconds:.1f} s ({self.files_per_second:.1f} files/s, "
            f"{self.megabytes_per_second:.1f} MB/s)"
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self) | {
            "files_per_second": round(self.files_per_second, 2),
            "megabytes_per_second": round(self.megabytes_per_second, 2),
        }


class IngestSession:
    """One recorded job: its row, the batched catalog writes and the counts.

    Results are written in batches (BATCH_SIZE inputs or BATCH_SECONDS, whichever
    comes first), one transaction each, retried whole on transient faults.
    """

    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        *,
        source: str,
        source_kind: str,
        parameters: dict[str, object],
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        self.engine, self.store, self.retry_seconds = engine, store, retry_seconds
        self.started = time.perf_counter()
        self.pending: list[Outcome] = []
        self.counts = {"catalogued": 0, "already_present": 0, "quarantined": 0, "bytes_read": 0}
        self.last_flush = time.monotonic()
        self.last_inserted: set[str] = set()  # sha256 this job inserted in its last batch
        self._transaction(mark_interrupted)

        def open_job(session: Session) -> tuple[int, int]:
            source_id = ensure_source(session, name=source, kind=source_kind)
            job = Job(
                kind="ingest",
                status="running",
                parameters=parameters,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            session.add(job)
            session.flush()
            # Active before its row is visible: another thread of this process (the
            # API runs uploads side by side) must never take it for an abandoned job.
            ACTIVE_JOBS.add(job.id)
            return source_id, job.id

        self.source_id, self.job_id = self._transaction(open_job)

    def _transaction(self, work: Callable[[Session], T]) -> T:
        return run_transaction(self.engine, work, retry_seconds=self.retry_seconds)

    def add(self, result: Outcome) -> None:
        self.pending.append(result)
        if len(self.pending) >= BATCH_SIZE or time.monotonic() - self.last_flush > BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        images = [r for r in self.pending if isinstance(r, CataloguedInput)]
        rejects = [r for r in self.pending if isinstance(r, RejectedInput)]

        def write(session: Session) -> tuple[set[str], dict[str, int]]:
            inserted = add_images(
                session, source_id=self.source_id, job_id=self.job_id, items=images
            )
            add_quarantined(session, source_id=self.source_id, job_id=self.job_id, rejects=rejects)
            counts = {
                "catalogued": self.counts["catalogued"] + len(inserted),
                "already_present": self.counts["already_present"] + len(images) - len(inserted),
                "quarantined": self.counts["quarantined"] + len(rejects),
                "bytes_read": self.counts["bytes_read"]
                + sum(r.size_bytes or 0 for r in self.pending),
            }
            session.get_one(Job, self.job_id).counts = counts
            return inserted, counts

        # Workers write without fsync; one sync makes the whole batch's objects durable
        # before any row points at them.
        self.store.sync()
        self.last_inserted, self.counts = self._transaction(write)
        self.pending.clear()
        self.last_flush = time.monotonic()

    def image_id(self, sha256: str) -> int | None:
        """The id of the image with these bytes, if catalogued (seen from a new
        transaction, so also when another process catalogued it a moment ago)."""
        return self._transaction(
            lambda session: session.scalar(select(Image.id).where(Image.sha256 == sha256))
        )

    def finish(self, status: str, error: str | None, inputs: int) -> IngestSummary:
        """Record how the job ended (best effort when the catalog is the fault); the
        summary is also kept as `self.summary`."""
        seconds = time.perf_counter() - self.started

        def close(session: Session) -> None:
            job = session.get_one(Job, self.job_id)
            job.status, job.error = status, error
            job.counts = self.counts | {"inputs": inputs}
            job.finished_at, job.seconds = utcnow(), round(seconds, 3)

        # Best effort: every row of the work is committed already; if the catalog fails
        # now, only the job's own row stays "running" and the next run marks it. It
        # leaves the active set only once closed, so no thread marks it meanwhile.
        with contextlib.suppress(CatalogError):
            self._transaction(close)
        ACTIVE_JOBS.discard(self.job_id)
        self.summary = IngestSummary(
            job_id=self.job_id,
            inputs=inputs,
            catalogued=self.counts["catalogued"],
            already_present=self.counts["already_present"],
            quarantined=self.counts["quarantined"],
            bytes_read=self.counts["bytes_read"],
            seconds=seconds,
        )
        return self.summary


def _fault(exc: StorageError | CatalogError) -> IngestFault:
    return IngestFault(f"{exc}: nothing lost; run the same command again to resume")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


@contextlib.contextmanager
def recorded_job(
    engine: Engine,
    store: ObjectStore,
    *,
    source: str,
    source_kind: str,
    parameters: dict[str, object],
    inputs: Callable[[], int],
    retry_seconds: float,
) -> Iterator[IngestSession]:
    """An IngestSession whose job row ends succeeded or failed with the reason; store
    and catalog faults leave it as IngestFault. After the block, `session.summary`."""
    try:
        session = IngestSession(
            engine,
            store,
            source=source,
            source_kind=source_kind,
            parameters=parameters,
            retry_seconds=retry_seconds,
        )
    except (StorageError, CatalogError) as exc:
        raise _fault(exc) from exc
    status, error = "failed", None
    try:
        yield session
        session.flush()
        status = "succeeded"
    except (StorageError, CatalogError) as exc:
        error = _error_text(exc)
        raise _fault(exc) from exc
    except BaseException as exc:
        error = _error_text(exc)
        raise
    finally:
        session.finish(status, error, inputs())


def ingest(
    paths: Sequence[str | Path],
    *,
    engine: Engine,
    store: ObjectStore,
    pseudonymizer: Pseudonymizer,
    source: str = "folder",
    source_kind: str = "folder",
    executor: Executor | None = None,
    workers: int | None = None,
    limits: IngestLimits | None = None,
    progress: Progress | None = None,
    on_result: Callable[[Outcome], None] | None = None,
    amend: Callable[[CataloguedInput], CataloguedInput] | None = None,
) -> IngestSummary:
    """Ingest files and folders into the lake; safe to re-run, alone or concurrently.

    on_result receives every input's outcome (a source load maps its records' keys
    to sha256 with it). amend, in this process, may complete a decoded input's
    metadata before its row is written (a dataset's attributes, view, hierarchy),
    so a new image is written once; images catalogued before are left as they are.

    Raises:
        InputPathError: a given path does not exist (nothing is ingested).
        IngestFault: the store or the catalog kept failing (the job is recorded as
            failed when the catalog allows; re-running finishes it).
    """
    limits = limits or IngestLimits()
    found = discover(paths)
    pool = executor or default_executor(workers, item_seconds=limits.file_seconds)
    try:
        store.remove_stale_temporary()  # what a killed run left half-written, if anything
    except StorageError as exc:
        raise _fault(exc) from exc
    total = len(found.files) + len(found.rejected)
    context = WorkerContext(
        store,
        pseudonymizer,
        max_decoded_bytes=limits.max_decoded_bytes,
        max_input_bytes=limits.max_input_bytes,
    )
    parameters: dict[str, object] = {
        "paths": [input_key(p) for p in paths],
        "source": source,
        "workers": pool.workers,
    }
    with recorded_job(
        engine,
        store,
        source=source,
        source_kind=source_kind,
        parameters=parameters,
        inputs=lambda: total,
        retry_seconds=limits.retry_seconds,
    ) as session:
        outcomes = pool.map_unordered(
            functools.partial(process_input, context), found.files, on_crash=crashed_input
        )
        for done, outcome in enumerate(itertools.chain(found.rejected, outcomes), start=1):
            result = amend(outcome) if amend and isinstance(outcome, CataloguedInput) else outcome
            session.add(result)
            if on_result:
                on_result(result)
            if progress:
                progress(done, total)
    return session.summary


@dataclass(frozen=True, slots=True)
class BytesOutcome:
    """What became of one input given as bytes: its outcome, the image's id when it
    is catalogued (by this call, `new`, or before), else None."""

    outcome: Outcome
    image_id: int | None
    new: bool


def ingest_bytes(
    data: bytes,
    *,
    engine: Engine,
    store: ObjectStore,
    pseudonymizer: Pseudonymizer,
    source: str,
    source_kind: str,
    source_key: str,
    limits: IngestLimits | None = None,
    keep_rejected: bool = True,
) -> BytesOutcome:
    """Ingest one input held in memory (an upload, a received DICOM object) through
    the same steps as a file, in this process, as one recorded job.

    Raises:
        IngestFault: the store or the catalog kept failing.
    """
    limits = limits or IngestLimits()
    context = WorkerContext(
        store,
        pseudonymizer,
        max_decoded_bytes=limits.max_decoded_bytes,
        max_input_bytes=limits.max_input_bytes,
        keep_rejected=keep_rejected,
    )
    with recorded_job(
        engine,
        store,
        source=source,
        source_kind=source_kind,
        parameters={"source": source, "input": source_key},
        inputs=lambda: 1,
        retry_seconds=limits.retry_seconds,
    ) as session:
        outcome = process_bytes(context, data, source_key)
        if isinstance(outcome, CataloguedInput) or keep_rejected:
            session.add(outcome)
        session.flush()
        image_id = session.image_id(outcome.sha256) if outcome.sha256 else None
    return BytesOutcome(outcome, image_id, new=outcome.sha256 in session.last_inserted)
