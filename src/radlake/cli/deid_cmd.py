"""`radlake deid check PATH`: list what could still identify a patient in a folder of
DICOM files (PS3.15 Annex E, Basic Application Level Confidentiality Profile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from radlake.cli.ingest_cmd import JsonOption
from radlake.cli.output import console, err_console, print_json
from radlake.imaging.deid_check import check_path

app = typer.Typer(help="De-identification per DICOM PS3.15 Annex E.", no_args_is_help=True)
FINDINGS_SHOWN = 50
EXIT_FOUND = 1
EXIT_USAGE = 2


@app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="A folder of DICOM files (searched recursively).")],
    as_json: JsonOption = False,
) -> None:
    """Every attribute left that the Basic Profile would not keep as it is (private
    tags, identifying values, UIDs not remapped, an unmarked object); values are never
    printed. Exit status 1 when anything is found, 0 when the folder is clean."""
    if not path.is_dir():
        err_console.print(f"error: expected a folder of DICOM files, got {str(path)[:200]!r}")
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
