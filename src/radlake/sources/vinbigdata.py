"""VinBigData chest X-ray (as downloaded from its competition page).

train.csv: image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max; one row
per box per radiologist, three radiologists (R1-R17) per image; class 14 "No finding"
has empty coordinates. Images are train/<image_id>.dicom, or a resized PNG variant
train/<image_id>.png with train_meta.csv (image_id, dim0 = original rows,
dim1 = original columns): boxes are then rescaled exactly to the stored size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from radlake.domain import Box
from radlake.sources.base import RawFinding, SourceLoad, SourceRecord
from radlake.sources.csvfile import (
    SourceFormatError,
    column,
    files_by_stem,
    number,
    read_rows,
    read_table,
)

KIND = "vinbigdata"
COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


def _original_sizes(root: Path) -> dict[str, tuple[float, float]]:
    meta = root / "train_meta.csv"
    if not meta.exists():
        return {}
    header, rows = read_rows(meta)
    i, rows_at, cols_at = (column(header, n, meta) for n in ("image_id", "dim0", "dim1"))
    sizes: dict[str, tuple[float, float]] = {}
    for row in rows:
        height, width = number(row[rows_at]), number(row[cols_at])
        if height and width:
            sizes[row[i]] = (width, height)
    return sizes


def read_vinbigdata(
    root: Path, *, name: str = "vinbigdata", columns: Mapping[str, str] | None = None
) -> SourceLoad:
    """Parse a VinBigData folder (labels with or without images); `columns` maps
    train.csv's canonical column names to the file's own.

    Raises:
        SourceFormatError: train.csv is missing or lacks the expected (or mapped) columns.
    """
    csv_path = root / "train.csv"
    table = read_table(csv_path, columns=columns)
    header, rows = table.header, table.rows
    at = {c: table.require(c) for c in COLUMNS}
    findings: dict[str, list[RawFinding]] = defaultdict(list)
    taxonomy: dict[str, int | None] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise SourceFormatError(f"{csv_path.name} line {line}: expected {len(header)} fields")
        image_id, class_name = row[at["image_id"]], row[at["class_name"]].strip()
        class_id = number(row[at["class_id"]])
        taxonomy[class_name] = None if class_id is None else int(class_id)
        coords = [number(row[at[c]]) for c in ("x_min", "y_min", "x_max", "y_max")]
        box = Box(*coords) if all(c is not None for c in coords) else None  # type: ignore[arg-type]
        findings[image_id].append(
            RawFinding(class_name, taxonomy[class_name], row[at["rad_id"]] or None, box)
        )
    files = files_by_stem(root / "train")
    sizes = _original_sizes(root)
    records = []
    for image_id in sorted(findings):
        path = files.get(image_id)
        resized = path is not None and path.suffix.lower() in (".png", ".jpg", ".jpeg")
        size = sizes.get(image_id)
        if resized and size is None and any(f.box for f in findings[image_id]):
            # Boxes are in original DICOM pixels; without the original size they
            # cannot be placed exactly on a resized PNG.
            raise SourceFormatError(
                f"{path.name if path else image_id} is a PNG/JPEG variant: train_meta.csv "
                "(image_id, dim0, dim1) is needed to rescale its boxes"
            )
        attributes: dict[str, object] = {"dataset": "vinbigdata"}
        if size:
            attributes |= {"original_columns": int(size[0]), "original_rows": int(size[1])}
        records.append(
            SourceRecord(
                key=image_id,
                path=path,
                modality="DX" if resized else None,
                attributes=attributes,
                findings=tuple(findings[image_id]),
                box_space=size if resized and size else None,
            )
        )
    return SourceLoad(name=name, kind=KIND, records=records, taxonomy=taxonomy)
