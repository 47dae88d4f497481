"""`radlake deid`: de-identification per DICOM PS3.15 Annex E.

run: de-identify catalogued DICOM images into renditions (what researchers, viewers,
DICOMweb and zips get); export: a dataset version's de-identified objects to a folder
or S3; check PATH: list what could still identify a patient in a folder of DICOM files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from radlake.cli.ingest_cmd import JsonOption, progress_reporter
from radlake.cli.output import console, err_console, print_json
from radlake.curation.filters import ImageFilter
from radlake.imaging.deid_check import check_path
from radlake.lake import load_settings, open_lake, open_store_at, store_url_for
from radlake.pipelines.deid_export import DeidExportSummary, export_deidentified
from radlake.pipelines.deidentify import DeidSummary, deidentify_images
from radlake.pipelines.mart import parse_target
from radlake.pipelines.predict import select_image_ids

app = typer.Typer(help="De-identification per DICOM PS3.15 Annex E.", no_args_is_help=True)
FINDINGS_SHOWN = 50
EXIT_FOUND = 1
EXIT_USAGE = 2
FAILED_SHOWN = 10


def _report(summary: DeidSummary | DeidExportSummary, as_json: bool) -> None:
    """The summary (its JSON with --json) and the images that failed; exit 1 if any."""
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(summary.line(), highlight=False)
        for image_id, reason in sorted(summary.failed.items())[:FAILED_SHOWN]:
            err_console.print(f"  image {image_id}: {reason}", markup=False, highlight=False)
    if summary.failed:
        raise typer.Exit(1)


@app.command("run")
def run(
    select_: Annotated[
        list[str] | None,
        typer.Option("--select", metavar="KEY=VALUE", help="Images to de-identify (repeatable)."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="A dataset's images.")] = None,
    version: Annotated[int | None, typer.Option(help="Dataset version (default: newest).")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split of the dataset.")] = None,
    redo: Annotated[
        bool, typer.Option(help="Make objects again (after the options or the key changed).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """De-identify catalogued DICOM images (all of them by default) into renditions:
    Basic Profile plus the options in the settings, keyed UIDs, the patient's pseudonym,
    and burned-in text blanked where the pixel check finds it. Images done before are
    skipped."""
    lake = open_lake(load_settings())
    selection = ImageFilter.parse(select_) if select_ else None
    if selection is None and dataset is None:
        selection = ImageFilter()
    image_ids = select_image_ids(
        lake, selection=selection, dataset=dataset, dataset_version=version, split=split
    )
    with progress_reporter("de-identifying", not as_json) as report:
        summary = deidentify_images(lake, image_ids, redo=redo, progress=report)
    _report(summary, as_json)


@app.command("export")
def export(
    target: Annotated[
        str, typer.Argument(metavar="DATASET[:VERSION]", help="Newest version by default.")
    ],
    to: Annotated[str, typer.Option("--to", help="Destination: a folder or s3://bucket/prefix.")],
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a dataset version's de-identified DICOM objects (made first where missing)
    as DATASET/vN/SPLIT/STUDY/SERIES/SOP.dcm, remapped UIDs only; objects already there
    with the same bytes are not copied again; withheld ones are left out."""
    dataset, version = parse_target(target)
    url = store_url_for(to)
    settings = load_settings()
    lake = open_lake(settings)
    destination = open_store_at(settings, url)
    with progress_reporter("exporting", not as_json) as report:
        summary = export_deidentified(
            lake,
            dataset=dataset,
            version=version,
            destination=destination,
            split=split,
            progress=report,
        )
    _report(summary, as_json)


@app.command("check")
def check(
    path: Annotated[
        Path, typer.Argument(help="A DICOM file, or a folder of them (searched recursively).")
    ],
    as_json: JsonOption = False,
) -> None:
    """Every attribute left that the Basic Profile would not keep as it is (private
    tags, identifying values, UIDs not remapped, an unmarked object); values are never
    printed. Exit status 1 when anything is found, 0 when the folder is clean."""
    if not (path.is_dir() or path.is_file()):
        err_console.print(
            f"error: expected a folder of DICOM files or a file, got {str(path)[:200]!r}"
        )
        raise typer.Exit(EXIT_USAGE)
    report = check_path(path)
    found = sum(len(items) for items in report.findings.values())
    if as_json:
        print_json(
            {
                "checked": report.checked,
                "skipped": report.skipped,
                "clean": report.clean,
                "files_with_findings": len(report.findings),
                "findings": {
                    name: [
                        {"path": f.path, "tag": f.tag, "action": f.action, "reason": f.reason}
                        for f in items
                    ]
                    for name, items in report.findings.items()
                },
            }
        )
    else:
        if found:
            table = Table("file", "attribute", "tag", "action", "why")
            rows = [(name, f) for name, items in report.findings.items() for f in items]
            for name, f in rows[:FINDINGS_SHOWN]:
                table.add_row(name, f.path, f.tag, f.action, f.reason)
            console.print(table)
            if len(rows) > FINDINGS_SHOWN:
                console.print(f"... and {len(rows) - FINDINGS_SHOWN} more (--json lists all)")
        verdict = "clean" if report.clean else f"{found} findings in {len(report.findings)} files"
        console.print(
            f"{report.checked} DICOM files checked, {report.skipped} other files skipped: "
            f"{verdict}",
            highlight=False,
        )
    if not report.clean:
        raise typer.Exit(EXIT_FOUND)
