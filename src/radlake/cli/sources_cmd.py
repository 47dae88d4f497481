"""`radlake source vinbigdata|covid|nih PATH`: load a public chest X-ray dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from radlake.cli.ingest_cmd import JsonOption, progress_bar
from radlake.cli.output import console, print_json
from radlake.lake import load_settings, open_lake
from radlake.pipelines.source_load import SourceSummary, load_source
from radlake.sources.base import SourceLoad
from radlake.sources.covid_cxr import read_covid_cxr
from radlake.sources.csvfile import SourceFormatError
from radlake.sources.nih_cxr14 import read_nih_cxr14
from radlake.sources.vinbigdata import read_vinbigdata

app = typer.Typer(help="Load public chest X-ray datasets (images, metadata and labels).")
RootArgument = Annotated[Path, typer.Argument(help="The dataset's folder as downloaded.")]
NameOption = Annotated[str | None, typer.Option(help="Source name in the catalog.")]
WorkersOption = Annotated[int | None, typer.Option(min=1, max=256, help="Worker processes.")]


def _run(
    reader: Callable[..., SourceLoad],
    root: Path,
    name: str | None,
    workers: int | None,
    as_json: bool,
) -> None:
    if not root.is_dir():
        raise SourceFormatError(f"no such folder: {root}")
    lake = open_lake(load_settings())
    parsed = reader(root, name=name) if name else reader(root)
    with progress_bar("ingesting", not as_json) as progress:
        task = progress.add_task("ingesting", total=None) if progress else None

        def report(done: int, total: int) -> None:
            if progress is not None and task is not None:
                progress.update(task, completed=done, total=total)

        summary: SourceSummary = load_source(
            parsed,
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            workers=workers,
            limits=lake.limits,
            progress=report,
        )
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(summary.line(), highlight=False)


@app.command("vinbigdata")
def vinbigdata(
    root: RootArgument,
    name: NameOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """VinBigData: train.csv, train/<image_id>.dicom|.png, optional train_meta.csv."""
    _run(read_vinbigdata, root, name, workers, as_json)


@app.command("covid")
def covid(
    root: RootArgument,
    name: NameOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """COVID-19 chest X-ray collection: metadata.csv + images/."""
    _run(read_covid_cxr, root, name, workers, as_json)


@app.command("nih")
def nih(
    root: RootArgument,
    name: NameOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """NIH ChestX-ray14: Data_Entry_2017*.csv, BBox_List_2017.csv, images/."""
    _run(read_nih_cxr14, root, name, workers, as_json)
