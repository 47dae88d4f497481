"""COVID-19 chest X-ray collections: metadata.csv + images/, in the layouts of the
ieee8023 collection (a `filename` column) and its siblings Actualmed (`imagename`)
and Figure1 (no file column: images are <patientid>.jpg|.png), told apart by header.

The header may end with a trailing comma; Figure1's CSV is Windows-1252 encoded.
`finding` is hierarchical ("Pneumonia/Viral/COVID-19") and becomes image-level
labels at every level; views are normalised; each image's license, doi and url are
kept for exports; clinical columns become queryable attributes. A row whose file is
absent is quarantined with that reason; a row listing a file again (under another
patient: a conflict) is reported, the first row kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from radlake.sources.base import RawFinding, RejectedRow, SourceLoad, SourceRecord
from radlake.sources.csvfile import number, read_table
from radlake.sources.files import DatasetFiles

KIND = "covid_cxr"
_VIEWS = {
    "pa": "PA",
    "ap": "AP",
    "ap supine": "AP Supine",
    "ap erect": "AP Erect",
    "ap semi erect": "AP Erect",
    "l": "L",
    "lateral": "L",
    "ll": "L",
    "axial": "Axial",
    "coronal": "Coronal",
}
_MODALITIES = {"x-ray": "DX", "xray": "DX", "ct": "CT"}
# Structured clinical columns kept as attributes (numbers where they are numbers).
_CLINICAL = (
    "offset",
    "sex",
    "age",
    "RT_PCR_positive",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "date",
)
_PROVENANCE = ("license", "doi", "url")
# Free-text notes stay out of the catalog: they are patient narratives, not fields.
_NUMERIC = {"offset", "age", "temperature", "pO2_saturation"} | {
    c for c in _CLINICAL if c.endswith("_count")
}


def normalise_view(text: str) -> str | None:
    """'ap supine' -> 'AP Supine', 'Lateral' -> 'L'; unknown spellings kept stripped."""
    cleaned = " ".join(text.replace("_", " ").split())
    return _VIEWS.get(cleaned.lower(), cleaned or None)


def finding_levels(finding: str) -> list[str]:
    """Every level of a hierarchical finding, from the root down.

    'Pneumonia/Viral/COVID-19' -> Pneumonia, Pneumonia/Viral, Pneumonia/Viral/COVID-19.
    """
    parts = [part.strip() for part in finding.split("/") if part.strip()]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True, slots=True)
class Layout:
    """One collection of the COVID-19 chest X-ray family, told apart by its header."""

    name: str
    dataset: str  # the `dataset` attribute and the default source name
    file_column: str  # the column naming each image's file (or its name without extension)


IEEE8023 = Layout("ieee8023", "covid-chestxray", "filename")
ACTUALMED = Layout("actualmed", "actualmed-covid-chestxray", "imagename")
# Figure1 lists no file: images are <patientid>.jpg|.png (its `originalfile` column
# names the file as first received, not the one published).
FIGURE1 = Layout("figure1", "figure1-covid-chestxray", "patientid")
COLUMNS = ("patientid", "finding", "filename", "view", "modality", "folder")
KNOWN_COLUMNS = (*COLUMNS, *_CLINICAL, *_PROVENANCE)


def detect_layout(header: list[str]) -> Layout:
    """The sibling a metadata.csv header belongs to: a `filename` column (ieee8023),
    an `imagename` column (Actualmed), else `patientid` only (Figure1)."""
    if "filename" in header:
        return IEEE8023
    if "imagename" in header:
        return ACTUALMED
    if "patientid" in header:
        return FIGURE1
    return IEEE8023  # names the columns it expects when they are absent


def read_covid_cxr(
    root: Path, *, name: str | None = None, columns: Mapping[str, str] | None = None
) -> SourceLoad:
    """Parse a metadata.csv + images/ folder of the ieee8023 collection or a sibling
    (Figure1, Actualmed), recognised from its header; `columns` maps canonical names
    (`filename`, `patientid`, ...) to the file's own.

    A row whose file is absent (or ambiguous) becomes a record with that reason; a row
    naming no file, or a file an earlier row named, becomes a rejected row.

    Raises:
        SourceFormatError: metadata.csv is missing, unreadable, or lacks
            patientid/finding/the file column (or a mapped column).
    """
    csv_path = root / "metadata.csv"
    table = read_table(csv_path, columns=columns)
    layout = detect_layout([*table.header, *table.renamed])  # mapped names count
    file_column = (columns or {}).get("filename", layout.file_column)
    table = replace(table, renamed={**table.renamed, "filename": file_column})
    at = {c: table.require(c) for c in ("patientid", "finding", "filename")}
    at |= {c: i for c in KNOWN_COLUMNS if c not in at and (i := table.index(c)) is not None}

    def cell(row: list[str], column_name: str) -> str:
        index = at.get(column_name)
        return row[index].strip() if index is not None and index < len(row) else ""

    files = DatasetFiles(root)
    records: dict[str, SourceRecord] = {}
    first: dict[str, tuple[int, str]] = {}  # key -> line and patient of its first row
    claimed: dict[Path, tuple[int, str]] = {}  # file -> the same, for names spelt apart
    rejected: list[RejectedRow] = []
    taxonomy: dict[str, int | None] = {}
    for line, row in zip(table.lines, table.rows, strict=True):
        # The quarantine knows inputs by key across sources: the CSV's full path.
        row_name = f"{csv_path.absolute()} line {line}"
        key, patient = cell(row, "filename"), cell(row, "patientid")
        if not key:
            reason = f"names no file: its {file_column!r} cell is empty"
            rejected.append(RejectedRow(row_name, reason))
            continue
        folder = cell(row, "folder") or "images"
        found = files.find(folder, key, listed_in=table.name)
        earlier = first.get(key) or (claimed.get(found.path) if found.path else None)
        if earlier is not None:
            rejected.append(_repeat(row_name, f"{folder}/{key}", earlier, patient))
            continue
        first[key] = (line, patient)
        if found.path is not None:
            claimed[found.path] = (line, patient)
        levels = finding_levels(cell(row, "finding"))
        taxonomy.update((level, None) for level in levels)
        attributes: dict[str, object] = {"dataset": layout.dataset}
        for column_name in (*_CLINICAL, *_PROVENANCE):
            value = cell(row, column_name)
            numeric = number(value) if column_name in _NUMERIC else None
            if value:
                attributes[column_name] = value if numeric is None else numeric
        records[key] = SourceRecord(
            key=key,
            path=found.path,
            patient_id=patient or None,
            modality=_MODALITIES.get(cell(row, "modality").lower()),
            view=normalise_view(cell(row, "view")),
            attributes=attributes,
            findings=tuple(RawFinding(level) for level in levels),
            missing_reason=found.reason,
            listed_as=str((root / folder / key).absolute()),
        )
    return SourceLoad(
        name=name or layout.dataset,
        kind=KIND,
        records=list(records.values()),
        taxonomy=taxonomy,
        quarantine_missing=True,
        rejected_rows=rejected,
        row_key_prefix=f"{csv_path.absolute()} line ",
        layout=f"{layout.name} layout, files named by {file_column!r}, {table.encoding}",
    )


def _repeat(row_name: str, file: str, earlier: tuple[int, str], patient: str) -> RejectedRow:
    line, first_patient = earlier
    if patient != first_patient:
        reason = (
            f"lists {file} under another patient than line {line} does; "
            f"line {line} is kept: correct the patient of one of them"
        )
        return RejectedRow(row_name, reason, conflict=True)
    return RejectedRow(row_name, f"lists {file} again; line {line} is kept")
