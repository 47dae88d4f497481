"""Request and response models of POST /predict and GET /images/{id}/predictions
(api/routes/predict.py), so /openapi.json describes them (the api/schemas.py pattern)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from radlake.api.schemas import Box, Uploaded
from radlake.inference.runner import DEFAULT_IOU, DEFAULT_SCORE

MODEL_REF = (
    "A model: NAME (its production alias, else its newest version), NAME:VERSION or NAME@ALIAS"
)


class PredictFields(BaseModel):
    """What a prediction request names besides an uploaded file."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description=MODEL_REF)
    image_id: int | None = Field(
        default=None, ge=1, le=2**62, description="A catalogued image (or upload a file)"
    )
    score_threshold: float = Field(default=DEFAULT_SCORE, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=DEFAULT_IOU, ge=0.0, le=1.0, description="NMS IoU")


class PredictById(PredictFields):
    """The JSON body: a catalogued image and a model. Strict: JSON has types, so true
    or "0.5" is not a threshold (a form's fields are all text, read leniently)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_id: int = Field(ge=1, le=2**62, description="A catalogued image")


class Detection(BaseModel):
    prediction_id: int = Field(
        description="Names the box in feedback (POST /predictions/{id}/feedback)"
    )
    class_id: int
    class_name: str
    score: float
    box: Box = Field(description="In the stored image's pixels")


class PredictionResult(BaseModel):
    """One run: the boxes, the run id, the model version and the latency."""

    image_id: int
    run_id: int
    model: str
    version: int
    latency_ms: float = Field(description="Decode, preprocessing, the model and NMS")
    width: int = Field(description="The stored image's width in pixels")
    height: int
    score_threshold: float
    iou_threshold: float
    uploaded: Uploaded | None = Field(description="The upload, when one was sent")
    detections: list[Detection]


class StoredBox(BaseModel):
    prediction_id: int
    class_name: str
    score: float
    box: Box


class ImageRunItem(BaseModel):
    """A model version's latest run on the image and its boxes."""

    run_id: int
    model: str
    version: int
    model_version_id: int
    score_threshold: float
    iou_threshold: float
    latency_ms: float
    caller: str | None = Field(description="Who ran it; curators and admins only")
    created_at: str
    predictions: list[StoredBox]


class ImagePredictions(BaseModel):
    """Predictions, never labels: GET /images/{id}/labels has the ground truth."""

    image_id: int
    runs: list[ImageRunItem]
