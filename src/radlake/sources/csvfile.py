"""Reading dataset CSVs as they are really published: UTF-8 or Windows-1252,
headers with trailing commas, numbers that may be empty."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from radlake.errors import RadlakeError


class SourceFormatError(RadlakeError, ValueError):
    """A source's files do not have the layout its adapter expects."""


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header names (empty trailing names dropped) and raw rows of a CSV file.

    Raises:
        SourceFormatError: the file is missing or empty.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceFormatError(f"expected {path.name} in {path.parent}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Sibling collections of the COVID-19 set are Windows-1252 encoded.
        text = raw.decode("cp1252", errors="replace")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        raise SourceFormatError(f"{path.name} is empty")
    header = [name.strip() for name in rows[0]]
    while header and not header[-1]:
        header.pop()
    return header, [row for row in rows[1:] if any(cell.strip() for cell in row)]


def column(header: list[str], name: str, path: Path) -> int:
    """The index of a required column.

    Raises:
        SourceFormatError: the column is absent.
    """
    try:
        return header.index(name)
    except ValueError:
        raise SourceFormatError(
            f"expected a column {name!r} in {path.name}, found {', '.join(header[:12])}"
        ) from None


def number(text: str) -> float | None:
    """A float, or None for an empty or non-numeric cell."""
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return None


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Files in a folder by name without extension (one directory listing)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file()}
