"""`radlake query`, `show`, `quarantine` and `jobs`: reading the catalog."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from radlake.catalog.db import session_factory
from radlake.catalog.models import Image
from radlake.catalog.queries import (
    count_images,
    find_images,
    finding_classes,
    get_image,
    list_quarantine,
    recent_jobs,
)
from radlake.catalog.serialize import image_detail, image_summary, job_row, quarantine_row
from radlake.cli.filter_options import with_filter_options
from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.labels_cmd import label_table, labels_of, origin_title
from radlake.cli.output import console, print_json
from radlake.curation.filters import ImageFilter
from radlake.lake import load_settings, open_lake


@with_filter_options
def query(
    selection: ImageFilter,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many rows.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many rows.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """List catalogued images matching filters (a series in slice order)."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        total = count_images(session, selection=selection)
        images = find_images(session, selection=selection, limit=limit, offset=offset)
        findings = finding_classes(session, image_ids=[image.id for image in images])
        rows = [image_summary(image) | _listing_extra(image, findings) for image in images]
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


def _listing_extra(image: Image, findings: dict[int, list[str]]) -> dict[str, Any]:
    """What `query --json` adds to a summary: identity, view, findings and licence."""
    return {
        "sop_instance_uid": image.sop_instance_uid,
        "view": image.view_position,
        "findings": findings.get(image.id, []),
        "license": (image.attributes or {}).get("license"),
    }


def show(
    image_id: Annotated[int, typer.Argument(help="Image id (from `radlake query`).")],
    as_json: JsonOption = False,
) -> None:
    """Every catalogued field of one image, and its labels (every origin)."""
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        detail = image_detail(get_image(session, image_id=image_id))
        labels = labels_of(session, image_id, None)
    if as_json:
        print_json(detail | {"labels": labels, "labels_origin": "all"})
        return
    table = Table("field", "value", show_header=False)
    for name, value in detail.items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)
    console.print(label_table(labels, f"{len(labels)} labels ({origin_title(None)})"))


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
