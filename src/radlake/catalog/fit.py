"""Making values fit their catalog columns, the same way on every backend.

SQLite keeps a 150-character Manufacturer in a VARCHAR(100) and a NUL inside a
string; PostgreSQL and MariaDB refuse both (DataError), so one odd header used to
fail a whole batch there and pass on SQLite. Every row is fitted here, before any
INSERT, from the column types of its table:

- NUL characters are removed: they are not part of any DICOM text value (PS3.5
  6.1.2: NUL is only padding for UI and OB values) and PostgreSQL cannot store them.
- Lone surrogates (bytes that were not valid text) become U+FFFD.
- Text longer than its column is cut to the column; the whole value is kept (a
  caller stores it in the image's attributes under "full_values").
- Integers outside the column's range and floats that are not finite become NULL;
  the original value is kept the same way (MariaDB refuses NaN, JSON has no NaN).
- JSON values get the same cleaning all the way down; non-finite floats become
  their text ("nan", "inf").

UIDs are identities: cutting one would merge series, so readers refuse a UID over
64 characters (PS3.5 9.1) before a row is built, and `fit_row` never sees one.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String

_INT = (-(2**31), 2**31 - 1)
_BIG_INT = (-(2**63), 2**63 - 1)


def clean_text(value: str) -> str:
    """Text any backend stores: no NUL, no lone surrogates."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def clean_json(value: Any) -> Any:
    """A JSON value every backend stores (see the module docstring)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        # JSON numbers beyond 64 bits lose precision in PostgreSQL and MariaDB.
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return clean_text(str(value))


def fit_value(column_type: Any, value: Any) -> tuple[Any, bool]:
    """(the value as stored in a column of that type, whether something was lost)."""
    if value is None:
        return None, False
    if isinstance(column_type, String) and isinstance(value, str):
        text = clean_text(value)
        length = column_type.length
        if length is not None and len(text) > length:
            return text[:length], True
        return text, False
    if isinstance(column_type, Integer) and isinstance(value, int):
        low, high = _BIG_INT if isinstance(column_type, BigInteger) else _INT
        return (value, False) if low <= value <= high else (None, True)
    if isinstance(column_type, Float) and isinstance(value, float | int):
        return (value, False) if math.isfinite(value) else (None, True)
    if isinstance(column_type, JSON):
        return clean_json(value), False
    return value, False


def column_length(model: type[Any], name: str) -> int | None:
    """The declared length of a text column of a mapped class."""
    length: int | None = getattr(model.__table__.columns[name].type, "length", None)
    return length


def fit_row(model: type[Any], row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row fitted to the columns of a mapped class, and {column: whole value} for
    what had to be cut."""
    columns = model.__table__.columns
    fitted: dict[str, Any] = {}
    lost: dict[str, Any] = {}
    for name, value in row.items():
        column = columns.get(name)
        if column is None:
            fitted[name] = value
            continue
        fitted[name], was_cut = fit_value(column.type, value)
        if was_cut:
            lost[name] = clean_json(value)
    return fitted, lost
