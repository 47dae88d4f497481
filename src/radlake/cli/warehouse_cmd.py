"""`radlake warehouse build` and `radlake sql`: per-image documents under warehouse/
in the store, and DuckDB over them."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import sys
import textwrap
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
    from radlake.warehouse.sql import RowStream

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
    from radlake.warehouse.sql import open_query  # DuckDB: only when querying

    # Streamed: a result of millions of rows costs one batch of memory, and the
    # table reads only the rows it shows.
    with open_query(lake.store, query) as stream:
        if output is OutputFormat.json:
            _write_json(stream)
        elif output is OutputFormat.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(stream.columns)
            for batch in stream.batches:
                writer.writerows([_csv_cell(value) for value in _plain(row)] for row in batch)
        else:
            _print_table(stream)


def _write_json(stream: RowStream) -> None:
    """One JSON array, as print_json writes it, one row at a time."""
    sys.stdout.write("[")
    first = True
    for batch in stream.batches:
        for row in batch:
            item = dict(zip(stream.columns, _plain(row), strict=True))
            text = json.dumps(item, indent=2, default=str, sort_keys=True)
            sys.stdout.write(("\n" if first else ",\n") + textwrap.indent(text, "  "))
            first = False
    sys.stdout.write("]\n" if first else "\n]\n")


def _print_table(stream: RowStream) -> None:
    # Text, not str: a value like "[red]" is data here, not rich markup.
    table = Table()
    for column in stream.columns:
        table.add_column(Text(column))
    shown, more = 0, False
    for batch in stream.batches:
        for row in batch:
            if shown == TABLE_ROWS:  # a row past the table: stop reading the result
                more = True
                break
            table.add_row(*(Text(_cell(value)) for value in _plain(row)))
            shown += 1
        if more:
            break
    console.print(table)
    rows = "row" if shown == 1 else "rows"
    note = " shown, more not read: add LIMIT or use --format csv" if more else ""
    err_console.print(f"{shown} {rows}{note}", highlight=False)


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
