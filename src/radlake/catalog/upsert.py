"""Insert rows unless their natural key is already there, in each dialect's own way.

Select-then-insert races: two ingests both see a series missing, both insert it, and
one dies on the unique key. Each backend has an atomic "insert unless present":
PostgreSQL and SQLite `INSERT ... ON CONFLICT DO NOTHING`; MySQL/MariaDB
`INSERT ... ON DUPLICATE KEY UPDATE key = key` (a no-op update: unlike `INSERT
IGNORE` it still refuses bad values and missing foreign keys instead of turning
them into warnings). Rows are sent sorted by key, so concurrent writers take row
locks in the same order and do not deadlock each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, insert
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from radlake.catalog.db import WRITE_BATCH, batches


def _statement(session: Session, model: type[Any], key: str) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql_insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(model).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        statement = mysql_insert(model)
        return statement.on_duplicate_key_update({key: statement.inserted[key]})
    return insert(model)


def insert_missing(
    session: Session, model: type[Any], rows: Sequence[dict[str, Any]], *, key: str
) -> None:
    """Insert rows whose unique `key` is not present yet; existing rows are left alone."""
    if not rows:
        return
    ordered = sorted(rows, key=lambda row: str(row[key]))
    statement = _statement(session, model, key)
    for chunk in batches(ordered, WRITE_BATCH):
        session.execute(statement, list(chunk))
