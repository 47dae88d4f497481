"""`radlake feedback import|list`: bring the original pipeline's feedback files in,
and read reviewers' feedback back (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from radlake.catalog.db import session_factory
from radlake.catalog.feedback import FeedbackRecord, feedback_records
from radlake.catalog.model_registry import resolve_version
from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, err_console, print_json
from radlake.cli.times import parse_time
from radlake.lake import load_settings, open_lake
from radlake.pipelines.feedback_import import (
    DEFAULT_REVIEWER,
    FeedbackImportRequest,
    import_feedback,
)

app = typer.Typer(help="Reviewers' feedback on predictions.", no_args_is_help=True)


@app.command("import")
def import_(
    folder: Annotated[Path, typer.Argument(help="Folder of <image_id>.json feedback files.")],
    model: Annotated[
        str,
        typer.Option("--model", help="Model whose predictions they review: NAME[:VERSION|@ALIAS]."),
    ],
    source: Annotated[
        str | None, typer.Option(help="Match only this source's images (two share an id).")
    ] = None,
    reviewer: Annotated[str, typer.Option(help="Reviewer the rows name.")] = DEFAULT_REVIEWER,
    as_json: JsonOption = False,
) -> None:
    """Import the original pipeline's feedback files (one box or a list per image) as
    accepted predictions of the model; re-running imports nothing twice.

    Every file ends imported, already imported, or rejected with its reason.
    """
    lake = open_lake(load_settings())
    request = FeedbackImportRequest(folder, model, source=source, reviewer=reviewer)
    with progress_reporter("importing feedback", not as_json) as report:
        summary = import_feedback(request, engine=lake.engine, progress=report)
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(summary.line(), highlight=False, markup=False)
        for name, rejection in summary.rejected:
            console.print(
                f"  rejected {name}: {rejection.message} [{rejection.reason}]",
                highlight=False,
                markup=False,
            )
    if summary.nothing_usable:
        # A script must see that nothing of the folder could be used.
        err_console.print("error: every file was rejected: nothing imported", highlight=False)
        raise typer.Exit(1)


def _box(record: FeedbackRecord) -> str:
    box = record.box
    return (
        "-"
        if box is None
        else ", ".join(f"{v:.1f}" for v in (box.x_min, box.y_min, box.x_max, box.y_max))
    )


@app.command("list")
def list_(
    model: Annotated[
        str | None, typer.Option("--model", help="Only this model version: NAME[:VERSION|@ALIAS].")
    ] = None,
    image: Annotated[int | None, typer.Option("--image", help="Only this image id.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only feedback at or after this ISO 8601 time (UTC).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many rows.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Feedback rows, newest first: verdict, class, box, confidence, who and how."""
    after = None if since is None else parse_time(since)
    lake = open_lake(load_settings())
    with session_factory(lake.engine)() as session:
        version_id = None if model is None else resolve_version(session, ref=model).id
        records = feedback_records(
            session,
            image_id=image,
            model_version_id=version_id,
            since=after,
            limit=limit,
            newest_first=True,
        )
    if as_json:
        print_json({"feedback": [record.as_dict() for record in records]})
        return
    table = Table(
        "id",
        "image",
        "model",
        "verdict",
        "class",
        "box",
        "conf",
        "reviewer",
        "simulated",
        "channel",
        "time",
    )
    for record in records:
        table.add_row(
            str(record.id),
            str(record.image_id),
            Text(f"{record.model}:{record.version}"),
            record.verdict,
            Text(record.class_name or "-"),
            _box(record),
            "-" if record.confidence is None else f"{record.confidence:.3f}",
            Text(record.reviewer),
            "SIMULATED" if record.simulated else "",
            record.channel,
            record.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    console.print(
        f"{len(records)} feedback rows" + (" (limit reached)" if len(records) == limit else "")
    )
