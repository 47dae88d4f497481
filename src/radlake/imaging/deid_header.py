"""What the catalog keeps of a de-identified object: search fields and its header.

instance_fields: the attributes DICOMweb's QIDO-RS matches on (PS3.18 10.6.1.2), read
from the de-identified object, never from the original. header_json: the object's
DICOM JSON (PS3.18 F.2) without bulk data, what WADO-RS metadata answers with.
mark_clean_pixels: the marking of PS3.15 E.3.1 when burned-in text was blanked.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from radlake.imaging.dicom_dataset import quiet

CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")
# Binary values above this size are bulk data: left out of the header (PS3.18 F.2.7).
BULK_BYTES = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TEXT_LIMITS = {
    "accession_number": 16,
    "study_description": 64,
    "series_description": 64,
    "study_time": 16,
}


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _number(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def instance_fields(ds: Dataset) -> dict[str, Any]:
    """The deid_instance columns read from a de-identified dataset (texts cut to their
    column's size; numbers that are not numbers left empty)."""
    with quiet():
        meta = getattr(ds, "file_meta", None)
        fields: dict[str, Any] = {
            "study_uid": str(ds.StudyInstanceUID),
            "series_uid": str(ds.SeriesInstanceUID),
            "sop_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": _text(ds, "SOPClassUID"),
            "transfer_syntax": str(meta.TransferSyntaxUID) if meta is not None else None,
            "modality": (_text(ds, "Modality") or "")[:16] or None,
            "patient_id": (_text(ds, "PatientID") or "")[:64] or None,
            "study_date": (_text(ds, "StudyDate") or "")[:8] or None,
            "series_number": _number(ds, "SeriesNumber"),
            "instance_number": _number(ds, "InstanceNumber"),
            "rows": _number(ds, "Rows"),
            "columns": _number(ds, "Columns"),
            "frames": _number(ds, "NumberOfFrames") or (1 if "PixelData" in ds else None),
        }
        keywords = {
            "accession_number": "AccessionNumber",
            "study_description": "StudyDescription",
            "series_description": "SeriesDescription",
            "study_time": "StudyTime",
        }
        for column, keyword in keywords.items():
            value = _text(ds, keyword)
            fields[column] = value[: _TEXT_LIMITS[column]] if value else None
    return fields


def header_json(ds: Dataset) -> dict[str, Any]:
    """The dataset as DICOM JSON without its pixels and other bulk binary values."""
    header = Dataset()
    with quiet():
        for element in ds:
            if element.keyword == "PixelData":
                continue
            value = element.value
            if element.VR in _BINARY_VRS and isinstance(value, bytes) and len(value) > BULK_BYTES:
                continue
            header.add(element)
        return header.to_json_dict(bulk_data_threshold=BULK_BYTES, suppress_invalid_tags=True)


def mark_clean_pixels(ds: Dataset) -> None:
    """Burned-in text was found and blanked: say so in the object (PS3.15 E.3.1, CID
    7050 code 113101) and clear the header's warning."""
    value, meaning = CLEAN_PIXEL_CODE
    methods = list(ds.get("DeidentificationMethod", []) or [])
    if isinstance(ds.get("DeidentificationMethod"), str):
        methods = [str(ds.DeidentificationMethod)]
    if meaning not in methods:
        ds.DeidentificationMethod = [*methods, meaning]
    items = list(ds.get("DeidentificationMethodCodeSequence", []) or [])
    if all(item.get("CodeValue") != value for item in items):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.BurnedInAnnotation = "NO"
