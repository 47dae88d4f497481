"""Catalog tables kept in memory as numpy columns and topped up as they grow.

The dashboard reads the same large tables on every page (ground-truth labels, image
metadata, predictions); reading 100,000 rows through the driver costs about a second
each time. A `ColumnTable` reads a table once, then on each use asks the database for
its stamp (newest id, row count and, where rows change in place, a count that such a
change moves) and reads only rows with a newer id when the stamp says rows were only
added; any other change (a deletion, an update the stamp sees) reads it all again.
So a page after an ingest of 500 images reads 500 rows, not 100,500, and a figure is
never computed from a stale copy. Copies are kept per catalog (engine).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import ColumnElement, Engine, Select, Subquery, func, select
from sqlalchemy.orm import QueryableAttribute, Session

from radlake.catalog.columns import fetch_columns

Columns = dict[str, NDArray[Any]]
Converter = Callable[[Sequence[Any]], NDArray[Any]]


@dataclass
class _Copy:
    stamp: tuple[Any, ...]
    newest: int
    columns: Columns


@dataclass
class ColumnTable:
    """One query's rows as named columns, ordered by id (see the module docstring).

    statement: the rows, selecting `id_column` first and then one column per name in
        `converters` (in that order), with any filter; it must not be ordered.
    changed: aggregates over the statement's rows (a subquery) whose values move when a
        row changes in place (e.g. a count of a column an update fills).
    """

    name: str
    statement: Callable[[], Select[*tuple[Any, ...]]]
    id_column: QueryableAttribute[int]
    converters: dict[str, Converter]
    changed: Callable[[Subquery], Sequence[ColumnElement[Any]]] = lambda _: ()
    # Per engine, weakly: a disposed catalog's copies go with it, and a new engine
    # never finds an old one's copy (ids of dead objects are reused).
    _copies: weakref.WeakKeyDictionary[Engine, _Copy] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # One reader at a time: a request arriving during a read (the server's warm-up)
    # waits for it and takes its copy rather than reading the table a second time.
    _reading: threading.Lock = field(default_factory=threading.Lock)

    def _stamp(self, session: Session) -> tuple[Any, ...]:
        base = self.statement().subquery()
        key = base.c[0]
        row = session.execute(
            select(func.max(key), func.count(key), *self.changed(base)).select_from(base)
        ).one()
        return tuple(row)

    def _read(self, session: Session, after: int | None) -> Columns:
        statement = self.statement()
        if after is not None:
            statement = statement.where(self.id_column > after)
        found = fetch_columns(session, statement.order_by(self.id_column))
        ids = np.fromiter(found[0], np.int64, len(found[0]))
        columns: Columns = {"id": ids}
        for (name, convert), values in zip(self.converters.items(), found[1:], strict=True):
            columns[name] = convert(values)
        return columns

    def columns(self, session: Session) -> Columns:
        """The table's current rows as columns (arrays shared: do not modify them)."""
        with self._reading:
            return self._current(session)

    def _current(self, session: Session) -> Columns:
        bind = session.get_bind()
        key = bind if isinstance(bind, Engine) else bind.engine
        stamp = self._stamp(session)
        with self._lock:
            copy = self._copies.get(key)
        if copy is not None and copy.stamp == stamp:
            return copy.columns
        newest, count = int(stamp[0] or 0), int(stamp[1])
        grown = (
            copy is not None
            and stamp[2:] == copy.stamp[2:]
            and newest >= copy.newest
            and count >= int(copy.stamp[1])
        )
        if copy is not None and grown:
            added = self._read(session, copy.newest)
            if len(added["id"]) == count - int(copy.stamp[1]):
                merged = {k: np.concatenate([copy.columns[k], added[k]]) for k in copy.columns}
                return self._keep(key, _Copy(stamp, newest, merged))
        return self._keep(key, _Copy(stamp, newest, self._read(session, None)))

    def _keep(self, key: Engine, copy: _Copy) -> Columns:
        with self._lock:
            self._copies[key] = copy
        return copy.columns

    def forget(self) -> None:
        """Drop every kept copy (tests)."""
        with self._lock:
            self._copies.clear()
