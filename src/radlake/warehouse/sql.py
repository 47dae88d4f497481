"""`radlake sql`: DuckDB over the Parquet warehouse, on a local folder or S3.

DuckDB reads S3 through its httpfs extension, which it downloads on first use; a
lake's machines often reach no internet (this one does not), and a packaged
extension file would pin radlake to one DuckDB build and platform and carry its
own S3 settings (endpoint, credentials, path style) beside the store's. So the
store's own fsspec filesystem, the one radlake already configured and tested, is
registered with DuckDB (`register_filesystem`): whatever the store reaches (S3,
MinIO, a moto server, memory://), DuckDB reads, with the same credentials. It is
wrapped so that it sees only the warehouse/ folder and can only read. A local
store is read by DuckDB's own file system instead (no Python in the read path).

Read-only, as far as DuckDB allows: only SELECT (DESCRIBE, SHOW, SUMMARIZE, WITH
...) and EXPLAIN run, one statement at a time; external access is switched off
except for the warehouse folder (`allowed_directories`), extensions are neither
installed nor loaded, and the configuration is locked, so `COPY ... TO`, `ATTACH`,
`read_csv('/etc/passwd')` or `SET` cannot reach anything else. The database is in
memory and lives for one command.

Views, over the parts the state lists (never a listing: a dead build's parts are
not read):

    images        the newest document of each image (nested lists and structs)
    labels        one row per label: image_id, id, class_name, ..., x_min..y_max
    predictions   one row per predicted box (model, model_version, run_id, score)
    runs          one row per inference run (a run that found nothing too)
    feedback      one row per verdict (reviewer, verdict, corrected box, simulated)
    memberships   one row per dataset version an image is in (dataset, version, split)
    renditions    one row per rendition (name, key, width, height)
    documents     every document of every build (superseded ones too): auditing only
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from radlake.storage.store import ObjectStore
from radlake.warehouse.documents import SCHEMA
from radlake.warehouse.state import VIEWS, State, WarehouseError, load_state, root

PROTOCOL = "radlake"
BATCH_ROWS = 10_000  # rows fetched from DuckDB at a time when streaming a result
ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
_BOX = (
    "{0}.box.x_min AS x_min, {0}.box.y_min AS y_min, {0}.box.x_max AS x_max, {0}.box.y_max AS y_max"
)
# Flattened views: (name, list column, the columns of one element).
_FLAT = {
    "labels": (
        "labels",
        "e.id, e.class_name, e.class_id, e.reader, e.origin, e.confidence, e.label_set, "
        f"e.source, {_BOX.format('e')}, e.created_at",
    ),
    "predictions": (
        "predictions",
        "e.id, e.run_id, e.model, e.model_version, e.class_id, e.class_name, e.score, "
        f"{_BOX.format('e')}, e.created_at",
    ),
    "runs": ("runs", "e.*"),
    "feedback": (
        "feedback",
        "e.id, e.run_id, e.prediction_id, e.model, e.model_version, e.verdict, e.class_name, "
        f"{_BOX.format('e')}, e.confidence, e.reviewer, e.simulated, e.channel, e.created_at",
    ),
    "memberships": ("memberships", "e.*"),
    "renditions": ("renditions", "e.*"),
}
if ("images", *_FLAT, "documents") != VIEWS:  # keep the CLI's list true
    raise ImportError("radlake.warehouse.state.VIEWS differs from the views defined here")


class _ReadOnlyFolder(DirFileSystem):  # type: ignore[misc]
    """The store's filesystem seen from its warehouse folder, reads only."""

    protocol = PROTOCOL

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if mode not in ("r", "rb"):
            raise PermissionError(f"the warehouse is read-only (open {mode!r})")
        return super().open(path, mode, *args, **kwargs)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("the warehouse is read-only")

    rm = rm_file = rmdir = mkdir = makedirs = touch = mv = cp_file = _refuse
    pipe_file = put_file = _refuse


@dataclass(frozen=True, slots=True)
class Result:
    """A query's column names and rows (Python values; structs as dicts)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class RowStream:
    """A query's column names and its rows in batches, read as they are consumed:
    a result of any size costs one batch of memory, and a reader that stops early
    (a terminal table's first rows) stops DuckDB too."""

    columns: list[str]
    batches: Iterator[list[tuple[Any, ...]]]

    def fetch_all(self) -> Result:
        """Every row, in memory (for results known to be small)."""
        return Result(self.columns, [row for batch in self.batches for row in batch])


def connect(store: ObjectStore) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the warehouse's views, reading nothing else.

    Raises:
        WarehouseError: no Parquet warehouse has been built in this store.
        StorageError: the store failed reading the state.
    """
    state = load_state(store, "parquet")
    if state is None:
        raise WarehouseError("no warehouse yet: run `radlake warehouse build` first")
    try:
        return _open(store, state)
    except duckdb.Error as exc:
        # The views read the parts' schemas now: a part deleted or damaged since its
        # build surfaces here, not as an internal error.
        raise WarehouseError(
            f"the warehouse cannot be read ({_first_line(exc)}): "
            "run `radlake warehouse build --full` to rebuild it"
        ) from None


def _open(store: ObjectStore, state: State) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(
        ":memory:",
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
    )
    folder = f"{store.root}/{root('parquet').rstrip('/')}"
    if isinstance(store.fs, LocalFileSystem):
        paths = [f"{store.root}/{part.key}" for part in state.parts]
        allowed = f"{folder}/"
    else:
        connection.register_filesystem(_ReadOnlyFolder(path=folder, fs=store.fs))
        prefix = root("parquet")
        paths = [f"{PROTOCOL}://{part.key.removeprefix(prefix)}" for part in state.parts]
        allowed = f"{PROTOCOL}://"
    connection.execute(f"SET allowed_directories = {_sql_list([allowed])}")
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    if paths:
        documents = f"read_parquet({_sql_list(paths)})"
    else:  # a lake with no images yet: the views exist and are empty
        connection.register("_no_documents", SCHEMA.empty_table())
        documents = "_no_documents"
    # View SQL is built from this module's constants and quoted part keys only.
    connection.execute(f"CREATE VIEW documents AS SELECT * FROM {documents}")  # noqa: S608
    if {part.build for part in state.parts} <= {state.full_build}:
        newest = "SELECT * FROM documents"  # one build's parts: nothing superseded
    else:
        # A semi-join on (id, newest build) reads two columns to decide; a window
        # (QUALIFY row_number() ...) drags every nested column through a sort:
        # 0.11 s against 0.29 s for the benchmark's question at 30,000 images.
        newest = (
            "SELECT d.* FROM documents d SEMI JOIN "
            "(SELECT id, max(build) AS build FROM documents GROUP BY id) n "
            "ON d.id = n.id AND d.build = n.build"
        )
    connection.execute(f"CREATE VIEW images AS {newest}")
    for view, (column, fields) in _FLAT.items():
        connection.execute(
            f"CREATE VIEW {view} AS SELECT image_id, {fields} FROM "  # noqa: S608
            f"(SELECT id AS image_id, unnest({column}) AS e FROM images)"
        )
    return connection


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


def run_query(connection: duckdb.DuckDBPyConnection, query: str) -> Result:
    """Run one read-only statement and fetch its whole result.

    Raises:
        WarehouseError: not one statement, not a read, or DuckDB refused it (its
            message, first line).
    """
    return stream_query(connection, query).fetch_all()


def stream_query(
    connection: duckdb.DuckDBPyConnection, query: str, *, batch_rows: int = BATCH_ROWS
) -> RowStream:
    """Start one read-only statement; its rows come in batches as they are read.

    Raises:
        WarehouseError: not one statement, not a read, or DuckDB refused it (its
            message, first line), here or while the batches are read.
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise WarehouseError(_first_line(exc)) from None
    if len(statements) != 1:
        raise WarehouseError(f"expected one SQL statement, got {len(statements)}")
    if statements[0].type not in ALLOWED_STATEMENTS:
        kind = statements[0].type.name
        raise WarehouseError(f"only SELECT and EXPLAIN run on the warehouse, got {kind}")
    try:
        cursor = connection.execute(query)
        columns = [column[0] for column in cursor.description or []]
    except duckdb.Error as exc:
        raise WarehouseError(_first_line(exc)) from None

    def batches() -> Iterator[list[tuple[Any, ...]]]:
        while True:
            try:
                batch = cursor.fetchmany(batch_rows)
            except duckdb.Error as exc:
                raise WarehouseError(_first_line(exc)) from None
            if not batch:
                return
            yield batch

    return RowStream(columns, batches())


def query_warehouse(store: ObjectStore, query: str) -> Result:
    """`radlake sql`: one read-only statement over the store's warehouse.

    Raises:
        WarehouseError: no warehouse, or a bad or refused statement.
        StorageError: the store failed.
    """
    with open_query(store, query) as stream:
        return stream.fetch_all()


@contextmanager
def open_query(store: ObjectStore, query: str) -> Iterator[RowStream]:
    """query_warehouse, streamed: the rows are read while the block runs.

    Raises:
        WarehouseError: no warehouse, or a bad or refused statement.
        StorageError: the store failed.
    """
    connection = connect(store)
    try:
        yield stream_query(connection, query)
    finally:
        connection.close()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:500] if lines else type(exc).__name__
