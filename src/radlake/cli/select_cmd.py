"""`radlake select --select KEY=VALUE ... --out DIR`: write one group of images to a folder."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from radlake.cli.filter_options import with_filter_options
from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, print_json
from radlake.curation.filters import ImageFilter
from radlake.lake import load_settings, open_lake
from radlake.pipelines.group_files import GroupError, Mode, write_group


@with_filter_options
def select(
    selection: ImageFilter,
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write images/, metadata.csv, excluded.csv.")
    ],
    copy: Annotated[
        bool, typer.Option("--copy", help="Copy the originals out of the store (default).")
    ] = False,
    link: Annotated[
        bool, typer.Option("--link", help="Hard-link the originals (a local store only).")
    ] = False,
    symlink: Annotated[
        bool, typer.Option("--symlink", help="Symlink the originals (a local store only).")
    ] = False,
    metadata_only: Annotated[
        bool, typer.Option("--metadata-only", help="Write the two CSVs, no image files.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Write the images a selection matches (a group) to a folder, with metadata.csv
    (every catalogued field, source attributes, findings) and excluded.csv (what the
    same source(s) had that this selection left out, and why). Re-running is safe."""
    flags = {"--copy": copy, "--link": link, "--symlink": symlink, "--metadata-only": metadata_only}
    chosen = [flag for flag, on in flags.items() if on]
    if len(chosen) > 1:
        raise GroupError(
            f"choose one of --copy, --link, --symlink, --metadata-only: got {' '.join(chosen)}"
        )
    modes: dict[str, Mode] = {
        "--link": "hardlink",
        "--symlink": "symlink",
        "--metadata-only": "none",
    }
    mode: Mode = modes.get(chosen[0], "copy") if chosen else "copy"
    lake = open_lake(load_settings())
    with progress_reporter("writing", not as_json) as report:
        summary = write_group(lake, selection, out, mode=mode, report=report)
    if as_json:
        print_json(asdict(summary) | {"out": str(summary.out)})
        return
    console.print(
        f"{summary.selected} selected: {summary.written} written, {summary.kept} already"
        f" in place, {summary.removed} stale removed, {summary.missing} missing from the"
        f" store; {summary.excluded} rows in excluded.csv; {summary.seconds:.1f} s"
        f" -> {summary.out}"
    )
