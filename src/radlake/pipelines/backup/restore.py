"""`radlake restore`: a backup into an EMPTY catalog, on any backend.

In this order, and nothing is loaded unless every step before loading passed: read
the manifest (none: an incomplete backup, refused); refuse a schema revision this
code has no migration for; copy every file to a local working folder while hashing
it and compare size and SHA-256 with the manifest (a damaged or missing file is
refused); refuse a target with a row in any table; move the target's schema to the
backup's revision. Then one transaction inserts every table in foreign-key order in
batches, moves PostgreSQL's sequences past the restored ids, and counts each table
against the manifest (a difference rolls it all back). After commit, MariaDB/MySQL's
AUTO_INCREMENT is set past the restored ids (ALTER TABLE commits on its own, so it
cannot sit in the load's transaction) and the schema is upgraded to this code's head.

Pseudonyms are restored as stored: they were keyed with the backed-up lake's secret
key. The summary says whether the target lake's key is the same one (the manifest
keeps a keyed check value, never the key).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, func, inspect, literal, select, text
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from radlake.catalog.db import DEFAULT_RETRY_SECONDS, WRITE_BATCH, run_transaction, upgrade
from radlake.catalog.models import Base
from radlake.errors import CatalogError, ObjectNotFound
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.backup.columns import (
    BackupError,
    ColumnCodec,
    codecs_from_schema,
    from_batch,
    insert_table,
)
from radlake.pipelines.backup.manifest import (
    BACKUPS_PREFIX,
    KEY_CHECK_INPUT,
    Manifest,
    TableFile,
    join_key,
    name_order,
    read_manifest,
)
from radlake.pipelines.backup.retention import list_backups
from radlake.pipelines.backup.schema import current_revision, known_revisions, move_to
from radlake.storage.store import STREAM_CHUNK, ObjectStore

Progress = Callable[[str, int, int | None], None]  # phase, done, total
LATEST = "latest"


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    """What a restore loaded."""

    manifest: Manifest
    location: str
    backend: str  # the target's
    seconds: float
    same_key: bool | None  # None: the backup or the caller gave no key to compare

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.manifest.name,
            "location": self.location,
            "revision": self.manifest.revision,
            "from_backend": self.manifest.backend,
            "backend": self.backend,
            "tables": len(self.manifest.tables),
            "rows": self.manifest.total_rows,
            "bytes": self.manifest.total_bytes,
            "seconds": round(self.seconds, 3),
            "same_key": self.same_key,
        }


def locate_backup(
    spec: str, lake_store: ObjectStore, open_url: Callable[[str], ObjectStore]
) -> tuple[ObjectStore, str]:
    """The store and folder of a backup named by spec: a name under backups/ in the
    lake's store (or `latest`: the newest complete one there), an s3:// (or other)
    URL, or a local folder.

    Raises:
        BackupError: spec names nothing that could be a backup.
        StoreUnavailable, StorageError: the store failed.
    """
    if not spec.strip():
        raise BackupError(f"expected a backup folder, URL, name or {LATEST}, got an empty value")
    if spec == LATEST:
        complete = [b for b in list_backups(lake_store, BACKUPS_PREFIX) if b.complete]
        if not complete:
            raise BackupError(f"no complete backup under {BACKUPS_PREFIX}/ in the lake's store")
        return lake_store, join_key(BACKUPS_PREFIX, complete[-1].name)
    if name_order(spec) is not None and not Path(spec).exists():
        return lake_store, join_key(BACKUPS_PREFIX, spec)
    if "://" in spec:
        return open_url(spec), ""
    folder = Path(spec)
    if not folder.is_dir():
        raise BackupError(
            f"no backup at {spec}: expected a backup folder, a URL such as s3://bucket/path,"
            f" a backup name under {BACKUPS_PREFIX}/ such as 20260101t120000z, or {LATEST}"
        )
    # Not Path.as_uri(): fsspec does not unquote file URLs ("my backups" would be
    # looked for as "my%20backups").
    return open_url(f"file://{folder.resolve()}"), ""


def restore_catalog(
    engine: Engine,
    source: ObjectStore,
    folder: str,
    *,
    pseudonymizer: Pseudonymizer | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    batch_rows: int = WRITE_BATCH,
    progress: Progress | None = None,
) -> RestoreSummary:
    """Load the backup in source/folder into the empty catalog behind engine.

    Raises:
        BackupError: no manifest, an unknown revision, a damaged or missing file, or a
            target that is not empty; nothing was loaded.
        CatalogUnavailable: the catalog kept failing for retry_seconds.
        CatalogError: the catalog refused the rows or the migration.
        StoreUnavailable, StorageError: the store failed.
    """
    started = time.monotonic()
    report = progress or (lambda phase, done, total: None)
    manifest = read_manifest(source, folder)
    location = f"{source.url.rstrip('/')}/{folder}".rstrip("/")
    known = known_revisions(engine)
    if manifest.revision not in known:
        raise BackupError(
            f"backup {manifest.name} is at schema revision {manifest.revision}, which this"
            f" radlake does not know (it knows up to {known[-1]}): restore it with the"
            f" radlake {manifest.radlake_version} that wrote it, or newer"
        )
    with tempfile.TemporaryDirectory(prefix="radlake-restore-") as work:
        files = _fetch_verified(source, folder, manifest, Path(work), report)
        codecs = {table.table: _read_codecs(path, table) for table, path in files}
        try:
            _check_empty(engine, manifest)
            move_to(engine, manifest.revision)
            _check_columns(engine, codecs)
        except SQLAlchemyError as exc:
            raise CatalogError(f"cannot prepare catalog for restore: {_short(exc)}") from exc

        def load(session: Session) -> None:
            _load(session.connection(), files, codecs, batch_rows, report)

        try:
            run_transaction(engine, load, retry_seconds=retry_seconds)
        except SQLAlchemyError as exc:
            raise CatalogError(f"restore failed, nothing loaded: {_short(exc)}") from exc
    try:
        _reset_auto_increment(engine, codecs)
        if manifest.revision != known[-1]:
            upgrade(engine)
    except SQLAlchemyError as exc:
        raise CatalogError(f"restored, but cannot finish the catalog: {_short(exc)}") from exc
    same_key = None
    if pseudonymizer is not None and manifest.key_check is not None:
        same_key = pseudonymizer(KEY_CHECK_INPUT) == manifest.key_check
    return RestoreSummary(
        manifest, location, engine.dialect.name, time.monotonic() - started, same_key
    )


def _fetch_verified(
    source: ObjectStore, folder: str, manifest: Manifest, work: Path, report: Progress
) -> list[tuple[TableFile, Path]]:
    """Every file of the backup copied to work, each checked against the manifest."""
    fetched = []
    for done, table in enumerate(manifest.tables):
        report("verifying", done, len(manifest.tables))
        if "/" in table.file or table.file in ("", ".", ".."):
            raise BackupError(f"manifest names file {table.file!r}: expected a plain file name")
        path = work / table.file
        digest, size = hashlib.sha256(), 0
        try:
            with source.open(join_key(folder, table.file)) as reader, open(path, "wb") as out:
                while chunk := reader.read(STREAM_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except ObjectNotFound:
            raise BackupError(
                f"backup {manifest.name} is damaged: {table.file} is missing; nothing was restored"
            ) from None
        if size != table.bytes or digest.hexdigest() != table.sha256:
            what = "size" if size != table.bytes else "SHA-256"
            raise BackupError(
                f"backup {manifest.name} is damaged: {table.file} does not match its manifest"
                f" ({what} differs); nothing was restored"
            )
        fetched.append((table, path))
    return fetched


def _read_codecs(path: Path, table: TableFile) -> list[ColumnCodec]:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all one answer
        raise BackupError(f"{table.file} is not a readable Parquet file ({exc})") from None
    if parquet.metadata.num_rows != table.rows:
        raise BackupError(
            f"{table.file} holds {parquet.metadata.num_rows} rows, its manifest says"
            f" {table.rows}; nothing was restored"
        )
    return codecs_from_schema(parquet.schema_arrow, table.file)


def _check_empty(engine: Engine, manifest: Manifest) -> None:
    """Refuse a target with a row in any catalog table."""
    names = {table.name for table in Base.metadata.sorted_tables}
    names |= {table.table for table in manifest.tables}
    with engine.connect() as connection:
        present = set(inspect(connection).get_table_names())
        for name in sorted(names & present):
            if connection.scalar(select(literal(1)).select_from(sql_table(name)).limit(1)):
                raise BackupError(
                    f"the target catalog is not empty (table {name} has rows): restore"
                    " loads only into an empty catalog, such as a new database; nothing"
                    " was restored"
                )
    current = current_revision(engine)
    if current is not None and current not in known_revisions(engine):
        raise BackupError(
            f"the target catalog is at schema revision {current}, which this radlake does"
            " not know; nothing was restored"
        )


def _check_columns(engine: Engine, codecs: dict[str, list[ColumnCodec]]) -> None:
    """Every backed-up column exists in the target at the backup's revision, and every
    catalog table there is in the backup (a manifest that leaves one out would restore
    a catalog without, say, its labels)."""
    with engine.connect() as connection:
        inspector = inspect(connection)
        present = set(inspector.get_table_names())
        left_out = sorted((present & set(Base.metadata.tables)) - set(codecs))
        if left_out:
            raise BackupError(
                f"the backup's manifest lists no file for table {', '.join(left_out)}:"
                " it is incomplete or edited; nothing was restored"
            )
        for name, columns in codecs.items():
            if name not in present:
                raise BackupError(f"table {name} of the backup is not in the catalog's schema")
            target = {column["name"] for column in inspector.get_columns(name)}
            missing = [codec.name for codec in columns if codec.name not in target]
            if missing:
                raise BackupError(
                    f"columns {', '.join(missing)} of table {name} are not in the catalog's"
                    " schema at the backup's revision; nothing was restored"
                )


def _load(
    connection: Connection,
    files: Sequence[tuple[TableFile, Path]],
    codecs: dict[str, list[ColumnCodec]],
    batch_rows: int,
    report: Progress,
) -> None:
    """Insert every table (foreign-key order), reset sequences, count rows."""
    total = sum(table.rows for table, _ in files)
    done = 0
    for table, path in files:
        columns = codecs[table.table]
        write = _copy_writer if connection.dialect.name == "postgresql" else _insert_writer
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            rows = from_batch(columns, batch)
            if rows:
                write(connection, table.table, columns, rows)
            done += len(rows)
            report("loading", done, total)
    if connection.dialect.name == "postgresql":
        _reset_sequences(connection, codecs)
    for table, _ in files:
        counted = connection.scalar(select(func.count()).select_from(sql_table(table.table)))
        if counted != table.rows:
            raise BackupError(
                f"table {table.table} holds {counted} rows after loading, the backup {table.rows};"
                " nothing was restored"
            )


def _insert_writer(
    connection: Connection, name: str, columns: Sequence[ColumnCodec], rows: list[tuple[Any, ...]]
) -> None:
    """One executemany of a batch (PyMySQL sends it as multi-row INSERTs)."""
    names = [codec.name for codec in columns]
    connection.execute(
        insert_table(name, columns).insert(), [dict(zip(names, row, strict=True)) for row in rows]
    )


def _copy_writer(
    connection: Connection, name: str, columns: Sequence[ColumnCodec], rows: list[tuple[Any, ...]]
) -> None:
    """PostgreSQL: COPY FROM STDIN on the load's own connection (in its transaction),
    several times faster than an INSERT per row; JSON goes in as its text."""
    driver = connection.connection.driver_connection
    assert driver is not None  # a live connection inside the transaction
    quoted = ", ".join(_quoted(connection, codec.name) for codec in columns)
    statement = f"COPY {_quoted(connection, name)} ({quoted}) FROM STDIN"
    dbapi = connection.dialect.loaded_dbapi
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:
        # The driver's own error, as SQLAlchemy would raise it: faults (a lost
        # connection) are retried like any other, refusals end the load.
        raise DBAPIError.instance(
            statement, None, exc, dbapi.Error, hide_parameters=True, dialect=connection.dialect
        ) from exc


def _quoted(connection: Connection, name: str) -> str:
    return str(connection.dialect.identifier_preparer.quote(name))


def _integer_keys(
    connection: Connection, codecs: dict[str, list[ColumnCodec]]
) -> list[tuple[str, str]]:
    """(table, column) of each single-column integer primary key."""
    inspector = inspect(connection)
    keys = []
    for name, columns in codecs.items():
        primary = inspector.get_pk_constraint(name).get("constrained_columns") or []
        kinds = {codec.name: codec.kind for codec in columns}
        if len(primary) == 1 and kinds.get(primary[0]) == "int":
            keys.append((name, primary[0]))
    return keys


def _reset_sequences(connection: Connection, codecs: dict[str, list[ColumnCodec]]) -> None:
    """PostgreSQL: each id sequence's next value is past the largest restored id."""
    for name, column in _integer_keys(connection, codecs):
        sequence = connection.scalar(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": _quoted(connection, name), "column": column},
        )
        if sequence is None:
            continue
        largest = connection.scalar(
            select(func.max(sql_column(column))).select_from(sql_table(name))
        )
        # is_called=false: the next nextval() returns exactly this value.
        connection.execute(
            text("SELECT setval(:sequence, :value, false)"),
            {"sequence": sequence, "value": (largest or 0) + 1},
        )


def _reset_auto_increment(engine: Engine, codecs: dict[str, list[ColumnCodec]]) -> None:
    """MariaDB/MySQL: AUTO_INCREMENT past the largest restored id (SQLite takes the
    largest rowid + 1 by itself; PostgreSQL's sequences were set in the load)."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return
    with engine.connect() as connection:
        for name, column in _integer_keys(connection, codecs):
            largest = connection.scalar(
                select(func.max(sql_column(column))).select_from(sql_table(name))
            )
            connection.exec_driver_sql(
                f"ALTER TABLE {_quoted(connection, name)} AUTO_INCREMENT = {int(largest or 0) + 1}"
            )
        connection.commit()


def _short(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).splitlines()[0][:200]
