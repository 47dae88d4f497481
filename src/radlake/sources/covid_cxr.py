"""COVID-19 chest X-ray collection (the ieee8023 layout): metadata.csv + images/.

The header may end with a trailing comma; sibling collections in the same layout
are Windows-1252 encoded. `finding` is hierarchical ("Pneumonia/Viral/COVID-19") and
becomes image-level labels at every level; views are normalised; each image's
license, doi and url are kept for exports; clinical columns become queryable
attributes. A row whose file is absent is quarantined with that reason.
"""

from __future__ import annotations

from pathlib import Path

from radlake.sources.base import RawFinding, SourceLoad, SourceRecord
from radlake.sources.csvfile import column, number, read_rows

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


def read_covid_cxr(root: Path, *, name: str = "covid-chestxray") -> SourceLoad:
    """Parse a metadata.csv + images/ folder.

    Raises:
        SourceFormatError: metadata.csv is missing or lacks patientid/finding/filename.
    """
    csv_path = root / "metadata.csv"
    header, rows = read_rows(csv_path)
    required = {c: column(header, c, csv_path) for c in ("patientid", "finding", "filename")}
    optional = {
        c: header.index(c)
        for c in (*_CLINICAL, *_PROVENANCE, "view", "modality", "folder")
        if c in header
    }

    def cell(row: list[str], name: str) -> str:
        index = optional.get(name, required.get(name))
        return row[index].strip() if index is not None and index < len(row) else ""

    records: dict[str, SourceRecord] = {}
    taxonomy: dict[str, int | None] = {}
    for row in rows:
        filename = cell(row, "filename")
        if not filename or filename in records:
            continue
        folder = cell(row, "folder") or "images"
        path = root / folder / filename
        levels = finding_levels(cell(row, "finding"))
        taxonomy.update((level, None) for level in levels)
        attributes: dict[str, object] = {"dataset": "covid-chestxray"}
        for name_ in (*_CLINICAL, *_PROVENANCE):
            value = cell(row, name_)
            numeric = number(value) if name_ in _NUMERIC else None
            if value:
                attributes[name_] = value if numeric is None else numeric
        records[filename] = SourceRecord(
            key=filename,
            path=path if path.is_file() else None,
            patient_id=cell(row, "patientid") or None,
            modality=_MODALITIES.get(cell(row, "modality").lower()),
            view=normalise_view(cell(row, "view")),
            attributes=attributes,
            findings=tuple(RawFinding(level) for level in levels),
            missing_reason=f"file listed in metadata.csv is absent: {folder}/{filename}",
        )
    return SourceLoad(
        name=name,
        kind=KIND,
        records=list(records.values()),
        taxonomy=taxonomy,
        quarantine_missing=True,
    )
