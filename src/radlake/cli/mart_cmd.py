"""`radlake mart push`: a dataset version's YOLO/COCO export copied to a folder or an
S3 prefix outside the lake, incrementally and verified (see pipelines/mart.py)."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from radlake.catalog.db import session_factory
from radlake.cli.ingest_cmd import JsonOption, progress_bar
from radlake.cli.output import console, err_console, human_bytes, print_json
from radlake.curation.versions import get_version
from radlake.lake import load_settings, open_lake, open_store_at, store_url_for
from radlake.pipelines.mart import MART_FORMATS, MartError, check_format, parse_target, push_version

app = typer.Typer(help="Push dataset exports to data marts outside the lake.")
STALE_SHOWN = 10


@app.command("push")
def push(
    target: Annotated[
        str, typer.Argument(metavar="DATASET[:VERSION]", help="Newest version by default.")
    ],
    to: Annotated[str, typer.Option("--to", help="Destination: a folder or s3://bucket/prefix.")],
    fmt: Annotated[str, typer.Option("--format", help=f"{' or '.join(MART_FORMATS)}.")],
    size: Annotated[int, typer.Option(min=0, help="Image size; 0 keeps stored sizes.")] = 1024,
    mode: Annotated[str, typer.Option(help="pad (keep aspect) or stretch.")] = "pad",
    prune: Annotated[
        bool, typer.Option(help="Remove files radlake pushed earlier that no longer belong.")
    ] = False,
    checksum: Annotated[
        bool,
        typer.Option(help="Read back and hash every destination file, not only doubtful ones."),
    ] = False,
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Files copied at once.")] = 4,
    as_json: JsonOption = False,
) -> None:
    """Copy a version's export to a destination: only new or changed files, each read
    back and checked; the destination manifest (.radlake-mart.json) is written last."""
    dataset, version = parse_target(target)
    chosen = check_format(fmt)
    if mode not in ("pad", "stretch"):
        raise MartError(f"expected --mode pad or stretch, got {mode[:40]!r}")
    url = store_url_for(to)
    settings = load_settings()
    lake = open_lake(settings)
    with session_factory(lake.engine)() as session:
        get_version(session, dataset, version)  # a bad name touches no destination
    destination = open_store_at(settings, url)
    lock = threading.Lock()
    with progress_bar("pushing", not as_json) as progress:
        # The number of files is known only once the export has run: a count, no total.
        task = progress.add_task("pushing", total=None) if progress is not None else None

        def on_file(_path: str, _copied: bool) -> None:
            if progress is not None and task is not None:
                with lock:
                    progress.advance(task)

        summary = push_version(
            engine=lake.engine,
            lake_store=lake.store,
            destination=destination,
            dataset=dataset,
            version=version,
            fmt=chosen,
            size=size or None,
            mode="pad" if mode == "pad" else "stretch",
            prune=prune,
            checksum=checksum,
            jobs=jobs,
            max_decoded_bytes=lake.limits.max_decoded_bytes,
            on_file=on_file,
        )
    result = summary.as_dict()
    if as_json:
        print_json(result)
        return
    for note in summary.notes:
        err_console.print(f"warning: {note}", highlight=False, markup=False)
    for path in summary.stale[:STALE_SHOWN]:
        err_console.print(f"stale: {path}", highlight=False, markup=False)
    if len(summary.stale) > STALE_SHOWN:
        err_console.print(
            f"stale: ... and {len(summary.stale) - STALE_SHOWN} more", highlight=False
        )
    console.print(
        f"{summary.format} push of {dataset} v{summary.version} -> {summary.destination}: "
        f"{summary.files} files, {summary.copied} copied ({human_bytes(summary.bytes_copied)}"
        f"{f', {summary.repaired} repaired' if summary.repaired else ''}), "
        f"{summary.skipped} skipped (unchanged), in {summary.seconds:.1f} s "
        f"({result['mb_per_second']} MB/s)",
        highlight=False,
    )
    if summary.stale:
        console.print(
            f"{len(summary.stale)} stale files (no longer in the export): --prune removes them",
            highlight=False,
        )
    if summary.pruned:
        console.print(f"{summary.pruned} stale files removed", highlight=False)
    if summary.foreign:
        console.print(
            f"{summary.foreign} other files at the destination (not radlake's, left alone)",
            highlight=False,
        )
