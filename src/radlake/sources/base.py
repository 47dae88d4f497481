"""What every source adapter produces: plain records, nothing else.

An adapter only parses its layout (CSV quirks, folders, coordinate spaces) into
`SourceRecord`s gathered in a `SourceLoad`. It never touches the catalog, the store
or a pipeline (DESIGN.md: sources are adapters only); `radlake.pipelines.source_load`
ingests the files and writes the records' metadata and labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radlake.domain import Box


@dataclass(frozen=True, slots=True)
class RawFinding:
    """A label as the source gives it; box in the source's coordinate space."""

    class_name: str
    class_id: int | None = None
    reader: str | None = None
    box: Box | None = None


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One image as a source describes it."""

    key: str
    path: Path | None
    patient_id: str | None = None
    modality: str | None = None
    view: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[RawFinding, ...] = ()
    # (width, height) of the space the boxes are given in; None: the stored image's own.
    box_space: tuple[float, float] | None = None
    missing_reason: str | None = None
    # Where the source says the file is (absolute): the quarantine knows an absent file
    # by it, across sources and re-runs; None: by its key.
    listed_as: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A source row that describes no image of its own: it names no file, or a file an
    earlier row already named (the first row is kept). Reported, never dropped."""

    key: str  # names the row: "/data/covid/metadata.csv line 7"
    reason: str
    # The earlier row puts the same file under another patient: which one is right
    # decides where the image goes in a patient-wise split.
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class SourceLoad:
    """A parsed source: its records and its taxonomy (class name -> class id)."""

    name: str
    kind: str
    records: Sequence[SourceRecord]
    taxonomy: Mapping[str, int | None] = field(default_factory=dict)
    quarantine_missing: bool = False
    rejected_rows: Sequence[RejectedRow] = ()
    # What every rejected row's key starts with ("/data/covid/metadata.csv line "):
    # a row an earlier load rejected and this one no longer does has been fixed.
    row_key_prefix: str | None = None
    # How the adapter read the source ("figure1 layout, cp1252"); None: nothing to say.
    layout: str | None = None
