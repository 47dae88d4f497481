"""`radlake query`, `show`, `quarantine` and `jobs`: reading the catalog."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from radlake.catalog.db import session_factory
from radlake.catalog.queries import (
    ImageFilter,
    count_images,
    find_images,
    get_image,
    list_quarantine,
    recent_jobs,
)
from radlake.catalog.serialize import image_detail, image_summary, job_row, quarantine_row
from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, print_json
from radlake.lake import load_settings, open_lake


def query(
    modality: Annotated[str | None, typer.Option(help="DICOM modality, e.g. MR, CT, CR.")] = None,
    manufacturer: Annotated[
        str | None, typer.Option(help="Manufacturer prefix, any case: GE, Siemens.")
    ] = None,
    series: Annotated[str | None, typer.Option(help="Series Instance UID.")] = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient pseudonym.")] = None,
    image_format: Annotated[
        str | None, typer.Option("--format", help="dicom, nifti, png or jpeg.")
    ] = None,
    body_part: Annotated[str | None, typer.Option(help="Body part examined, e.g. HEAD.")] = None,
    view: Annotated[str | None, typer.Option(help="View position, e.g. PA, AP.")] = None,
    source: Annotated[str | None, typer.Option(help="Source name.")] = None,
    min_rows: Annotated[
        int | None, typer.Option(min=0, max=2**31 - 1, help="At least this many rows.")
    ] = None,
    min_columns: Annotated[
        int | None, typer.Option(min=0, max=2**31 - 1, help="At least this many columns.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many rows.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many rows.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """List catalogued images matching filters (a series in slice order)."""
    lake = open_lake(load_settings())
    selection = ImageFilter(
        modality=modality,
        manufacturer=manufacturer,
        series_uid=series,
        study_uid=study,
        patient=patient,
        format=image_format,
        body_part=body_part,
        view=view,
        source=source,
        min_rows=min_rows,
        min_columns=min_columns,
    )
    with session_factory(lake.engine)() as session:
        total = count_images(session, selection=selection)
        rows = [
            image_summary(image)
            for image in find_images(session, selection=selection, limit=limit, offset=offset)
        ]
    if as_json:
        print_json({"total": total, "offset": offset, "images": rows})
        return
    table = Table("id", "format", "modality", "manufacturer", "size", "frames", "series", "path")
    for row in rows:
        depth = row["frames"] if row["frames"] > 1 else row["slices"]
        table.add_row(
            str(row["id"]),
            row["format"],
            row["modality"] or "",
            row["manufacturer"] or "",
            f"{row['columns']}x{row['rows']}",
            str(depth),
            (row["series_uid"] or "")[-24:],
            row["source_key"][-48:],
        )
    console.print(table)
    console.print(f"{len(rows)} of {total} images (offset {offset})")


def show(
    image_id: Annotated[int, typer.Argument(help="Image id (from `radlake query`).")],
    as_json: JsonOption = False,
) -> None:
    """Every catalogued field of one image."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        detail = image_detail(get_image(session, image_id=image_id))
    if as_json:
        print_json(detail)
        return
    table = Table("field", "value", show_header=False)
    for name, value in detail.items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


def quarantine(
    limit: Annotated[
        int | None, typer.Option(min=1, max=10**9, help="At most this many rows.")
    ] = None,
    include_resolved: Annotated[
        bool, typer.Option("--all", help="Also inputs catalogued by a later run.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Every rejected input with the reason it was rejected (not catalogued since)."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        found = list_quarantine(session, limit=limit, include_resolved=include_resolved)
        rows = [quarantine_row(row) for row in found]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "input", "reason")
    for row in rows:
        table.add_row(str(row["id"]), row["source_key"], row["reason"])
    console.print(table)
    console.print(f"{len(rows)} quarantined inputs")


def jobs(
    limit: Annotated[int, typer.Option(min=1, max=10**6, help="At most this many jobs.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recent jobs with their status, counts and timings."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        rows = [job_row(job) for job in recent_jobs(session, limit=limit)]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "kind", "status", "counts", "seconds", "error")
    for row in rows:
        counts = ", ".join(f"{key} {value}" for key, value in sorted(row["counts"].items()))
        table.add_row(
            str(row["id"]),
            row["kind"],
            row["status"],
            counts,
            str(row["seconds"]),
            row["error"] or "",
        )
    console.print(table)
