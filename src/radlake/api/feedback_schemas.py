"""Request and response models of reviewers' feedback (api/routes/feedback.py, issue 11),
so /openapi.json describes them (the api/schemas.py pattern).

Bodies are strict (JSON has types: true is not a coordinate, "3" is not a number),
finite (NaN and Infinity are no pixel) and closed (an unknown key is a 422: a typo of
"class_name" would have accepted the model's class silently).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from radlake.api.predict_schemas import MODEL_REF
from radlake.api.schemas import Box

# Far beyond any stored image; the catalog checks the image's own size.
MAX_COORDINATE = 1_000_000.0
SIMULATED = "Filed by a simulator, not a person (marked so wherever it is shown)"
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Corners(BaseModel):
    """A box in the stored image's pixels: 0 <= x_min < x_max <= width, the same in y."""

    model_config = _STRICT

    x_min: float = Field(ge=0, le=MAX_COORDINATE)
    y_min: float = Field(ge=0, le=MAX_COORDINATE)
    x_max: float = Field(ge=0, le=MAX_COORDINATE)
    y_max: float = Field(ge=0, le=MAX_COORDINATE)


class ReviewIn(BaseModel):
    """A verdict on one predicted box. accept and reject take nothing else; correct
    takes a class, a box or both (what it leaves out stays the model's)."""

    model_config = _STRICT

    verdict: Literal["accept", "reject", "correct"]
    class_name: str | None = Field(
        default=None, min_length=1, max_length=100, description="correct: the right class"
    )
    box: Corners | None = Field(default=None, description="correct: the right box")
    simulated: bool = Field(default=False, description=SIMULATED)


class AddBoxIn(BaseModel):
    """On the run the reviewer looked at (run_id, or model: its latest run on the image;
    one of the two): add, a box the model missed (class_name and box); or none, nothing
    (more) to find there (neither), which is how an image where the model found nothing
    and nothing is there leaves the review queue."""

    model_config = _STRICT

    verdict: Literal["add", "none"] = "add"
    class_name: str | None = Field(
        default=None, min_length=1, max_length=100, description="add: one of the model's"
    )
    box: Corners | None = Field(default=None, description="add: the missed box")
    run_id: int | None = Field(default=None, ge=1, le=2**62, description="The run reviewed")
    model: str | None = Field(default=None, min_length=1, max_length=200, description=MODEL_REF)
    simulated: bool = Field(default=False, description=SIMULATED)

    @model_validator(mode="after")
    def _label_matches_verdict(self) -> AddBoxIn:
        labelled = (self.class_name is not None, self.box is not None)
        if self.verdict == "add" and labelled != (True, True):
            raise ValueError("add needs class_name and box")
        if self.verdict == "none" and labelled != (False, False):
            raise ValueError("none takes no class_name or box")
        if (self.run_id is None) == (self.model is None):
            raise ValueError("name the run reviewed (run_id) or the model, one of the two")
        return self


class FeedbackItem(BaseModel):
    """One feedback row: the verdict, the label it yields, and whose it is."""

    id: int
    image_id: int
    run_id: int
    prediction_id: int | None = Field(description="None for an added box")
    model: str
    version: int
    model_version_id: int
    verdict: Literal["accept", "reject", "correct", "add", "none"]
    class_name: str | None = Field(description="The label it yields; None for reject, none")
    box: Box | None = Field(description="In the stored image's pixels; None for reject, none")
    confidence: float | None = Field(description="The model's score of the reviewed box")
    reviewer: str | None = Field(
        description="Who: for curators and admins, and in the answer to the reviewer's own write"
    )
    simulated: bool
    channel: str = Field(description="api, web, simulator or import")
    created_at: str


class ImageFeedback(BaseModel):
    """Feedback on an image's predictions, oldest first."""

    image_id: int
    feedback: list[FeedbackItem]


class QueueEntry(BaseModel):
    image_id: int
    run_id: int = Field(description="The version's latest run on the image")
    boxes: int
    top_score: float | None = Field(description="None: the model found nothing there")
    disagreement: float | None = Field(
        description="1 - mean best IoU against the compared version's boxes (order "
        "disagreement only; None where that version never ran: those come last)"
    )


class ReviewQueue(BaseModel):
    """Images the version predicted that nobody reviewed yet, most uncertain first."""

    model: str
    version: int
    order: Literal["top_score", "disagreement"]
    compare: str | None = Field(description="The other version, as model:version")
    items: list[QueueEntry]
