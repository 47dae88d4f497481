"""Reading dataset CSVs as they are really published: UTF-8 (with or without a byte
order mark) or Windows-1252, headers with trailing commas, numbers that may be empty,
columns named differently by sibling collections (a column map renames them)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from radlake.errors import RadlakeError


class SourceFormatError(RadlakeError, ValueError):
    """A source's files do not have the layout its adapter expects."""


@dataclass(frozen=True, slots=True)
class CsvTable:
    """A CSV file's header (empty trailing names dropped), rows and detected encoding."""

    name: str
    header: list[str]
    rows: list[list[str]]
    encoding: str
    # the line each row starts on, as an editor numbers them (quoted cells span lines)
    lines: list[int]
    # canonical column name -> the file's own name for it (from a column map)
    renamed: Mapping[str, str] = field(default_factory=dict)

    def index(self, name: str) -> int | None:
        """Where a column is: its mapped name, its own name, or the same name written
        with spaces ('pO2 saturation' for pO2_saturation); None when absent."""
        wanted = self.renamed.get(name, name)
        for candidate in (wanted, wanted.replace("_", " ")):
            if candidate in self.header:
                return self.header.index(candidate)
        return None

    def require(self, name: str) -> int:
        """Where a required column is.

        Raises:
            SourceFormatError: the column is absent.
        """
        index = self.index(name)
        if index is None:
            mapped = f" (mapped to {self.renamed[name]!r})" if name in self.renamed else ""
            raise SourceFormatError(
                f"expected a column {name!r}{mapped} in {self.name}, "
                f"found {', '.join(self.header[:12])}; name it with --column {name}=COLUMN"
            )
        return index


def decode_text(raw: bytes) -> tuple[str, str]:
    """Text and encoding of a CSV's bytes: UTF-8 (a byte order mark is dropped) when the
    bytes are valid UTF-8, else Windows-1252.

    Valid UTF-8 is taken as UTF-8: Windows-1252 text that happens to be valid UTF-8
    needs sequences such as 'Ã©' that real names do not hold, while reading UTF-8 as
    Windows-1252 would turn every 'é' into 'Ã©'.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Sibling collections of the COVID-19 set are Windows-1252 encoded; the five
        # bytes cp1252 leaves undefined become U+FFFD rather than stopping the load.
        return raw.decode("cp1252", errors="replace"), "cp1252"


def read_table(path: Path, *, columns: Mapping[str, str] | None = None) -> CsvTable:
    """A CSV file parsed, with its encoding detected and `columns` (canonical name ->
    the file's name) applied to column look-ups.

    Raises:
        SourceFormatError: the file is missing, empty or not CSV, or a mapped column
            is absent from its header.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceFormatError(f"expected {path.name} in {path.parent}") from None
    except IsADirectoryError:
        raise SourceFormatError(f"expected {path.name} to be a file, found a folder") from None
    text, encoding = decode_text(raw)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        while True:
            start = reader.line_num + 1
            try:
                rows.append(next(reader))
            except StopIteration:
                break
            lines.append(start)
    except csv.Error as exc:
        raise SourceFormatError(f"{path.name} is not a readable CSV file: {exc}") from None
    if not rows:
        raise SourceFormatError(f"{path.name} is empty")
    header = [name.strip() for name in rows[0]]
    while header and not header[-1]:
        header.pop()
    renamed = dict(columns or {})
    for canonical, actual in renamed.items():
        if actual not in header:
            raise SourceFormatError(
                f"--column {canonical}={actual}: {path.name} has no column {actual!r}, "
                f"found {', '.join(header[:12])}"
            )
    kept = [i for i in range(1, len(rows)) if any(cell.strip() for cell in rows[i])]
    return CsvTable(
        path.name, header, [rows[i] for i in kept], encoding, [lines[i] for i in kept], renamed
    )


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header names (empty trailing names dropped) and raw rows of a CSV file.

    Raises:
        SourceFormatError: the file is missing, empty or not CSV.
    """
    table = read_table(path)
    return table.header, table.rows


def parse_column_map(values: Sequence[str], known: Sequence[str]) -> dict[str, str]:
    """`--column canonical=actual` options as a map; canonical names must be `known`.

    Raises:
        SourceFormatError: a value is not canonical=actual, or names an unknown column.
    """
    mapping: dict[str, str] = {}
    for value in values:
        canonical, sep, actual = (part.strip() for part in value.partition("="))
        if not sep or not canonical or not actual:
            raise SourceFormatError(f"--column expects CANONICAL=ACTUAL, got {value!r}")
        if canonical not in known:
            raise SourceFormatError(
                f"--column {canonical}=...: unknown column {canonical!r}, "
                f"expected one of {', '.join(known)}"
            )
        if canonical in mapping and mapping[canonical] != actual:
            raise SourceFormatError(f"--column {canonical} is given twice")
        mapping[canonical] = actual
    return mapping


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
    """A float, or None for an empty, non-numeric or non-finite cell ('nan' would
    make an attribute that JSON columns refuse)."""
    try:
        value = float(text) if text.strip() else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Files in a folder by name without extension (one directory listing)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file()}
