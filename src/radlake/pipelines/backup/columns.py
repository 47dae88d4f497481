"""Catalog column types <-> Arrow types, chosen explicitly per column.

A value must come back exactly on any backend, whatever the one it left: ids and
counts are int64 (BIGINT on servers), reals are float64 (8 bytes everywhere, see
catalog.models.Real), booleans are bool (MySQL's TINYINT would read back as 0/1),
datetimes are UTC microseconds (the catalog stores UTC, timezone-aware), JSON is
its text as stored, read with a cast to text and written back verbatim (no decode
and re-encode: a JSON null stays distinct from SQL NULL, and key order and number
spelling are kept), strings are UTF-8 and bytes are binary; every field is nullable
as its column is.

Each Parquet field carries its kind in its metadata (`radlake.kind`), so a restore
reads the types from the backup itself, not from the code's models: a backup made
at an older schema revision restores with the types it was written with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    cast,
)
from sqlalchemy.dialects.mysql import DOUBLE
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from radlake.catalog.models import UTCDateTime
from radlake.errors import RadlakeError

KIND_KEY = b"radlake.kind"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_ARROW: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "json": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "bytes": pa.binary(),
}


class BackupError(RadlakeError, ValueError):
    """A backup cannot be written or restored as asked (damaged, incomplete, a target
    that is not empty, a schema this code does not know); nothing was loaded."""


@dataclass(frozen=True, slots=True)
class ColumnCodec:
    """One column: its name, its kind (a key of _ARROW) and whether it may be empty."""

    name: str
    kind: str
    nullable: bool

    def field(self) -> pa.Field:
        return pa.field(
            self.name, _ARROW[self.kind], nullable=self.nullable, metadata={KIND_KEY: self.kind}
        )

    def to_arrow(self, values: Sequence[Any]) -> pa.Array:
        """The column's values (as read_expression() reads them) as an Arrow array."""
        if self.kind == "timestamp":
            # Microseconds since the epoch by integer arithmetic: exact, and no
            # timezone conversion inside pyarrow (which pulls in pandas).
            micros = [None if value is None else (value - EPOCH) // MICROSECOND for value in values]
            return pa.array(micros, type=pa.int64()).cast(_ARROW["timestamp"])
        return pa.array(values, type=_ARROW[self.kind])

    def from_arrow(self, array: pa.Array) -> list[Any]:
        """Python values of an Arrow array, as the insert's column types bind them."""
        if self.kind == "timestamp":
            micros = array.cast(pa.int64()).to_pylist()
            return [None if value is None else EPOCH + value * MICROSECOND for value in micros]
        values: list[Any] = array.to_pylist()
        return values

    def sql_type(self) -> TypeEngine[Any]:
        """The SQLAlchemy type that binds this kind's values on every backend."""
        if self.kind == "int":
            return BigInteger()
        if self.kind == "float":
            return Float().with_variant(DOUBLE(asdecimal=False), "mysql", "mariadb")
        if self.kind == "bool":
            return Boolean()
        if self.kind == "timestamp":
            return UTCDateTime()
        if self.kind == "bytes":
            return LargeBinary()
        return Text()


def kind_of(column: Column[Any]) -> str:
    """The backup kind of a catalog column.

    Raises:
        BackupError: a column type with no explicit mapping (a new migration added
        one: map it here, rather than let a guess change values on the way).
    """
    sql_type = column.type
    # Order matters: UTCDateTime is a TypeDecorator, Boolean is no Integer, Text is a
    # String; JSON before String (MySQL's JSON is text underneath).
    if isinstance(sql_type, UTCDateTime):
        return "timestamp"
    if isinstance(sql_type, JSON):
        return "json"
    if isinstance(sql_type, Boolean):
        return "bool"
    if isinstance(sql_type, Integer):
        return "int"
    if isinstance(sql_type, Float) and not sql_type.asdecimal:
        return "float"
    if isinstance(sql_type, String):
        return "text"
    if isinstance(sql_type, LargeBinary):
        return "bytes"
    raise BackupError(
        f"no backup type for column {column.table.name}.{column.name} of type {sql_type!r}:"
        " expected an integer, real, boolean, string, UTC datetime, JSON or binary column"
    )


def codecs_for(table: Table) -> list[ColumnCodec]:
    """The codecs of a catalog table's columns, in the table's order.

    Raises:
        BackupError: a column has no mapping (see kind_of).
    """
    return [ColumnCodec(column.name, kind_of(column), bool(column.nullable)) for column in table.c]


def read_expression(column: Column[Any]) -> ColumnElement[Any]:
    """What a backup selects for a column: JSON as its stored text, the rest as is."""
    if isinstance(column.type, JSON):
        return cast(column, Text).label(column.name)
    return column


def codecs_from_schema(schema: pa.Schema, where: str) -> list[ColumnCodec]:
    """The codecs a backup file was written with, from its fields' metadata.

    Raises:
        BackupError: a field carries no kind, or one this code does not know.
    """
    codecs = []
    for field in schema:
        kind = (field.metadata or {}).get(KIND_KEY, b"").decode()
        if kind not in _ARROW or field.type != _ARROW[kind]:
            raise BackupError(
                f"{where}: column {field.name} has no radlake column kind (or a type that does"
                f" not match it); expected a file written by `radlake backup`"
            )
        codecs.append(ColumnCodec(field.name, kind, field.nullable))
    return codecs


def arrow_schema(codecs: Sequence[ColumnCodec]) -> pa.Schema:
    """The Parquet schema of a table's backup file."""
    return pa.schema([codec.field() for codec in codecs])


def to_batch(
    codecs: Sequence[ColumnCodec], schema: pa.Schema, rows: Sequence[Sequence[Any]]
) -> pa.RecordBatch:
    """Rows (tuples in codec order) as one record batch."""
    columns = [codec.to_arrow([row[n] for row in rows]) for n, codec in enumerate(codecs)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def from_batch(codecs: Sequence[ColumnCodec], batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    """A record batch as rows (tuples in codec order)."""
    columns = [codec.from_arrow(batch.column(n)) for n, codec in enumerate(codecs)]
    return list(zip(*columns, strict=True))


def insert_table(name: str, codecs: Sequence[ColumnCodec]) -> Table:
    """A Table built from a backup file's columns, to insert its rows with its types
    (JSON binds as its text: MySQL's JSON and SQLite's are text columns)."""
    return Table(name, MetaData(), *(Column(codec.name, codec.sql_type()) for codec in codecs))
