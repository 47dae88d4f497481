"""`radlake source vinbigdata|covid|nih PATH`: load a public chest X-ray dataset.

The CSV commands take `--column canonical=actual` (repeatable) for collections whose
columns are named otherwise; `source covid` recognises the ieee8023 collection's
siblings (Figure1, Actualmed) from their headers without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from radlake.cli.ingest_cmd import ExecutorOption, JsonOption, progress_reporter
from radlake.cli.output import console, err_console, print_json
from radlake.lake import load_settings, open_lake
from radlake.pipelines.executor import open_executor
from radlake.pipelines.source_load import SourceSummary, load_source
from radlake.sources.csvfile import SourceFormatError
from radlake.sources.layouts import Reader, reader_for

app = typer.Typer(help="Load public chest X-ray datasets (images, metadata and labels).")
RootArgument = Annotated[Path, typer.Argument(help="The dataset's folder as downloaded.")]
NameOption = Annotated[str | None, typer.Option(help="Source name in the catalog.")]
WorkersOption = Annotated[int | None, typer.Option(min=1, max=256, help="Worker processes.")]
ColumnOption = Annotated[
    list[str] | None,
    typer.Option(
        "--column",
        metavar="CANONICAL=ACTUAL",
        help="Read a column under another name, e.g. filename=imagename (repeatable).",
    ),
]


def _run(
    reader: Reader,
    root: Path,
    workers: int | None,
    executor: str | None,
    as_json: bool,
) -> None:
    if not root.is_dir():
        raise SourceFormatError(f"no such folder: {root}")
    settings = load_settings()
    lake = open_lake(settings)
    parsed = reader(root)
    spec = executor or settings.executor
    with (
        open_executor(spec, workers, item_seconds=lake.limits.file_seconds) as pool,
        progress_reporter("ingesting", not as_json) as report,
    ):
        summary: SourceSummary = load_source(
            parsed,
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            executor=pool,
            workers=workers,
            limits=lake.limits,
            progress=report,
        )
    if as_json:
        print_json(summary.as_dict())
        return
    if summary.layout:
        console.print(f"read as: {summary.layout}", highlight=False)
    console.print(summary.line(), highlight=False)
    for warning in summary.warnings():
        err_console.print(
            f"warning: {warning} (radlake quarantine lists them)", highlight=False, markup=False
        )


@app.command("vinbigdata")
def vinbigdata(
    root: RootArgument,
    name: NameOption = None,
    column: ColumnOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    as_json: JsonOption = False,
) -> None:
    """VinBigData: train.csv, train/<image_id>.dicom|.png, optional train_meta.csv."""
    _run(reader_for("vinbigdata", name, column or []), root, workers, executor, as_json)


@app.command("covid")
def covid(
    root: RootArgument,
    name: NameOption = None,
    column: ColumnOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    as_json: JsonOption = False,
) -> None:
    """COVID-19 chest X-ray collections (ieee8023, Figure1, Actualmed): metadata.csv + images/."""
    _run(reader_for("covid", name, column or []), root, workers, executor, as_json)


@app.command("nih")
def nih(
    root: RootArgument,
    name: NameOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    as_json: JsonOption = False,
) -> None:
    """NIH ChestX-ray14: Data_Entry_2017*.csv, BBox_List_2017.csv, images/."""
    # Its CSVs are read by position (the header names two-valued columns once): no --column.
    _run(reader_for("nih", name, []), root, workers, executor, as_json)
