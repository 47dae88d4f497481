"""`radlake backup` and `radlake restore`: the catalog as Parquet, and back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from radlake.catalog.db import make_engine, sqlite_file
from radlake.cli.ingest_cmd import phase_reporter
from radlake.cli.output import console, err_console, human_bytes, print_json, whole_number
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import load_settings, open_lake, open_store_at, store_url_for
from radlake.storage.store import open_store

if TYPE_CHECKING:
    from radlake.pipelines.backup import BackupSummary, RestoreSummary

# pyarrow is imported by the commands that use it, not by every `radlake` start.

JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


def backup(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="URL",
            help="A folder or s3:// URL to write the backup under (default: backups/ in "
            "the lake's store).",
            show_default=False,
        ),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(
            metavar="N",
            help="Then keep only the last N complete backups there (the new one always).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a consistent snapshot of every catalog table as Parquet (store objects are
    not copied: `radlake verify` checks those)."""
    from radlake.pipelines.backup import BACKUPS_PREFIX, backup_catalog

    count = whole_number(keep, "--keep", 1)
    url = None if to is None else store_url_for(to)  # a bad --to costs no catalog read
    settings = load_settings()
    lake = open_lake(settings)
    destination = lake.store if url is None else open_store_at(settings, url)
    prefix = BACKUPS_PREFIX if to is None else ""
    with phase_reporter("backing up", not as_json) as report:
        summary = backup_catalog(
            lake.engine,
            destination,
            prefix=prefix,
            keep=count,
            pseudonymizer=lake.pseudonymizer,
            retry_seconds=settings.retry_seconds,
            progress=report,
        )
    lake.engine.dispose()
    if as_json:
        print_json(summary.as_dict())
        return
    console.print(_backup_line(summary), markup=False, highlight=False)
    if summary.removed:
        names = ", ".join(summary.removed)
        console.print(
            f"retention: removed {len(summary.removed)} older backup"
            f"{'' if len(summary.removed) == 1 else 's'} ({names})",
            markup=False,
            highlight=False,
        )


def _backup_line(summary: BackupSummary) -> str:
    manifest = summary.manifest
    return (
        f"backup {manifest.name}: {len(manifest.tables)} tables, {manifest.total_rows:,} rows,"
        f" {human_bytes(manifest.total_bytes)} in {summary.seconds:.1f} s -> {summary.location}"
    )


def restore(
    backup: Annotated[
        str,
        typer.Argument(
            metavar="BACKUP",
            help="A backup folder, an s3:// URL, a backup name under backups/ in the "
            "lake's store (20260101t120000z), or 'latest'.",
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Load a backup into this lake's catalog, which must be empty (a new database)."""
    from radlake.pipelines.backup import locate_backup, restore_catalog

    settings = load_settings()
    settings.ensure_secret_key()  # a restored lake is ready to use, as after `init`
    database = sqlite_file(settings.resolved_catalog_url())
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_catalog_url())
    lake_store = open_store(
        settings.resolved_store_url(),
        retry_seconds=settings.retry_seconds,
        **settings.store_options(),
    )
    source, folder = locate_backup(
        backup, lake_store, lambda url: open_store_at(settings, store_url_for(url, "BACKUP"))
    )
    with phase_reporter("restoring", not as_json) as report:
        summary = restore_catalog(
            engine,
            source,
            folder,
            pseudonymizer=Pseudonymizer(settings.secret_key_bytes()),
            retry_seconds=settings.retry_seconds,
            progress=report,
        )
    engine.dispose()
    if as_json:
        print_json(summary.as_dict())
    else:
        console.print(_restore_line(summary), markup=False, highlight=False)
    if summary.same_key is False:
        err_console.print(
            "note: this lake's secret key differs from the backed-up lake's: restored"
            " pseudonyms stay as they were, but new ingests will give the same patients"
            " other pseudonyms (set RADLAKE_SECRET_KEY to the old lake's key to avoid it)",
            markup=False,
            highlight=False,
        )


def _restore_line(summary: RestoreSummary) -> str:
    manifest = summary.manifest
    return (
        f"restored {manifest.name} (schema {manifest.revision}, from {manifest.backend}):"
        f" {len(manifest.tables)} tables, {manifest.total_rows:,} rows,"
        f" {human_bytes(manifest.total_bytes)} in {summary.seconds:.1f} s into {summary.backend}"
    )
