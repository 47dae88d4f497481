"""Ingest: inputs -> store (originals, previews) + catalog rows, as one recorded job.

Crash safety comes from ordering: blobs are written (atomically, content-addressed)
before the catalog rows that point at them, and rows are inserted in batches, one
transaction each, keyed by sha256. Killing the process at any point and running the
same command again finishes the work with no duplicate and no missing row.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from radlake.catalog.db import transaction
from radlake.catalog.models import Job, utcnow
from radlake.catalog.persist import (
    CataloguedInput,
    RejectedInput,
    add_images,
    add_quarantined,
    ensure_source,
)
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import discover
from radlake.pipelines.executor import Executor, default_executor
from radlake.pipelines.worker import WorkerContext, process_input
from radlake.storage.store import ObjectStore

BATCH_SIZE = 256
BATCH_SECONDS = 2.0

Progress = Callable[[int, int], None]
"""Called with (inputs done, inputs in all) as work completes."""


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


class _Batcher:
    """Collects worker results and writes them in batches, counting outcomes."""

    def __init__(self, engine: Engine, source_id: int, job_id: int) -> None:
        self.engine, self.source_id, self.job_id = engine, source_id, job_id
        self.pending: list[CataloguedInput | RejectedInput] = []
        self.counts = {"catalogued": 0, "already_present": 0, "quarantined": 0, "bytes_read": 0}
        self.last_flush = time.monotonic()

    def add(self, result: CataloguedInput | RejectedInput) -> None:
        self.pending.append(result)
        if len(self.pending) >= BATCH_SIZE or time.monotonic() - self.last_flush > BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        images = [r for r in self.pending if isinstance(r, CataloguedInput)]
        rejects = [r for r in self.pending if isinstance(r, RejectedInput)]
        for attempt in (1, 2):
            try:
                with transaction(self.engine) as session:
                    inserted = add_images(
                        session, source_id=self.source_id, job_id=self.job_id, items=images
                    )
                    add_quarantined(
                        session, source_id=self.source_id, job_id=self.job_id, rejects=rejects
                    )
                    counts = {
                        "catalogued": self.counts["catalogued"] + len(inserted),
                        "already_present": self.counts["already_present"]
                        + len(images)
                        - len(inserted),
                        "quarantined": self.counts["quarantined"] + len(rejects),
                        "bytes_read": self.counts["bytes_read"]
                        + sum(r.size_bytes or 0 for r in self.pending),
                    }
                    session.get_one(Job, self.job_id).counts = counts
                break
            except IntegrityError:
                # Another ingest inserted some of the same rows meanwhile; the retry
                # sees them as present.
                if attempt == 2:
                    raise
        self.counts = counts
        self.pending.clear()
        self.last_flush = time.monotonic()


def _mark_interrupted(engine: Engine) -> None:
    """Jobs left 'running' by a process of this host that no longer exists."""
    host = socket.gethostname()
    with transaction(engine) as session:
        for job in session.scalars(select(Job).where(Job.status == "running", Job.host == host)):
            if job.pid is not None and not _alive(job.pid):
                job.status = "interrupted"
                job.error = "the process running this job ended before it finished"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    progress: Progress | None = None,
    on_result: Callable[[CataloguedInput | RejectedInput], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders into the lake; safe to re-run.

    on_result receives every input's outcome (source adapters map their keys to
    sha256 with it).

    Raises:
        InputPathError: a given path does not exist (nothing is ingested).
        StorageError, CatalogError: the store or the catalog failed (the job is
            recorded as failed; re-running finishes it).
    """
    started = time.perf_counter()
    found = discover(paths)
    pool = executor or default_executor(workers)
    _mark_interrupted(engine)
    store.remove_stale_temporary()  # what a killed run left half-written, if anything
    with transaction(engine) as session:
        source_id = ensure_source(session, name=source, kind=source_kind)
        job = Job(
            kind="ingest",
            status="running",
            parameters={
                "paths": [str(p) for p in paths],
                "source": source,
                "workers": pool.workers,
            },
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        session.add(job)
        session.flush()
        job_id = job.id
    total = len(found.files) + len(found.rejected)
    batcher = _Batcher(engine, source_id, job_id)
    status, error = "failed", None
    try:
        for rejected in found.rejected:
            batcher.add(rejected)
            if on_result:
                on_result(rejected)
        done = len(found.rejected)
        if progress:
            progress(done, total)
        task = functools.partial(process_input, WorkerContext(store, pseudonymizer))
        for result in pool.map_unordered(task, found.files):
            batcher.add(result)
            if on_result:
                on_result(result)
            done += 1
            if progress:
                progress(done, total)
        batcher.flush()
        status = "succeeded"
    except BaseException as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        raise
    finally:
        seconds = time.perf_counter() - started
        with transaction(engine) as session:
            job = session.get_one(Job, job_id)
            job.status, job.error = status, error
            job.counts = batcher.counts | {"inputs": total}
            job.finished_at, job.seconds = utcnow(), round(seconds, 3)
    return IngestSummary(
        job_id=job_id,
        inputs=total,
        catalogued=batcher.counts["catalogued"],
        already_present=batcher.counts["already_present"],
        quarantined=batcher.counts["quarantined"],
        bytes_read=batcher.counts["bytes_read"],
        seconds=seconds,
    )
