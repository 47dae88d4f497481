"""Prefect tasks: thin calls into `radlake.pipelines`, one per step a person would
want to see in the UI.

Retries: a task that touches the store or the catalog (an "I/O task") is retried
only for a fault, an error that inherits ConnectionError by errors.py's design
(StoreUnavailable, CatalogUnavailable, IngestFault). Those arrive after the store's
and the catalog's own bounded retries (RADLAKE_RETRY_SECONDS) ran out, so Prefect's
retry is the second, slower tier: a fresh lake a minute later. Every pipeline is safe
to re-run, which is what makes retrying a whole step correct. A RadlakeError for bad
input (a missing folder, an unknown model, a bad filter) fails the task at once: the
same input would fail the same way. Pure steps (parsing a source's CSVs) never retry.

Each I/O task opens the lake from settings itself: a retry gets new connections, and
no engine or store crosses a task boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from radlake.config import Settings
from radlake.curation.filters import ImageFilter
from radlake.lake import Lake, load_settings, open_lake, open_store_at
from radlake.pipelines.backup import BACKUPS_PREFIX, backup_catalog
from radlake.pipelines.executor import open_executor
from radlake.pipelines.ingest import ingest
from radlake.pipelines.mart import MartFormat, push_version
from radlake.pipelines.predict import predict_batch, select_image_ids
from radlake.pipelines.retrain_set import RetrainRequest, build_retrain_set
from radlake.pipelines.source_load import load_source
from radlake.sources.base import SourceLoad
from radlake.sources.layouts import Layout, read_layout
from radlake.warehouse.build import build_warehouse
from radlake.warehouse.state import Format

P = ParamSpec("P")
R = TypeVar("R")
# Defaults; a flow applies RADLAKE_FLOW_RETRIES and _FLOW_RETRY_DELAY_SECONDS (with_retries).
DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY = 60.0


def is_fault(exc: BaseException) -> bool:
    """A fault of the store or the catalog (worth retrying), not a bad input."""
    return isinstance(exc, ConnectionError)


def retry_on_faults(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: retry faults only (the failed state holds the error)."""
    return isinstance(state.data, BaseException) and is_fault(state.data)


def io_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task that touches the store or the catalog: retried on faults only. No cache:
    inputs are paths and references whose content changes under the same name."""
    return task(
        name=name,
        retries=DEFAULT_RETRIES,
        retry_delay_seconds=DEFAULT_RETRY_DELAY,
        retry_condition_fn=retry_on_faults,
        cache_policy=NO_CACHE,
    )


def with_retries(io: Task[P, R], settings: Settings) -> Task[P, R]:
    """The I/O task with the retries the settings ask for."""
    return io.with_options(
        retries=settings.flow_retries, retry_delay_seconds=settings.flow_retry_delay_seconds
    )


@contextmanager
def opened_lake() -> Iterator[Lake]:
    """The lake from RADLAKE_* settings, as the CLI opens it; its engine closed after."""
    lake = open_lake(load_settings())
    try:
        yield lake
    finally:
        lake.engine.dispose()


@io_task("ingest")
def ingest_paths(
    paths: Sequence[Path], source: str, workers: int | None, executor: str | None
) -> dict[str, Any]:
    """Ingest files and folders (radlake.pipelines.ingest) on the executor named
    (local process pool, dask-local, dask://HOST:PORT)."""
    with (
        opened_lake() as lake,
        open_executor(executor, workers, item_seconds=lake.limits.file_seconds) as pool,
    ):
        summary = ingest(
            paths,
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            source=source,
            executor=pool,
            limits=lake.limits,
        )
    return summary.as_dict()


@task(name="read-source", cache_policy=NO_CACHE)
def read_source(layout: Layout, root: Path, name: str | None, columns: Sequence[str]) -> SourceLoad:
    """Parse a dataset's CSVs and list its files (pure: bad input fails at once).

    Raises:
        SourceFormatError: no such folder, an unknown layout or bad CSVs.
    """
    return read_layout(layout, root, name, columns)


@io_task("load-source")
def load_parsed_source(
    parsed: SourceLoad, workers: int | None, executor: str | None
) -> dict[str, Any]:
    """Ingest a parsed source's images, write its metadata and labels (source_load)."""
    with (
        opened_lake() as lake,
        open_executor(executor, workers, item_seconds=lake.limits.file_seconds) as pool,
    ):
        summary = load_source(
            parsed,
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            executor=pool,
            limits=lake.limits,
        )
    return summary.as_dict()


@io_task("select-images")
def select_images(
    selection: ImageFilter | None,
    dataset: str | None,
    dataset_version: int | None,
    split: str | None,
) -> list[int]:
    """Image ids of a selection or a dataset version's split (pipelines.predict)."""
    with opened_lake() as lake:
        return select_image_ids(
            lake, selection=selection, dataset=dataset, dataset_version=dataset_version, split=split
        )


@io_task("predict")
def predict_images(
    model: str,
    image_ids: list[int],
    score: float,
    iou: float,
    batch: int,
    workers: int,
) -> dict[str, Any]:
    """Predict the images not yet predicted by this model version (pipelines.predict)."""
    with opened_lake() as lake:
        summary = predict_batch(
            lake,
            model_ref=model,
            image_ids=image_ids,
            score_threshold=score,
            iou_threshold=iou,
            batch_size=batch,
            workers=workers,
            caller="flow",
        )
    return summary.as_dict()


@io_task("build-retrain-set")
def retrain_set(request: RetrainRequest) -> dict[str, Any]:
    """Build (or find) the retraining set of a model version's feedback (retrain_set)."""
    with opened_lake() as lake:
        outcome = build_retrain_set(lake, request)
    return outcome.summary.as_dict() | {
        "created": outcome.created,
        "exports": outcome.exports,
        "exported_now": outcome.exported_now,
    }


@io_task("build-warehouse")
def warehouse(fmt: Format, full: bool) -> dict[str, Any]:
    """Write the documents of images changed since the last build (warehouse.build)."""
    with opened_lake() as lake:
        summary = build_warehouse(lake, fmt=fmt, full=full, retry_seconds=lake.limits.retry_seconds)
    return summary.as_dict()


@io_task("push-mart")
def push_mart(
    dataset: str,
    version: int | None,
    destination_url: str,
    fmt: MartFormat,
    size: int | None,
    mode: Literal["pad", "stretch"],
    prune: bool,
    checksum: bool,
    jobs: int,
) -> dict[str, Any]:
    """Copy a version's export to a destination, new or changed files only (mart)."""
    with opened_lake() as lake:
        destination = open_store_at(load_settings(), destination_url)
        summary = push_version(
            engine=lake.engine,
            lake_store=lake.store,
            destination=destination,
            dataset=dataset,
            version=version,
            fmt=fmt,
            size=size,
            mode=mode,
            prune=prune,
            checksum=checksum,
            jobs=jobs,
            max_decoded_bytes=lake.limits.max_decoded_bytes,
        )
    return summary.as_dict()


@io_task("backup-catalog")
def backup(destination_url: str | None, keep: int | None) -> dict[str, Any]:
    """Snapshot every catalog table as Parquet, manifest last (pipelines.backup)."""
    with opened_lake() as lake:
        if destination_url is None:
            destination, prefix = lake.store, BACKUPS_PREFIX
        else:
            destination, prefix = open_store_at(load_settings(), destination_url), ""
        summary = backup_catalog(
            lake.engine,
            destination,
            prefix=prefix,
            keep=keep,
            pseudonymizer=lake.pseudonymizer,
            retry_seconds=lake.limits.retry_seconds,
        )
    return summary.as_dict()
