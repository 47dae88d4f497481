"""DICOM: pydicom with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE).

Headers are parsed once; pixels are decoded only to render, one frame at a time.
Direct identifiers are never copied out: the PatientID leaves this module only as a
keyed pseudonym (see deid.py).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import IS, DSfloat, PersonName

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import (
    CorruptImage,
    ImageError,
    NoPixelData,
    RenderError,
    UndecodableImage,
)
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import FloatArray, PixelSource, VoiTransform, Window
from radlake.imaging.reader import ImageReader

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = {"MONOCHROME1", "MONOCHROME2"}
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
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _safe_message(exc: BaseException) -> str:
    # Decoder messages may quote element values; drop quoted text so no patient
    # data can reach a quarantine reason or a log line.
    text = _QUOTED.sub("'…'", str(exc)).strip() or type(exc).__name__
    return text[:200]


@contextmanager
def _quiet() -> Iterator[None]:
    # pydicom warns about non-conformant values; those warnings may quote values.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value is treated as absent, not fatal
        return None
    if value is None or value == "":
        return None
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(item) for item in value)
    return str(value).strip() or None


def _number(value: Any, kind: type[float] | type[int] = float) -> Any:
    if isinstance(value, MultiValue | list):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        return None


def _functional(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """An attribute from the Enhanced IOD functional groups: per-frame, then shared."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = _get(ds, groups_keyword)
        if groups is None or index >= len(groups):
            continue
        items = _get(groups[index], sequence)
        if items:
            value = _get(items[0], keyword)
            if value is not None:
                return value
    return None


def _attr(ds: Dataset, keyword: str, sequence: str, frame: int = 0) -> Any:
    value = _get(ds, keyword)
    return value if value is not None else _functional(ds, frame, sequence, keyword)


def _slice_position(ds: Dataset) -> float | None:
    """Position along the slice normal (mm): sorts a series in space, not in time."""
    position = _attr(ds, "ImagePositionPatient", "PlanePositionSequence")
    orientation = _attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    try:
        ipp = np.array([float(v) for v in position], dtype=np.float64)
        iop = np.array([float(v) for v in orientation], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return round(float(np.dot(ipp, normal)), 4)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = _get(meta, "TransferSyntaxUID") if meta is not None else None
    if uid is not None:
        return UID(str(uid))
    # No meta header (raw datasets): what the parser found tells the encoding.
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM object from bytes (with or without the preamble).

    Raises:
        CorruptImage: the header cannot be parsed (truncated, malformed).
    """
    try:
        with _quiet():
            ds = dcmread(io.BytesIO(data), force=True)
            ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "corrupt"
        raise CorruptImage(f"unreadable DICOM header: {_safe_message(exc)}") from exc
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS) and "SOPClassUID" not in ds:
        raise CorruptImage("unreadable DICOM header: no SOP Class UID and no pixel data")
    return ds


def _require_pixels(ds: Dataset) -> None:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = _get(ds, "SOPClassUID")
        kind = UID(str(sop)).name if sop is not None else "this object"
        raise NoPixelData(f"no pixel data: {kind} carries no image")


def _frame_count(ds: Dataset) -> int:
    frames = _number(_get(ds, "NumberOfFrames"), int)
    return frames if frames and frames > 0 else 1


def _pixel_spacing(ds: Dataset) -> tuple[float | None, float | None]:
    spacing = _attr(ds, "PixelSpacing", "PixelMeasuresSequence")
    if spacing is None:
        spacing = _get(ds, "ImagerPixelSpacing")  # projection radiography
    try:
        return float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return None, None


class DicomPixels(PixelSource):
    """Frames of a DICOM object after the modality LUT (per frame for Enhanced IODs)."""

    def __init__(self, ds: Dataset) -> None:
        with _quiet():
            self._setup(ds)

    def _setup(self, ds: Dataset) -> None:
        _require_pixels(ds)
        self._ds = ds
        self.frame_count = _frame_count(ds)
        photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
        self._photometric = photometric
        self.invert = photometric == "MONOCHROME1"
        self.is_color = photometric not in _GREY
        row_mm, col_mm = _pixel_spacing(ds)
        between = _number(_attr(ds, "SpacingBetweenSlices", "PixelMeasuresSequence")) or _number(
            _attr(ds, "SliceThickness", "PixelMeasuresSequence")
        )
        if row_mm and col_mm:
            self.spacing = (between or row_mm, row_mm, col_mm)

    def _decode(self, index: int | None) -> np.ndarray:
        ts = self._ds.file_meta.TransferSyntaxUID
        try:
            with _quiet():
                return pixel_array(self._ds, index=index)
        except (NotImplementedError, RuntimeError, ImportError) as exc:
            if ts.is_compressed:
                raise UndecodableImage(
                    f"undecodable transfer syntax {ts.name}: {_safe_message(exc)}"
                ) from exc
            raise CorruptImage(f"undecodable pixel data: {_safe_message(exc)}") from exc
        except Exception as exc:  # short buffers, bad codestreams, bad descriptors
            raise CorruptImage(f"truncated or malformed pixel data: {_safe_message(exc)}") from exc

    def _to_display_values(self, raw: np.ndarray, index: int) -> np.ndarray:
        if self.is_color:
            if self._photometric == "PALETTE COLOR":
                with _quiet():
                    raw = apply_color_lut(raw, self._ds)
            bits = int(raw.dtype.itemsize * 8)
            if raw.dtype != np.uint8:
                raw = (raw.astype(np.float64) / (2**bits - 1) * 255).astype(np.uint8)
            return raw
        slope = _functional(self._ds, index, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(
            self._ds, index, "PixelValueTransformationSequence", "RescaleIntercept"
        )
        if slope is not None and intercept is not None and "RescaleSlope" not in self._ds:
            return raw.astype(np.float64) * float(slope) + float(intercept)
        with _quiet():
            return np.asarray(apply_modality_lut(raw, self._ds), dtype=np.float64)

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self.frame_count:
            raise RenderError(f"expected a frame in 0..{self.frame_count - 1}, got {index}")
        raw = self._decode(index if self.frame_count > 1 else None)
        return self._to_display_values(raw, index)

    def volume(self) -> np.ndarray:
        raw = self._decode(None)
        if self.frame_count == 1:
            raw = raw[np.newaxis]
        return np.stack([self._to_display_values(raw[i], i) for i in range(len(raw))])

    def header_voi(self, index: int) -> Window | VoiTransform | None:
        ds = self._ds
        if _get(ds, "VOILUTSequence"):
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])

            def voi_lut(values: np.ndarray) -> FloatArray:
                with _quiet():
                    out = np.asarray(apply_voi(values, ds), dtype=np.float64)
                return out / float(2**bits - 1)

            return voi_lut
        center = _number(_attr(ds, "WindowCenter", "FrameVOILUTSequence", index))
        width = _number(_attr(ds, "WindowWidth", "FrameVOILUTSequence", index))
        if center is None or width is None or not width > 0:
            return None
        return Window(center, width)


class DicomReader(ImageReader):
    """DICOM Part 10 files and bare datasets, every transfer syntax pylibjpeg decodes."""

    formats: ClassVar[tuple[ImageFormat, ...]] = (ImageFormat.DICOM,)

    def read_metadata(self, data: bytes, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        return self._dataset_metadata(read_dataset(data), pseudonymizer)

    def read(
        self, data: bytes, pseudonymizer: Pseudonymizer
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        # One parse serves both the catalog fields and the preview (~10% of ingest CPU).
        ds = read_dataset(data)
        return self._dataset_metadata(ds, pseudonymizer), lambda: DicomPixels(ds)

    def _dataset_metadata(self, ds: Dataset, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        _require_pixels(ds)
        try:
            with _quiet():
                return self._metadata(ds, pseudonymizer)
        except ImageError:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise CorruptImage(f"unreadable DICOM header: {_safe_message(exc)}") from exc

    def _metadata(self, ds: Dataset, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        rows = _number(_get(ds, "Rows"), int)
        columns = _number(_get(ds, "Columns"), int)
        if not rows or not columns:
            raise CorruptImage("unreadable DICOM header: pixel data without Rows/Columns")
        patient_id = _text(ds, "PatientID")
        ts = ds.file_meta.TransferSyntaxUID
        sop_class = _text(ds, "SOPClassUID")
        attributes: dict[str, Any] = {"transfer_syntax_uid": str(ts)}
        if sop_class:
            attributes["sop_class_name"] = UID(sop_class).name
        for keyword in _ATTRIBUTE_KEYWORDS:
            value = _get(ds, keyword)
            if value is not None:
                converted = _json_value(value)
                if converted is not None:
                    attributes[keyword] = converted
        for keyword, name in _PATIENT_CHARACTERISTICS.items():
            text = _text(ds, keyword)
            if text:
                attributes[name] = text
        row_mm, col_mm = _pixel_spacing(ds)
        return ImageMetadata(
            format=ImageFormat.DICOM,
            rows=rows,
            columns=columns,
            frames=_frame_count(ds),
            modality=_text(ds, "Modality"),
            patient_pseudonym=pseudonymizer(patient_id) if patient_id else None,
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            sop_class_uid=sop_class,
            series_number=_number(_get(ds, "SeriesNumber"), int),
            series_description=_text(ds, "SeriesDescription"),
            instance_number=_number(_get(ds, "InstanceNumber"), int),
            body_part=_text(ds, "BodyPartExamined"),
            view_position=_text(ds, "ViewPosition"),
            manufacturer=_text(ds, "Manufacturer"),
            manufacturer_model=_text(ds, "ManufacturerModelName"),
            pixel_spacing_row=row_mm,
            pixel_spacing_col=col_mm,
            slice_thickness=_number(_attr(ds, "SliceThickness", "PixelMeasuresSequence")),
            slice_location=_number(_get(ds, "SliceLocation")),
            slice_position=_slice_position(ds),
            photometric=_text(ds, "PhotometricInterpretation"),
            bits_allocated=_number(_get(ds, "BitsAllocated"), int),
            bits_stored=_number(_get(ds, "BitsStored"), int),
            transfer_syntax=ts.name,
            attributes=attributes,
        )

    def open_pixels(self, data: bytes) -> PixelSource:
        return DicomPixels(read_dataset(data))
