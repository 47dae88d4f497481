"""`radlake backup`: every catalog table as Parquet (ZSTD) from one consistent read.

All tables are read in ONE read-only transaction that sees one point in time:
PostgreSQL REPEATABLE READ READ ONLY (a snapshot taken at the first read), MariaDB/
MySQL START TRANSACTION WITH CONSISTENT SNAPSHOT under REPEATABLE READ (the engine's
default READ COMMITTED would let each table see a later moment), SQLite one explicit
read transaction (WAL: writers go on, this reader keeps its snapshot). Rows are
streamed (server-side cursors on the servers) into Parquet a batch at a time, never a
whole table in memory, into a local working folder; only after the transaction
ends are the files put in the store (each atomically), then the manifest, last. A
slow store never holds a database snapshot open, and a fault of the catalog retries
the whole read, of the store each upload (both reported as faults once their time is
up). Store objects (originals, renditions) are not copied: `radlake verify` checks
those.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.exc import SQLAlchemyError

import radlake
from radlake.catalog.db import DEFAULT_RETRY_SECONDS, retry_transient
from radlake.catalog.models import Base
from radlake.errors import CatalogError
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.backup.columns import (
    BackupError,
    arrow_schema,
    codecs_for,
    read_expression,
    to_batch,
)
from radlake.pipelines.backup.manifest import (
    KEY_CHECK_INPUT,
    MANIFEST,
    Manifest,
    TableFile,
    backup_name,
    join_key,
)
from radlake.pipelines.backup.retention import prune
from radlake.pipelines.backup.schema import alembic_config
from radlake.storage.store import ObjectStore

BATCH_ROWS = 10_000  # rows per Parquet record batch (and per fetch from the cursor)
HASH_CHUNK = 4 << 20
CLAIM_PREFIX = ".claim-"  # a backup folder's name is taken (see _claim_name)
Progress = Callable[[str, int, int | None], None]  # phase, done, total


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup wrote (and what retention removed)."""

    manifest: Manifest
    location: str  # URL of the backup's folder
    seconds: float
    removed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.manifest.name,
            "location": self.location,
            "revision": self.manifest.revision,
            "backend": self.manifest.backend,
            "tables": len(self.manifest.tables),
            "rows": self.manifest.total_rows,
            "bytes": self.manifest.total_bytes,
            "seconds": round(self.seconds, 3),
            "removed": list(self.removed),
            "files": [
                {"table": t.table, "rows": t.rows, "bytes": t.bytes} for t in self.manifest.tables
            ],
        }


def backup_catalog(
    engine: Engine,
    destination: ObjectStore,
    *,
    prefix: str = "backups",
    keep: int | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    batch_rows: int = BATCH_ROWS,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> BackupSummary:
    """Write a consistent snapshot of every catalog table to destination under
    prefix/<UTC timestamp>/, manifest last; with keep, then prune older backups.

    Raises:
        BackupError: the catalog is not at this code's schema revision, or a column
            type has no mapping.
        CatalogUnavailable: the catalog kept failing for retry_seconds.
        StoreUnavailable, StorageError: the store failed.
    """
    started = time.monotonic()
    created = (now or datetime.now(UTC)).astimezone(UTC)
    report = progress or (lambda phase, done, total: None)
    tables = list(Base.metadata.sorted_tables)  # foreign-key order: parents first
    with tempfile.TemporaryDirectory(prefix="radlake-backup-") as work:
        revision, written = _read_with_retries(
            engine, tables, Path(work), batch_rows, retry_seconds, report
        )
        name, claim = _claim_name(destination, prefix, backup_name(created))
        folder = join_key(prefix, name)
        files = []
        for done, (table, path, rows) in enumerate(written):
            digest, size = _file_digest(path)
            report("uploading", done, len(written))
            destination.put_file(join_key(folder, path.name), path)
            files.append(TableFile(table, path.name, rows, size, digest))
    manifest = Manifest(
        name=name,
        revision=revision,
        radlake_version=radlake.__version__,
        created_at=created.isoformat(),
        backend=engine.dialect.name,
        tables=tuple(files),
        key_check=pseudonymizer(KEY_CHECK_INPUT) if pseudonymizer is not None else None,
    )
    destination.put_bytes(join_key(folder, MANIFEST), manifest.to_json())  # last: complete
    destination.delete(claim)
    removed = prune(destination, prefix, keep, just_written=name) if keep is not None else []
    location = f"{destination.url.rstrip('/')}/{folder}"
    return BackupSummary(manifest, location, time.monotonic() - started, tuple(removed))


def _read_with_retries(
    engine: Engine,
    tables: Sequence[Table],
    work: Path,
    batch_rows: int,
    retry_seconds: float,
    report: Progress,
) -> tuple[str, list[tuple[str, Path, int]]]:
    """_read_snapshot, all of it again after a transient fault (a new snapshot)."""
    try:
        return retry_transient(
            lambda: _read_snapshot(engine, tables, work, batch_rows, report),
            retry_seconds=retry_seconds,
        )
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        raise CatalogError(f"cannot read catalog for backup: {detail}") from exc


def _read_snapshot(
    engine: Engine, tables: Sequence[Table], work: Path, batch_rows: int, report: Progress
) -> tuple[str, list[tuple[str, Path, int]]]:
    """Every table into work/<table>.parquet in one read transaction: the schema
    revision and (table, file, rows) in the order of tables."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    written = []
    with engine.connect() as plain:
        connection = _begin_snapshot(plain)
        revision = MigrationContext.configure(connection).get_current_revision()
        if revision is None or revision != head:
            raise BackupError(
                f"catalog schema is at {revision}, this radlake writes {head}:"
                " run `radlake init` to upgrade it first"
            )
        for done, table in enumerate(tables):
            report("reading", done, len(tables))
            path = work / f"{table.name}.parquet"
            written.append((table.name, path, _write_table(connection, table, path, batch_rows)))
        connection.rollback()  # read only: nothing to keep
    return revision, written


def _begin_snapshot(connection: Connection) -> Connection:
    """Start the one read transaction every table is read in (module docstring)."""
    backend = connection.dialect.name
    if backend == "postgresql":
        connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        connection.exec_driver_sql("SELECT 1")  # begins: the snapshot is the first read's
    elif backend in ("mysql", "mariadb"):
        connection.execution_options(isolation_level="REPEATABLE READ")
        connection.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
    elif backend == "sqlite":
        # pysqlite begins transactions only before writes; a read needs its own BEGIN.
        connection.exec_driver_sql("BEGIN")
    else:
        raise BackupError(f"expected a SQLite, PostgreSQL or MySQL/MariaDB catalog, got {backend}")
    return connection


def _write_table(connection: Connection, table: Table, path: Path, batch_rows: int) -> int:
    """Stream one table, in primary-key order, into a ZSTD Parquet file; its row count."""
    codecs = codecs_for(table)
    schema = arrow_schema(codecs)
    query = select(*(read_expression(column) for column in table.c))
    query = query.order_by(*table.primary_key.columns)
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        result = connection.execute(query.execution_options(yield_per=batch_rows))
        for part in result.partitions():
            writer.write_batch(to_batch(codecs, schema, part))
            rows += len(part)
    return rows


def _claim_name(store: ObjectStore, prefix: str, base: str) -> tuple[str, str]:
    """A folder name no other backup uses: base, or base-2, base-3, ... (two backups in
    one second), and the key of the claim object that holds it.

    Two runs that both found a name free would write into one folder, each manifest
    naming the other's files (a backup restore refuses as damaged). So a run claims a
    free name with an object of its own, then lists the folder again: any other key
    there means another run got in, and this one tries the next name. Two runs can
    never both keep a name (each wrote its claim before it listed, so the later lister
    sees the other's claim); at worst both move on. The claim is deleted once the
    manifest is written; a run that died leaves it in an incomplete backup, which
    retention removes.
    """
    claim_file = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    name, n = base, 1
    while True:
        folder = join_key(prefix, name)
        if next(store.iter_keys(folder), None) is None:
            claim = join_key(folder, claim_file)
            store.put_bytes(claim, b"")
            if all(key == claim for key in store.iter_keys(folder)):
                return name, claim
            store.delete(claim)
        n += 1
        name = f"{base}-{n}"


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), os.stat(path).st_size
