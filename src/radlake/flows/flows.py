"""The flows: plain arguments in (paths, names, references), the lake from RADLAKE_*
settings as the CLI builds it, one pipeline call (through tasks.py) and its summary
out as a JSON-able dict. `FLOWS` names them for `radlake flows run` and the schedules.

Arguments are checked before any task runs where that needs no catalog (a filter's
syntax, a confidence range), so bad input fails the flow at once with its message;
what needs the catalog to judge (an unknown model) fails its I/O task, unretried.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import Flow, flow

from radlake.config import Settings
from radlake.curation.filters import ImageFilter
from radlake.flows.tasks import (
    backup,
    ingest_paths,
    load_parsed_source,
    predict_images,
    push_mart,
    read_source,
    retrain_set,
    select_images,
    warehouse,
    with_retries,
)
from radlake.inference.runner import DEFAULT_BATCH, DEFAULT_IOU, DEFAULT_SCORE
from radlake.lake import load_settings, store_url_for
from radlake.pipelines.backup import BackupError
from radlake.pipelines.executor import dask_address
from radlake.pipelines.mart import MartError
from radlake.pipelines.mart import check_format as check_mart_format
from radlake.pipelines.retrain_set import RetrainError, RetrainRequest
from radlake.sources.layouts import Layout
from radlake.warehouse.state import check_format as check_warehouse_format


def _executor(executor: str | None, settings: Settings) -> str | None:
    """The executor spec asked for, else RADLAKE_EXECUTOR; a bad one fails here, at once
    (an unreachable cluster is a fault of the task: retried)."""
    spec = executor or settings.executor
    dask_address(spec)
    return spec


@flow(name="ingest-folder")
def ingest_folder(
    folder: Path, source: str = "folder", workers: int | None = None, executor: str | None = None
) -> dict[str, Any]:
    """Ingest a folder (or a file): every input catalogued, already present or
    quarantined with its reason; executor local, dask-local or dask://HOST:PORT
    (default RADLAKE_EXECUTOR)."""
    settings = load_settings()
    spec = _executor(executor, settings)
    # A missing folder is discover()'s InputPathError in the task: failed, not retried.
    return with_retries(ingest_paths, settings)([folder], source, workers, spec)


@flow(name="load-source")
def load_source_flow(
    layout: Layout,
    root: Path,
    name: str | None = None,
    columns: list[str] | None = None,
    workers: int | None = None,
    executor: str | None = None,
) -> dict[str, Any]:
    """Load a public chest X-ray dataset (vinbigdata, covid, nih): images, metadata,
    labels; `columns` as canonical=actual, like `radlake source --column`."""
    settings = load_settings()
    spec = _executor(executor, settings)
    parsed = read_source(layout, root, name, columns or [])
    return with_retries(load_parsed_source, settings)(parsed, workers, spec)


@flow(name="batch-predict")
def batch_predict(
    model: str,
    dataset: str | None = None,
    dataset_version: int | None = None,
    split: str | None = None,
    select: list[str] | None = None,
    score: float = DEFAULT_SCORE,
    iou: float = DEFAULT_IOU,
    batch: int = DEFAULT_BATCH,
    workers: int = 1,
) -> dict[str, Any]:
    """Predict a dataset's split (or a selection, key=value) with a model version
    (NAME, NAME:V, NAME@ALIAS); images already predicted are skipped."""
    settings = load_settings()
    selection = ImageFilter.parse(select) if select else None
    image_ids = with_retries(select_images, settings)(selection, dataset, dataset_version, split)
    return with_retries(predict_images, settings)(model, image_ids, score, iou, batch, workers)


@flow(name="retrain-set")
def retrain_set_flow(
    model: str,
    since: datetime | None = None,
    min_confidence: float = 0.0,
    dataset: str | None = None,
    dataset_version: int | None = None,
    simulated: bool = True,
    split: str = "training",
    size: int = 1024,
) -> dict[str, Any]:
    """Make reviewers' feedback on a model version a retraining set (a label set, a
    dataset version keeping the base's held-out splits, YOLO and COCO exports)."""
    settings = load_settings()
    if dataset_version is not None and dataset is None:
        raise RetrainError("dataset_version needs dataset")
    if not 0.0 <= min_confidence <= 1.0:
        raise RetrainError(f"expected a confidence in [0, 1], got {min_confidence}")
    request = RetrainRequest(
        model=model,
        # A time without a zone is UTC, as on the command line (cli/times.py).
        since=since if since is None or since.tzinfo else since.replace(tzinfo=UTC),
        min_confidence=min_confidence,
        dataset=dataset,
        dataset_version=dataset_version,
        simulated=simulated,
        split=split,
        export_size=size,
    )
    return with_retries(retrain_set, settings)(request)


@flow(name="warehouse-build")
def warehouse_build(format: str = "parquet", full: bool = False) -> dict[str, Any]:
    """Write per-image documents (parquet for `radlake sql`, or jsonl) under warehouse/
    in the store; only images changed since the last build, all with full."""
    settings = load_settings()
    fmt = check_warehouse_format(format)
    return with_retries(warehouse, settings)(fmt, full)


@flow(name="mart-push")
def mart_push(
    dataset: str,
    to: str,
    format: str,
    version: int | None = None,
    size: int = 1024,
    mode: str = "pad",
    prune: bool = False,
    checksum: bool = False,
    jobs: int = 4,
) -> dict[str, Any]:
    """Copy a dataset version's YOLO or COCO export to a folder or s3://bucket/prefix,
    new or changed files only, each read back; newest version by default."""
    settings = load_settings()
    fmt = check_mart_format(format)
    if mode not in ("pad", "stretch"):
        raise MartError(f"expected mode pad or stretch, got {mode[:40]!r}")
    if not 0 <= size <= 65536 or not 1 <= jobs <= 32:
        raise MartError(f"expected size in 0..65536 and jobs in 1..32, got {size}, {jobs}")
    url = store_url_for(to)
    return with_retries(push_mart, settings)(
        dataset,
        version,
        url,
        fmt,
        size or None,
        "pad" if mode == "pad" else "stretch",
        prune,
        checksum,
        jobs,
    )


@flow(name="backup")
def backup_flow(to: str | None = None, keep: int | None = None) -> dict[str, Any]:
    """Write a consistent snapshot of every catalog table as Parquet, under backups/ in
    the lake's store or a folder or s3:// URL; with keep, only the last N stay."""
    settings = load_settings()
    if keep is not None and keep < 1:
        raise BackupError(f"expected keep of at least 1, got {keep}")
    return with_retries(backup, settings)(None if to is None else store_url_for(to), keep)


FLOWS: dict[str, Flow[..., dict[str, Any]]] = {
    "backup": backup_flow,
    "ingest-folder": ingest_folder,
    "load-source": load_source_flow,
    "batch-predict": batch_predict,
    "retrain-set": retrain_set_flow,
    "warehouse-build": warehouse_build,
    "mart-push": mart_push,
}
