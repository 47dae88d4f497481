"""Response models: what each JSON answer holds, so /openapi.json describes it.

The routes build plain dicts (api/serialize.py, catalog/serialize.py) and FastAPI
checks each against its model here. Role filtering (api/privacy.py) changes values,
never shapes: a viewer's source_key is a file name rather than a path, a withheld
image has no preview link, so those fields are optional text. Models whose rows
carry every catalog column (ImageDetail) also accept columns added later.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """Every 4xx answer but a request validation error: one line saying why."""

    detail: str = Field(examples=["a valid token is required (Authorization: Bearer ...)"])


class ValidationIssue(BaseModel):
    """One rejected input: where it was, what was wrong (inputs quoted shortened)."""

    loc: list[str | int]
    msg: str
    type: str | None = None
    input: Any = None


class Rejected(BaseModel):
    """422: the request's parameters or body are not valid (a list, one per input),
    or the input was read and refused (one line)."""

    detail: str | list[ValidationIssue]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses."""
    return {
        code: {"model": Rejected if code == 422 else ErrorDetail} | _WHY[code] for code in codes
    }


_WHY: dict[int, dict[str, str]] = {
    400: {"description": "The body could not be parsed (not JSON, not multipart)"},
    401: {"description": "No valid token (Authorization: Bearer ...)"},
    403: {"description": "The token's role may not do or see this"},
    404: {"description": "Nothing with this id or name"},
    409: {"description": "Conflicts with what exists"},
    413: {"description": "The upload is larger than the server's limit"},
    422: {"description": "Invalid parameters or body, or an input that was refused"},
}


def binary(*media_types: str, description: str) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI `responses` entry for a 200 that is bytes, not JSON."""
    return {200: {"content": {media: {} for media in media_types}, "description": description}}


ZIP = binary("application/zip", description="A zip, streamed while it is made")


class Health(BaseModel):
    status: str
    version: str


class ImageItem(BaseModel):
    """An image in a listing, with a link to its rendering (None where withheld)."""

    id: int
    format: str
    modality: str | None
    manufacturer: str | None
    rows: int
    columns: int
    frames: int
    slices: int
    series_uid: str | None
    instance_number: int | None
    source_key: str | None = Field(description="Viewers see the file name only")
    view_position: str | None
    preview: str | None
    withheld: str | None = Field(description="Why the pixels are withheld, if they are")


class ImageListing(BaseModel):
    total: int = Field(description="Exact when total_exact, else a lower bound (10,000)")
    total_exact: bool
    images: list[ImageItem]
    next_cursor: int | None = Field(description="The cursor of the next page; None on the last")


class SeriesBrief(BaseModel):
    series_uid: str
    series_number: int | None
    description: str | None
    modality: str | None


class RenditionInfo(BaseModel):
    name: str
    width: int
    height: int
    window_center: float | None
    window_width: float | None


class ImageDetail(BaseModel):
    """Every catalogued field of one image but its store keys."""

    model_config = ConfigDict(extra="allow")  # columns added by later migrations

    id: int
    sha256: str
    size_bytes: int
    format: str
    source_id: int
    source_key: str | None = Field(description="Viewers see the file name only")
    series_id: int | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    instance_number: int | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    manufacturer: str | None
    manufacturer_model: str | None
    rows: int
    columns: int
    frames: int
    slices: int
    volumes: int
    pixel_spacing_row: float | None
    pixel_spacing_col: float | None
    slice_thickness: float | None
    slice_location: float | None
    slice_position: float | None
    photometric: str | None
    bits_allocated: int | None
    bits_stored: int | None
    transfer_syntax: str | None
    dtype: str | None
    orientation: str | None
    attributes: dict[str, Any]
    job_id: int | None
    created_at: datetime
    source: str | None
    series: SeriesBrief | None
    study_uid: str | None
    patient_pseudonym: str | None
    renditions: list[RenditionInfo]
    withheld: str | None


class Box(BaseModel):
    """A box in the original image's pixel coordinates."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


class LabelItem(BaseModel):
    id: int
    class_name: str
    reader: str | None
    origin: str = Field(examples=["ground_truth", "prediction", "feedback"])
    confidence: float | None
    box: Box | None = Field(description="None for an image-level finding")


class ImageLabels(BaseModel):
    image_id: int
    labels: list[LabelItem]


class Uploaded(BaseModel):
    id: int
    sha256: str
    format: str
    modality: str | None
    already_present: bool


class SeriesImages(BaseModel):
    series_uid: str
    modality: str | None
    description: str | None
    series_number: int | None
    images: list[ImageItem]


class StudySeries(BaseModel):
    series_uid: str
    modality: str | None
    images: list[ImageItem]


class StudyImages(BaseModel):
    study_uid: str
    series: list[StudySeries]


class JobItem(BaseModel):
    id: int
    kind: str
    status: str
    parameters: dict[str, Any] | None = Field(description="Viewers see file names, not paths")
    counts: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    error: str | None


class QuarantineItem(BaseModel):
    id: int
    source: str | None
    source_key: str | None = Field(description="Viewers see the file name only")
    reason: str
    sha256: str | None
    size_bytes: int | None
    stored_key: str | None
    job_id: int | None
    created_at: datetime
    resolved_at: datetime | None


class Stats(BaseModel):
    """Images in all, and counts by modality, view, format, source, class and split."""

    model_config = ConfigDict(populate_by_name=True)

    images: int
    modality: dict[str, int]
    view: dict[str, int]
    format: dict[str, int]
    source: dict[str, int]
    class_: dict[str, int] = Field(alias="class", description="Ground-truth classes")
    split: dict[str, int]


class AuditItem(BaseModel):
    id: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    created_at: datetime


class SavedCohort(BaseModel):
    name: str
    filter: dict[str, Any]


class CohortItem(BaseModel):
    name: str
    filter: dict[str, Any]
    created_by: str
    created_at: datetime


class VersionInfo(BaseModel):
    """A dataset version: selection, split spec, seed, label set, split counts, hash."""

    version: int
    selection: dict[str, Any]
    split_spec: Any
    seed: int
    label_set: str
    fusion: dict[str, Any] | None
    classes: list[Any]
    splits: dict[str, Any]
    leakage: dict[str, Any]
    warnings: list[str] = Field(
        default_factory=list, description="Why a split is empty or smaller than asked"
    )
    manifest_hash: str
    created_at: datetime


class DatasetItem(BaseModel):
    name: str
    versions: list[VersionInfo]


class _Named(BaseModel):
    name: str


class _NamedCreated(BaseModel):
    name: str
    created: bool = Field(description="False when the newest version was returned unchanged")


# VersionInfo listed first: pydantic puts the later base's fields first, so the answer
# reads name (, created), then the version's fields, as it always has.
class DatasetVersion(VersionInfo, _Named):
    """One version of the named dataset."""


class CreatedVersion(VersionInfo, _NamedCreated):
    """The version made, or the newest one when nothing changed."""
