"""DICOM: catalog fields from the header, pixels through dicom_pixels.py.

Headers are parsed once (dicom_dataset.py), and the decode budget is checked before
the metadata is handed out, so an input ingest cannot decode is refused at once.
Direct identifiers are never copied out: the PatientID leaves this module only as a
keyed pseudonym (see deid.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat, PersonName

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import CorruptImage, ImageError
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.dicom_dataset import (
    as_number,
    frame_count,
    get_text,
    get_value,
    pixel_spacing,
    quiet,
    read_dataset,
    require_pixels,
    transfer_syntax_name,
    value_or_functional,
)
from radlake.imaging.dicom_pixels import DicomPixels, check_pixel_budget
from radlake.imaging.pixels import PixelSource, safe_message
from radlake.imaging.reader import ImageReader

__all__ = ["DicomPixels", "DicomReader", "check_pixel_budget", "read_dataset"]

# Acquisition descriptors kept as attributes: technique, not identity (PS3.15 E.3.1
# "Retain Device Identity" is not used: station names and serials stay out).
_ATTRIBUTE_KEYWORDS = (
    "ImageType",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "KVP",
    "ConvolutionKernel",
    "PatientPosition",
    "Laterality",
    "ImageLaterality",
    "SpacingBetweenSlices",
    "PixelRepresentation",
    "SamplesPerPixel",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
)

# PS3.15 "Retain Patient Characteristics": sex and age are kept, never birth dates.
_PATIENT_CHARACTERISTICS = {"PatientSex": "patient_sex", "PatientAge": "patient_age"}

# Issue 8: pixels that may carry burned-in patient data (name, MRN, birth date) are
# flagged at ingest. PS3.3 C.7.6.1.1.7 BurnedInAnnotation YES, and by default every
# ultrasound and Secondary Capture (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.7 and .7.x),
# whose headers rarely say so reliably.
BURNED_IN_MODALITIES = frozenset({"US"})
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# PS3.5 9.1: a UID is at most 64 characters; the catalog keys studies and series on them.
_MAX_UID_CHARACTERS = 64


def _json_value(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, IS | int):
        return int(value)
    if isinstance(value, PersonName):
        return None  # never: person names are identifiers
    if isinstance(value, bytes):
        return None
    return str(value)


def may_show_burned_in(ds: Dataset, modality: str | None, sop_class: str | None) -> bool:
    """Whether the pixels may show patient data: the header says so, or the kind of
    image (ultrasound, Secondary Capture) usually does."""
    if (get_text(ds, "BurnedInAnnotation") or "").strip().upper() == "YES":
        return True
    if (modality or "").upper() in BURNED_IN_MODALITIES:
        return True
    return bool(sop_class) and (
        sop_class == SECONDARY_CAPTURE or str(sop_class).startswith(SECONDARY_CAPTURE + ".")
    )


def _slice_position(ds: Dataset) -> float | None:
    """Position along the slice normal (mm): sorts a series in space, not in time."""
    position = value_or_functional(ds, "ImagePositionPatient", "PlanePositionSequence")
    orientation = value_or_functional(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    try:
        ipp = np.array([float(v) for v in position], dtype=np.float64)
        iop = np.array([float(v) for v in orientation], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return round(float(np.dot(ipp, normal)), 4)


def _uid(ds: Dataset, keyword: str, *, checked: bool = True) -> str | None:
    """A UID without its NUL padding (PS3.5 9.1); over 64 characters is refused."""
    text = get_text(ds, keyword)
    text = text.strip("\0 ") if text is not None else None
    if checked and text is not None and len(text) > _MAX_UID_CHARACTERS:
        raise CorruptImage(
            f"invalid {keyword}: {len(text)} characters, PS3.5 9.1 allows at most "
            f"{_MAX_UID_CHARACTERS}"
        )
    return text or None


class DicomReader(ImageReader):
    """DICOM Part 10 files and bare datasets, every transfer syntax pylibjpeg decodes."""

    formats: ClassVar[tuple[ImageFormat, ...]] = (ImageFormat.DICOM,)

    def read_metadata(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> ImageMetadata:
        ds = read_dataset(data, max_decoded_bytes=max_decoded_bytes)
        metadata = self._dataset_metadata(ds, pseudonymizer)
        check_pixel_budget(ds, max_decoded_bytes)
        return metadata

    def read(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        # One parse serves both the catalog fields and the preview (~10% of ingest CPU).
        ds = read_dataset(data, max_decoded_bytes=max_decoded_bytes)
        metadata = self._dataset_metadata(ds, pseudonymizer)
        check_pixel_budget(ds, max_decoded_bytes)
        return metadata, lambda: DicomPixels(ds, max_decoded_bytes=max_decoded_bytes)

    def _dataset_metadata(self, ds: Dataset, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        require_pixels(ds)
        try:
            with quiet():
                return self._metadata(ds, pseudonymizer)
        except ImageError:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise CorruptImage(f"unreadable DICOM header: {safe_message(exc)}") from exc

    def _metadata(self, ds: Dataset, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        rows = as_number(get_value(ds, "Rows"), int)
        columns = as_number(get_value(ds, "Columns"), int)
        if not rows or not columns:
            raise CorruptImage("unreadable DICOM header: pixel data without Rows/Columns")
        patient_id = get_text(ds, "PatientID")
        ts = ds.file_meta.TransferSyntaxUID
        sop_class = _uid(ds, "SOPClassUID", checked=False)
        attributes: dict[str, Any] = {"transfer_syntax_uid": str(ts)}
        if sop_class:
            attributes["sop_class_name"] = UID(sop_class).name
        for keyword in _ATTRIBUTE_KEYWORDS:
            value = get_value(ds, keyword)
            if value is not None:
                converted = _json_value(value)
                if converted is not None:
                    attributes[keyword] = converted
        for keyword, name in _PATIENT_CHARACTERISTICS.items():
            text = get_text(ds, keyword)
            if text:
                attributes[name] = text
        modality = get_text(ds, "Modality")
        burned_in = may_show_burned_in(ds, modality, sop_class)
        attributes["burned_in_annotation"] = "YES" if burned_in else "NO"
        row_mm, col_mm = pixel_spacing(ds)
        return ImageMetadata(
            format=ImageFormat.DICOM,
            rows=rows,
            columns=columns,
            frames=frame_count(ds),
            modality=modality,
            patient_pseudonym=pseudonymizer(patient_id) if patient_id else None,
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            sop_class_uid=sop_class,
            series_number=as_number(get_value(ds, "SeriesNumber"), int),
            series_description=get_text(ds, "SeriesDescription"),
            instance_number=as_number(get_value(ds, "InstanceNumber"), int),
            body_part=get_text(ds, "BodyPartExamined"),
            view_position=get_text(ds, "ViewPosition"),
            manufacturer=get_text(ds, "Manufacturer"),
            manufacturer_model=get_text(ds, "ManufacturerModelName"),
            pixel_spacing_row=row_mm,
            pixel_spacing_col=col_mm,
            slice_thickness=as_number(
                value_or_functional(ds, "SliceThickness", "PixelMeasuresSequence")
            ),
            slice_location=as_number(get_value(ds, "SliceLocation")),
            slice_position=_slice_position(ds),
            photometric=get_text(ds, "PhotometricInterpretation"),
            bits_allocated=as_number(get_value(ds, "BitsAllocated"), int),
            bits_stored=as_number(get_value(ds, "BitsStored"), int),
            transfer_syntax=transfer_syntax_name(ts),
            attributes=attributes,
        )

    def open_pixels(
        self, data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    ) -> PixelSource:
        ds = read_dataset(data, max_decoded_bytes=max_decoded_bytes)
        return DicomPixels(ds, max_decoded_bytes=max_decoded_bytes)
