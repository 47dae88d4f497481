"""`radlake warehouse build` and `radlake sql`: per-image documents under warehouse/
in the store, and DuckDB over them."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
import uuid
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, err_console, print_json
from radlake.lake import load_settings, open_lake
from radlake.warehouse.state import VIEWS, check_format

if TYPE_CHECKING:
    from radlake.warehouse.sql import Result

app = typer.Typer(help="The analytics warehouse: per-image documents for DuckDB.")
TABLE_ROWS = 1000  # rows a terminal table shows; csv and json print every row


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command("build")
def build(
    fmt: Annotated[
        str,
        typer.Option("--format", help="parquet (for `radlake sql`) or jsonl (document stores)."),
    ] = "parquet",
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="Rewrite every document and drop superseded parts (compaction)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Write one document per image (with its series, study, pseudonymous patient,
    labels, predictions, feedback and dataset memberships) under warehouse/ in the
    store. Only images that changed since the last build are written again."""
    chosen = check_format(fmt)
    settings = load_settings()
    lake = open_lake(settings)
    with progress_reporter("documents", not as_json) as report:
        from radlake.warehouse.build import build_warehouse  # pyarrow: only when building

        summary = build_warehouse(
            lake, fmt=chosen, full=full, progress=report, retry_seconds=settings.retry_seconds
        )
    if as_json:
        print_json(summary.as_dict())
        return
    images = "image" if summary.images_written == 1 else "images"
    parts = "part" if summary.parts_written == 1 else "parts"
    head = (
        f"{summary.format} build {summary.build} ({summary.reason}): "
        f"{summary.images_written} {images} written in {summary.parts_written} {parts}"
        if summary.images_written
        else f"{summary.format}: nothing changed since build {summary.build}; nothing written"
    )
    console.print(f"{head} in {summary.seconds:.2f} s", highlight=False)
    console.print(
        f"warehouse: {summary.images} images, {summary.documents} documents in "
        f"{summary.parts} parts ({summary.superseded} superseded"
        + (", `--full` compacts them)" if summary.superseded else ")")
        + (f"; {summary.parts_removed} old parts removed" if summary.parts_removed else ""),
        highlight=False,
    )


def sql(
    query: Annotated[str, typer.Argument(help=f"One SELECT over the views: {', '.join(VIEWS)}.")],
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table (default), csv or json.")
    ] = OutputFormat.table,
) -> None:
    """Run one read-only SQL statement (DuckDB) over the warehouse, local or S3.
    Build it first with `radlake warehouse build`."""
    lake = open_lake(load_settings())
    from radlake.warehouse.sql import query_warehouse  # DuckDB: only when querying

    result = query_warehouse(lake.store, query)
    if output is OutputFormat.json:
        print_json([dict(zip(result.columns, _plain(row), strict=True)) for row in result.rows])
    elif output is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([_csv_cell(value) for value in _plain(row)] for row in result.rows)
    else:
        _print_table(result)


def _print_table(result: Result) -> None:
    # Text, not str: a value like "[red]" is data here, not rich markup.
    table = Table()
    for column in result.columns:
        table.add_column(Text(column))
    for row in result.rows[:TABLE_ROWS]:
        table.add_row(*(Text(_cell(value)) for value in _plain(row)))
    console.print(table)
    more = len(result.rows) - TABLE_ROWS
    rows = "row" if len(result.rows) == 1 else "rows"
    note = f" ({more} not shown: add LIMIT or use --format csv)" if more > 0 else ""
    err_console.print(f"{len(result.rows)} {rows}{note}", highlight=False)


def _plain(row: tuple[Any, ...]) -> list[Any]:
    return [_json_value(value) for value in row]


def _json_value(value: Any) -> Any:
    """DuckDB's Python values as JSON values (nested ones too)."""
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _csv_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
