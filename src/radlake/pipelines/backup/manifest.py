"""The manifest of a catalog backup, and where backups live in a store.

`<folder>/manifest.json` is written last, after every table's file: a folder without
one is an incomplete backup (a run that died, or one still being written) and is
never restored. The manifest names the schema revision (Alembic), the radlake
version, when and from which backend it was made, and per table, in foreign-key
order, its file, row count, size and SHA-256.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from radlake.errors import ObjectNotFound
from radlake.pipelines.backup.columns import BackupError
from radlake.storage.store import ObjectStore

MANIFEST = "manifest.json"
FORMAT = "radlake-catalog-backup"
FORMAT_VERSION = 1
BACKUPS_PREFIX = "backups"  # in the lake's store (DESIGN.md, store layout)
# A backup's name is its UTC start time, with -2, -3, ... when that second is taken.
NAME_PATTERN = re.compile(r"^(\d{8}t\d{6}z)(?:-(\d+))?$")
KEY_CHECK_INPUT = "radlake backup key check"  # pseudonymized to compare lakes' keys


@dataclass(frozen=True, slots=True)
class TableFile:
    """One table's file in a backup."""

    table: str
    file: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a complete backup holds."""

    name: str
    revision: str
    radlake_version: str
    created_at: str  # ISO 8601, UTC
    backend: str
    tables: tuple[TableFile, ...]  # in foreign-key order: parents first
    # The pseudonym of a fixed string under the lake's key (never the key): a restore
    # into a lake with another key says so.
    key_check: str | None = None

    @property
    def total_rows(self) -> int:
        return sum(table.rows for table in self.tables)

    @property
    def total_bytes(self) -> int:
        return sum(table.bytes for table in self.tables)

    def to_json(self) -> bytes:
        document: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        document |= asdict(self)
        document["tables"] = [asdict(table) for table in self.tables]
        return (json.dumps(document, indent=2) + "\n").encode()


def join_key(*parts: str) -> str:
    """Store key of parts, leaving out empty ones (a backup at a store's root)."""
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def name_order(name: str) -> tuple[str, int] | None:
    """Sort key of a backup name (time, then suffix); None for other folder names."""
    match = NAME_PATTERN.match(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2) or 1)


def backup_name(created: datetime) -> str:
    """The base name of a backup started at created (UTC)."""
    return created.strftime("%Y%m%dt%H%M%Sz")


def read_manifest(store: ObjectStore, folder: str) -> Manifest:
    """The manifest of the backup in folder.

    Raises:
        BackupError: there is none (an incomplete backup, or no backup there), or it
            is not a radlake backup manifest.
        StoreUnavailable, StorageError: the store failed.
    """
    where = f"{store.url.rstrip('/')}/{folder}".rstrip("/")
    try:
        data = store.get_bytes(join_key(folder, MANIFEST))
    except ObjectNotFound:
        raise BackupError(
            f"no {MANIFEST} in {where}: not a backup, or an incomplete one (its manifest"
            " is written last); nothing was restored"
        ) from None
    try:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"format is {document.get('format')!r}")
        if document.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {document.get('format_version')!r} is unknown")
        tables = tuple(
            TableFile(
                table=str(item["table"]),
                file=str(item["file"]),
                rows=int(item["rows"]),
                bytes=int(item["bytes"]),
                sha256=str(item["sha256"]),
            )
            for item in document["tables"]
        )
        for field_name in ("table", "file"):
            names = [getattr(table, field_name) for table in tables]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"{field_name} {', '.join(twice)} listed twice")
        return Manifest(
            name=str(document["name"]),
            revision=str(document["revision"]),
            radlake_version=str(document["radlake_version"]),
            created_at=str(document["created_at"]),
            backend=str(document["backend"]),
            tables=tables,
            key_check=document.get("key_check"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(
            f"{where}/{MANIFEST} is not a radlake backup manifest ({exc}); nothing was restored"
        ) from None
