"""`radlake labels agreement`: how far the radiologists of a dataset agree."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from radlake.catalog.db import session_factory
from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, print_json
from radlake.curation.agreement import COLUMNS, MATCH_IOU, reader_agreement
from radlake.curation.filters import ImageFilter
from radlake.curation.versions import DatasetError, ground_truth, selected_images
from radlake.lake import load_settings, open_lake

app = typer.Typer(help="Labels: reader agreement.")


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


@app.command("agreement")
def agreement(
    select_: Annotated[
        list[str] | None, typer.Option("--select", help="key=value selection, repeatable.")
    ] = None,
    iou: Annotated[float, typer.Option(min=0.01, max=1.0, help="Box match IoU.")] = MATCH_IOU,
    as_json: JsonOption = False,
) -> None:
    """Image-level agreement, box F1 (IoU match) and Fleiss' kappa, per class."""
    try:
        selection = ImageFilter.parse(select_ or [])
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        ids = [image_id for image_id, _, _ in selected_images(session, selection)]
        findings = [f for fs in ground_truth(session, ids).values() for f in fs if f.reader]
    if not findings:
        raise DatasetError("no reader-attributed labels among the selected images")
    report = reader_agreement(findings, iou_threshold=iou)
    if as_json:
        print_json(report.as_dict())
        return
    table = Table(*COLUMNS, title=f"Reader agreement (boxes matched at IoU >= {iou:g})")
    for row in report.rows():
        table.add_row(*(_cell(value) for value in row))
    console.print(table)
    console.print(f"{report.single_reader_images} images with a single reader left out")
