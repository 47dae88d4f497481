"""The public dataset layouts by name: which reader, default source name and column
map each takes. `radlake source ...` and the load-source flow both read through here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from radlake.sources.base import SourceLoad
from radlake.sources.covid_cxr import KNOWN_COLUMNS, read_covid_cxr
from radlake.sources.csvfile import SourceFormatError, parse_column_map
from radlake.sources.nih_cxr14 import read_nih_cxr14
from radlake.sources.vinbigdata import COLUMNS as VINBIGDATA_COLUMNS
from radlake.sources.vinbigdata import read_vinbigdata

Layout = Literal["vinbigdata", "covid", "nih"]
LAYOUTS: tuple[Layout, ...] = ("vinbigdata", "covid", "nih")
Reader = Callable[[Path], SourceLoad]


def reader_for(layout: str, name: str | None, columns: Sequence[str]) -> Reader:
    """The reader of a layout with its name and `canonical=actual` column map, checked
    now (before any folder is read or catalog opened).

    Raises:
        SourceFormatError: an unknown layout, a bad column map, or one for nih.
    """
    if layout == "vinbigdata":
        mapped = parse_column_map(list(columns), VINBIGDATA_COLUMNS)
        return lambda root: read_vinbigdata(root, name=name or "vinbigdata", columns=mapped)
    if layout == "covid":
        known = parse_column_map(list(columns), KNOWN_COLUMNS)
        return lambda root: read_covid_cxr(root, name=name, columns=known)
    if layout == "nih":
        if columns:
            # Its CSVs are read by position (the header names two-valued columns once).
            raise SourceFormatError("the nih layout takes no column map")
        return lambda root: read_nih_cxr14(root, name=name or "nih-chestxray14")
    raise SourceFormatError(f"expected a layout in {', '.join(LAYOUTS)}, got {layout!r:.40}")


def read_layout(layout: str, root: Path, name: str | None, columns: Sequence[str]) -> SourceLoad:
    """Parse a dataset folder of a layout into records.

    Raises:
        SourceFormatError: no such folder, an unknown layout or bad CSVs.
    """
    reader = reader_for(layout, name, columns)
    if not root.is_dir():
        raise SourceFormatError(f"no such folder: {root}")
    return reader(root)
