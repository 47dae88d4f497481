"""Frozen values passed between layers: what a reader extracts, what ingest decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ImageFormat(StrEnum):
    """Formats recognised from content (never from the file name)."""

    DICOM = "dicom"
    NIFTI = "nifti"
    PNG = "png"
    JPEG = "jpeg"

    @property
    def extension(self) -> str:
        """The extension originals of this format get in the store."""
        return {"dicom": "dcm", "nifti": "nii", "png": "png", "jpeg": "jpg"}[self.value]


class Plane(StrEnum):
    """Orthogonal planes of a stack of frames or a volume."""

    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


@dataclass(frozen=True, slots=True)
class ImageMetadata:
    """Everything the catalog keeps about one image, free of direct identifiers.

    Patient identity is only the keyed pseudonym; names, birth dates and the raw
    PatientID never reach this object.
    """

    format: ImageFormat
    rows: int
    columns: int
    frames: int = 1
    slices: int = 1
    volumes: int = 1
    modality: str | None = None
    patient_pseudonym: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_number: int | None = None
    body_part: str | None = None
    view_position: str | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    pixel_spacing_row: float | None = None
    pixel_spacing_col: float | None = None
    slice_thickness: float | None = None
    slice_location: float | None = None
    slice_position: float | None = None
    photometric: str | None = None
    bits_allocated: int | None = None
    bits_stored: int | None = None
    transfer_syntax: str | None = None
    dtype: str | None = None
    orientation: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RenditionInfo:
    """A derived image kept in the store (the preview made at ingest, for now)."""

    name: str
    key: str
    width: int
    height: int
    window_center: float | None
    window_width: float | None


class LabelOrigin(StrEnum):
    """Where a label came from (DESIGN.md data model)."""

    GROUND_TRUTH = "ground_truth"
    PREDICTION = "prediction"
    FEEDBACK = "feedback"
    CONSENSUS = "consensus"


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixel coordinates of the stored image (x right, y down).

    Pixel coordinates are continuous: a box covering the whole W x H image is
    (0, 0, W, H).
    """

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


@dataclass(frozen=True, slots=True)
class Finding:
    """One label of one image: a class, and a box unless it is image-level."""

    image_id: int
    class_name: str
    box: Box | None = None
    reader: str | None = None
    origin: LabelOrigin = LabelOrigin.GROUND_TRUTH
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class CataloguedInput:
    """One decoded input, its blobs already in the store."""

    sha256: str
    size_bytes: int
    source_key: str
    original_key: str
    metadata: ImageMetadata
    renditions: tuple[RenditionInfo, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class RejectedInput:
    """One input that cannot be catalogued, and why."""

    source_key: str
    reason: str
    sha256: str | None = None
    size_bytes: int | None = None
    stored_key: str | None = None


# A name a user gives a new dataset or cohort: starts with a letter or digit. '..' and
# '.' were accepted and then could not be exported to the store (exports/<dataset>/...),
# '-x' reads as an option in the CLI, '..' as a cohort downloaded as '...zip'.
NEW_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
