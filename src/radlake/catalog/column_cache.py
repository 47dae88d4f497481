"""Catalog tables kept in memory as numpy columns and topped up as they grow.

The dashboard reads the same large tables on every page (ground-truth labels, image
metadata, predictions); reading 100,000 rows through the driver costs about a second
each time. A `ColumnTable` reads a table once, then on each use asks the database for
its stamp: the newest id, the row count, and the newest value of each watched column
(an insert time, an update time), which moves when rows are replaced or changed in
place. When the stamp moved only by added rows, it reads the rows with a newer id and
appends them; otherwise it reads the table again. A copy is kept only when the rows
read agree with the stamp (count, newest id, watched values), so a write landing
between the stamp and the read is never kept as if the stamp had seen it: a figure is
never computed from a stale or doubled copy. Copies are kept per catalog (engine).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine, Select, func, select
from sqlalchemy.orm import QueryableAttribute, Session

from radlake.catalog.columns import fetch_columns

Columns = dict[str, NDArray[Any]]
Converter = Callable[[Sequence[Any]], NDArray[Any]]


@dataclass
class _Copy:
    stamp: tuple[Any, ...]
    columns: Columns


@dataclass
class ColumnTable:
    """One query's rows as named columns, ordered by id (see the module docstring).

    statement: the rows, selecting `id_column` first and then one column per name in
        `converters` (in that order), with any filter; it must not be ordered.
    watch: names of converted columns whose newest value is part of the stamp; their
        converters must keep order (numbers, times as seconds).
    """

    name: str
    statement: Callable[[], Select[*tuple[Any, ...]]]
    id_column: QueryableAttribute[int]
    converters: dict[str, Converter]
    watch: tuple[str, ...] = ()
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
        names = ["id", *self.converters]
        watched = [func.max(base.c[names.index(name)]) for name in self.watch]
        row = session.execute(
            select(func.max(base.c[0]), func.count(base.c[0]), *watched).select_from(base)
        ).one()
        newest, count, *values = row
        kept = [
            self._newest(self.converters[name]([value]))
            for name, value in zip(self.watch, values, strict=True)
        ]
        return (int(newest or 0), int(count), *kept)

    @staticmethod
    def _newest(values: NDArray[Any]) -> float | None:
        """The largest known value (NaN is unknown), None when there is none."""
        known = values[~np.isnan(values)] if values.dtype.kind == "f" else values
        return None if not len(known) else float(np.max(known))

    def _agrees(self, columns: Columns) -> tuple[Any, ...]:
        """The stamp the rows in columns would give."""
        ids = columns["id"]
        return (
            int(ids.max()) if len(ids) else 0,
            len(ids),
            *(self._newest(columns[name]) for name in self.watch),
        )

    def _read(self, session: Session, after: int | None) -> Columns:
        statement = self.statement()
        if after is not None:
            statement = statement.where(self.id_column > after)
        found = fetch_columns(session, statement.order_by(self.id_column))
        columns: Columns = {"id": np.fromiter(found[0], np.int64, len(found[0]))}
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
        if copy is not None and stamp[0] >= copy.stamp[0] and stamp[1] >= copy.stamp[1]:
            added = self._read(session, copy.stamp[0])
            merged = {k: np.concatenate([copy.columns[k], added[k]]) for k in copy.columns}
            if self._agrees(merged) == stamp:
                return self._keep(key, _Copy(stamp, merged))
        columns = self._read(session, None)
        if self._agrees(columns) == stamp:
            return self._keep(key, _Copy(stamp, columns))
        return columns  # a write landed after the stamp: right now, not kept

    def _keep(self, key: Engine, copy: _Copy) -> Columns:
        with self._lock:
            self._copies[key] = copy
        return copy.columns

    def forget(self) -> None:
        """Drop every kept copy (tests)."""
        with self._lock:
            self._copies.clear()
