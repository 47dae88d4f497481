"""`radlake verify`: check the store against the catalog, repair with --repair."""

from __future__ import annotations

from typing import Annotated

import typer

from radlake.cli.ingest_cmd import phase_reporter
from radlake.cli.output import console, print_json, whole_number
from radlake.lake import load_settings, open_lake
from radlake.pipelines.deidentify import deidentify_images
from radlake.pipelines.verify import verify_lake

FINDINGS_SHOWN = 10
EXIT_PROBLEMS = 1


def verify(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Render missing or corrupt previews again, rewrite originals from their "
            "source files, delete orphan objects older than an hour.",
        ),
    ] = False,
    sample: Annotated[
        str | None,
        typer.Option(
            metavar="N",
            help="Re-hash a random sample of N originals instead of all (sizes are always "
            "checked).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        str, typer.Option(metavar="SEED", help="Seed of the sample: same seed, same images.")
    ] = "0",
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = (
        False
    ),
) -> None:
    """Check that every catalogued object is in the store, whole, and nothing else is;
    exit 1 while problems remain."""
    sample_size = whole_number(sample, "--sample", 1)
    sample_seed = whole_number(seed, "--seed", 0) or 0
    lake = open_lake(load_settings())
    with phase_reporter("verifying", not as_json) as report_progress:
        report = verify_lake(
            engine=lake.engine,
            store=lake.store,
            repair=repair,
            sample=sample_size,
            seed=sample_seed,
            progress=report_progress,
            max_decoded_bytes=lake.limits.max_decoded_bytes,
            remake_deidentified=lambda ids: deidentify_images(lake, ids, redo=True).failed,
        )
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(report.line(), highlight=False, markup=False)
        for finding in report.findings[:FINDINGS_SHOWN]:
            console.print(f"  {finding.line()}", highlight=False, markup=False)
        more = len(report.findings) + report.findings_left_out - FINDINGS_SHOWN
        if more > 0:
            console.print(f"  ... and {more} more findings (--json lists them)", highlight=False)
    if not report.sound:
        raise typer.Exit(EXIT_PROBLEMS)
