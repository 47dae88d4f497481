"""Query results as numpy columns, for the dashboard's aggregates.

Rows are fetched through the session's connection (Core), skipping the ORM's
per-row processing, and each column becomes an array in one pass; NULL numbers
become NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Select
from sqlalchemy.orm import Session


def fetch_columns(session: Session, statement: Select[*tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The statement's result as one tuple per selected column (empty tuples if no row)."""
    rows = session.connection().execute(statement).fetchall()
    width = len(statement.selected_columns)
    return list(zip(*rows, strict=True)) if rows else [()] * width


def floats(values: Sequence[Any]) -> NDArray[np.float64]:
    """Numbers as float64, None as NaN."""
    array = np.array(values, dtype=object)
    if array.size:
        array[array == None] = np.nan  # noqa: E711 (elementwise: `is` would compare the array)
    return array.astype(np.float64)


def texts(values: Sequence[Any]) -> NDArray[np.str_]:
    """Text as a numpy string array, None as the empty string."""
    return np.array(["" if v is None else v for v in values], dtype=np.str_).reshape(len(values))
