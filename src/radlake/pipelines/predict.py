"""Batch prediction: a model version over a selection or a dataset split, on the
executor, recorded as inference runs; re-running skips what is done.

Workers decode and run the model (inference.runner.run_task, each worker process
with its own cached session); the parent writes each batch's runs and boxes in one
transaction, so an interrupted job leaves whole batches and a re-run with the same
model version and thresholds predicts only the rest. One unreadable image never
stops the job: it is counted with its reason and tried again on the next run.
Each run is a `job` row (kind predict: parameters, counts, status, time), as ingest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from radlake.catalog.db import run_transaction, session_factory
from radlake.catalog.model_registry import predicted_image_ids, record_runs
from radlake.catalog.models import Image, Job, utcnow
from radlake.catalog.queries import apply_filter
from radlake.curation.filters import ImageFilter
from radlake.curation.versions import get_version, members
from radlake.errors import CatalogError
from radlake.inference.errors import InferenceError
from radlake.inference.runner import (
    DEFAULT_BATCH,
    DEFAULT_IOU,
    DEFAULT_SCORE,
    BatchTask,
    ImageOutcome,
    ServedModel,
    check_batch,
    check_threshold,
    run_task,
)
from radlake.inference.service import (
    InferenceResult,
    catalogued_images,
    run_record,
    served_model,
)
from radlake.lake import Lake
from radlake.pipelines.executor import Executor, LocalProcessExecutor, SerialExecutor
from radlake.pipelines.jobs import ACTIVE_JOBS, mark_interrupted


@dataclass(frozen=True, slots=True)
class PredictSummary:
    """What a batch prediction did."""

    model: str
    version: int
    selected: int
    skipped: int
    predicted: int
    boxes: int
    unreadable: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    job_id: int | None = None

    @property
    def rate(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model,
            "version": self.version,
            "selected": self.selected,
            "skipped_already_predicted": self.skipped,
            "predicted": self.predicted,
            "boxes": self.boxes,
            "unreadable": len(self.unreadable),
            "unreadable_reasons": {str(k): v for k, v in sorted(self.unreadable.items())[:20]},
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.rate, 2),
        }

    def line(self) -> str:
        return (
            f"{self.model}:{self.version}: {self.selected} selected, {self.skipped} already "
            f"predicted, {self.predicted} predicted ({self.boxes} boxes), "
            f"{len(self.unreadable)} unreadable, {self.seconds:.1f} s, {self.rate:.1f} images/s"
        )


def select_image_ids(
    lake: Lake,
    *,
    selection: ImageFilter | None = None,
    dataset: str | None = None,
    dataset_version: int | None = None,
    split: str | None = None,
) -> list[int]:
    """Image ids of a selection, or of a dataset version's split (all splits when None).

    Raises:
        InferenceError: neither or both of selection and dataset; no such split.
        DatasetError: no such dataset or version.
    """
    if (selection is None) == (dataset is None):
        raise InferenceError("give either a selection (--select) or a dataset (--dataset)")
    with session_factory(lake.engine)() as session:
        if dataset is not None:
            version = get_version(session, dataset, dataset_version)
            split_of = members(session, version.id)
            names = list(dict.fromkeys([*version.split_spec.get("names", []), *split_of.values()]))
            if split is not None and split not in names:
                # A typo used to predict nothing and report success ("0 selected").
                raise InferenceError(
                    f"{dataset}@{version.version} has no split {split!r:.60} "
                    f"(its splits: {', '.join(names) or 'none'})"
                )
            return sorted(i for i, s in split_of.items() if split is None or s == split)
        assert selection is not None
        return list(session.scalars(apply_filter(select(Image.id), selection).order_by(Image.id)))


def _executor(workers: int) -> Executor:
    # ONNX Runtime already uses every core in one process; more processes split them.
    return SerialExecutor() if workers == 1 else LocalProcessExecutor(workers, chunk_size=1)


def predict_batch(
    lake: Lake,
    *,
    model_ref: str,
    image_ids: Sequence[int],
    score_threshold: float = DEFAULT_SCORE,
    iou_threshold: float = DEFAULT_IOU,
    batch_size: int = DEFAULT_BATCH,
    workers: int = 1,
    caller: str = "cli",
    progress: Callable[[int, int], None] | None = None,
) -> PredictSummary:
    """Predict every image not yet predicted by this version with these thresholds.

    Raises:
        InferenceError: bad thresholds, batch size or worker count.
        ModelNotFound: no such model, version or alias.
        ModelFileError, InferenceUnavailable: the model cannot run.
        StorageError, CatalogError: the store or the catalog kept failing.
    """
    started = time.perf_counter()
    score_threshold = check_threshold("score", score_threshold)
    iou_threshold = check_threshold("IoU", iou_threshold)
    batch_size = check_batch(batch_size)
    if isinstance(workers, bool) or not 1 <= workers <= 256:
        raise InferenceError(f"expected 1..256 workers, got {workers!r:.20}")
    model = served_model(lake, model_ref)
    wanted = list(dict.fromkeys(image_ids))
    with session_factory(lake.engine)() as session:
        done = predicted_image_ids(
            session,
            model_version_id=model.version_id,
            image_ids=wanted,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
        )
        todo = [image_id for image_id in wanted if image_id not in done]
        stored = catalogued_images(session, todo)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    tasks = [
        BatchTask(
            lake.store,
            model,
            tuple((image_id, stored[image_id]) for image_id in todo[start : start + batch_size]),
            score_threshold,
            iou_threshold,
            lake.limits.max_decoded_bytes,
            threads,
        )
        for start in range(0, len(todo), batch_size)
    ]
    parameters = {
        "model": model.ref,
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
        "batch_size": batch_size,
        "workers": workers,
        "images": len(wanted),
    }
    job_id = run_transaction(lake.engine, partial(_open_job, parameters=parameters))
    predicted = boxes = 0
    unreadable: dict[int, str] = {}
    status, error = "failed", None

    def summary() -> PredictSummary:
        return PredictSummary(
            model.name,
            model.version,
            len(wanted),
            len(done),
            predicted,
            boxes,
            unreadable,
            time.perf_counter() - started,
            job_id,
        )

    try:
        if progress is not None:
            progress(0, len(todo))
        for outcomes in _executor(workers).map_unordered(run_task, tasks):
            readable = [outcome for outcome in outcomes if outcome.error is None]
            unreadable.update((o.image_id, o.error) for o in outcomes if o.error is not None)
            runs = [
                run_record(_result(model, outcome, score_threshold, iou_threshold), caller)
                for outcome in readable
            ]
            if runs:
                run_transaction(lake.engine, partial(record_runs, runs=runs))
            predicted += len(readable)
            boxes += sum(len(o.detections) for o in readable)
            if progress is not None:
                progress(predicted + len(unreadable), len(todo))
        status = "succeeded"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        raise
    finally:
        ACTIVE_JOBS.discard(job_id)
        result = summary()
        # Best effort: when the catalog itself is the fault, the job row keeps "running".
        with contextlib.suppress(CatalogError, SQLAlchemyError):
            run_transaction(
                lake.engine,
                partial(_close_job, job_id=job_id, status=status, error=error, summary=result),
                retry_seconds=5,
            )
    return result


def _open_job(session: Session, *, parameters: dict[str, Any]) -> int:
    mark_interrupted(session)  # a run killed before it could close its row
    job = Job(
        kind="predict",
        status="running",
        parameters=parameters,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    session.add(job)
    session.flush()
    ACTIVE_JOBS.add(job.id)  # before its row is visible: never taken for an abandoned job
    return job.id


def _close_job(
    session: Session, *, job_id: int, status: str, error: str | None, summary: PredictSummary
) -> None:
    job = session.get_one(Job, job_id)
    job.status, job.error, job.counts = status, error, summary.as_dict()
    job.finished_at, job.seconds = utcnow(), round(summary.seconds, 3)


def _result(model: ServedModel, outcome: ImageOutcome, score: float, iou: float) -> InferenceResult:
    return InferenceResult(
        outcome.image_id,
        None,
        model.name,
        model.version,
        model.version_id,
        list(outcome.detections),
        outcome.latency_ms,
        outcome.width,
        outcome.height,
        score,
        iou,
    )
