"""NIH ChestX-ray14: Data_Entry_2017*.csv (labels separated by '|', patient, age,
sex, view, original size and spacing) and BBox_List_2017.csv (x, y, w, h in the
1024-px images). Images are images/<Image Index>; the CSVs list 112,120 images, so a
labels-only load is normal and reports which images are missing.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from radlake.domain import Box
from radlake.sources.base import RawFinding, SourceLoad, SourceRecord
from radlake.sources.csvfile import SourceFormatError, number, read_rows

KIND = "nih_cxr14"
BOX_SPACE = (1024.0, 1024.0)  # BBox_List coordinates are in the released 1024-px images
# Data_Entry columns by position: the header names two-valued columns once
# ("OriginalImage[Width,Height]") while rows carry both values.
_INDEX, _LABELS, _FOLLOW_UP, _PATIENT, _AGE, _SEX, _VIEW = range(7)
_WIDTH, _HEIGHT, _SPACING_X, _SPACING_Y = 7, 8, 9, 10


def _boxes(root: Path) -> dict[str, list[RawFinding]]:
    path = root / "BBox_List_2017.csv"
    if not path.exists():
        return {}
    _, rows = read_rows(path)
    boxes: dict[str, list[RawFinding]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        values = [number(v) for v in row[2:6]]
        if len(row) < 6 or any(v is None for v in values):
            raise SourceFormatError(f"{path.name} line {line}: expected x, y, w, h numbers")
        x, y, w, h = (float(v) for v in values if v is not None)
        boxes[row[0]].append(RawFinding(row[1].strip(), box=Box(x, y, x + w, y + h)))
    return boxes


def read_nih_cxr14(root: Path, *, name: str = "nih-chestxray14") -> SourceLoad:
    """Parse the NIH CSVs (and the images present under images/).

    Raises:
        SourceFormatError: no Data_Entry_2017*.csv, or a malformed row.
    """
    entries = sorted(root.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise SourceFormatError(f"expected Data_Entry_2017*.csv in {root}")
    boxes = _boxes(root)
    images = root / "images"
    present = {p.name for p in images.iterdir()} if images.is_dir() else set()
    records: list[SourceRecord] = []
    taxonomy: dict[str, int | None] = {}
    for entry in entries:
        _, rows = read_rows(entry)
        for line, row in enumerate(rows, start=2):
            if len(row) < 11:
                raise SourceFormatError(f"{entry.name} line {line}: expected 11 fields")
            key = row[_INDEX]
            labels = [label.strip() for label in row[_LABELS].split("|") if label.strip()]
            taxonomy.update((label, None) for label in labels)
            findings = [RawFinding(label) for label in labels] + boxes.get(key, [])
            records.append(
                SourceRecord(
                    key=key,
                    path=images / key if key in present else None,
                    patient_id=row[_PATIENT],
                    modality="DX",
                    view=row[_VIEW].strip() or None,
                    attributes={
                        "dataset": "nih-chestxray14",
                        "follow_up": int(row[_FOLLOW_UP]),
                        "patient_age": number(row[_AGE]),
                        "patient_sex": row[_SEX],
                        "original_columns": number(row[_WIDTH]),
                        "original_rows": number(row[_HEIGHT]),
                        "original_spacing": [number(row[_SPACING_X]), number(row[_SPACING_Y])],
                    },
                    findings=tuple(findings),
                    box_space=BOX_SPACE,
                )
            )
    taxonomy.update((f.class_name, None) for fs in boxes.values() for f in fs)
    return SourceLoad(name=name, kind=KIND, records=records, taxonomy=taxonomy)
