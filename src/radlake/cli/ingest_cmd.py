"""`radlake init` and `radlake ingest`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.engine import make_url

from radlake.cli.output import console, err_console, print_json
from radlake.lake import Lake, init_lake, load_settings, open_lake
from radlake.pipelines.deidentify import deidentify_job
from radlake.pipelines.executor import EXECUTOR_SPECS, Executor, open_executor
from radlake.pipelines.ingest import IngestSummary
from radlake.pipelines.ingest import ingest as run_ingest

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ExecutorOption = Annotated[
    str | None,
    typer.Option(
        help=f"Where per-file work runs: {EXECUTOR_SPECS} (default: RADLAKE_EXECUTOR, else local)."
    ),
]


def init() -> None:
    """Create the lake in RADLAKE_HOME (SQLite catalog + local store by default)."""
    settings = load_settings()
    _, created_key = init_lake(settings)
    console.print(f"lake ready: catalog {_redact(settings.resolved_catalog_url())}")
    console.print(f"            store   {settings.resolved_store_url()}")
    if created_key:
        console.print(f"secret key generated in {settings.home / 'secret.key'} (keep it private)")


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr (off for --json or when not a terminal)."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        yield progress


@contextmanager
def progress_reporter(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A (done, total) callback that drives `progress_bar` (does nothing when it is off)."""
    with progress_bar(description, enabled) as progress:
        if progress is None:
            yield lambda done, total: None
            return
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@contextmanager
def phase_reporter(
    description: str, enabled: bool
) -> Iterator[Callable[[str, int, int | None], None]]:
    """A (phase, done, total) callback for work in named phases: the bar's description
    follows the phase (does nothing when the bar is off)."""
    with progress_bar(description, enabled) as progress:
        if progress is None:
            yield lambda phase, done, total: None
            return
        task = progress.add_task(description, total=None)
        yield lambda phase, done, total: progress.update(
            task, description=phase, completed=done, total=total
        )


def ingest_with_progress(
    lake: Lake,
    paths: Sequence[Path],
    *,
    workers: int | None,
    source: str,
    show: bool,
    executor: Executor | None = None,
) -> IngestSummary:
    """Run ingest with a progress bar; used by `ingest` and `quickstart`."""
    with progress_reporter("ingesting", show) as report:
        return run_ingest(
            paths,
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            source=source,
            executor=executor,
            workers=workers,
            limits=lake.limits,
            progress=report,
        )


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest.")],
    workers: Annotated[
        int | None, typer.Option(min=1, max=256, help="Worker processes (default: one per CPU).")
    ] = None,
    source: Annotated[str, typer.Option(help="Name of the source these inputs come from.")] = (
        "folder"
    ),
    executor: ExecutorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest DICOM, NIfTI, PNG and JPEG files; re-running is a no-op for known bytes."""
    settings = load_settings()
    spec = executor or settings.executor
    with open_executor(spec, workers, item_seconds=settings.file_seconds) as pool:
        lake = open_lake(settings)
        summary = ingest_with_progress(
            lake, paths, workers=workers, source=source, show=not as_json, executor=pool
        )
    deid = None
    if lake.deid.on_ingest:  # setting deid_on_ingest: each new DICOM image, now
        with progress_reporter("de-identifying", not as_json) as report:
            deid = deidentify_job(lake, summary.job_id, progress=report)
    if as_json:
        print_json(summary.as_dict() | ({"deidentified": deid.as_dict()} if deid else {}))
    else:
        console.print(summary.line(), highlight=False)
        if deid is not None:
            console.print(deid.line(), highlight=False)
