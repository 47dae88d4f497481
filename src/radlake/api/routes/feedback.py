"""Reviewers' feedback on predictions (issue 11, "closing the loop"): a verdict on a
predicted box, a box the model missed, an image's feedback, and the queue of images
left to review.

Reviewers (and curators, admins) file feedback; any signed-in role reads it, with the
reviewer's name for curators and admins only (token names are people's names, as for
a run's caller) and the simulated flag always. Pixels a role may not see are not
reviewed by it either: the boxes are derived from them (POST /predict refuses them the
same way). A verdict is one transaction; the catalog makes a repeated request a no-op,
answered 200 instead of 201.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.api import schemas
from radlake.api.deps import Caller, DbSession, LakeDep, Reviewer, Viewer, _bearer, strict_query
from radlake.api.feedback_schemas import (
    AddBoxIn,
    Corners,
    FeedbackItem,
    ImageFeedback,
    ReviewIn,
    ReviewQueue,
)
from radlake.api.predict_schemas import MODEL_REF
from radlake.api.privacy import pixels_withheld, sees_paths, withheld
from radlake.api.routes.images import ImageId
from radlake.api.serialize import box_fields
from radlake.auth import Role
from radlake.catalog.db import run_transaction
from radlake.catalog.feedback import (
    Channel,
    FeedbackError,
    FeedbackNotFound,
    FeedbackRecord,
    QueueItem,
    QueueOrder,
    Review,
    add_box,
    confirm_nothing_missed,
    feedback_records,
    review_prediction,
    review_queue,
)
from radlake.catalog.feedback import Reviewer as FiledBy
from radlake.catalog.image_reads import pixel_columns
from radlake.catalog.inference_models import InferenceRun, Prediction
from radlake.catalog.model_registry import resolve_version
from radlake.catalog.models import Image
from radlake.domain import Box

router = APIRouter(tags=["feedback"], responses=schemas.errors(401, 422))
PredictionId = Annotated[
    int, Path(ge=1, le=2**62, description="A predicted box (prediction_id in its run)")
]
ModelQuery = Annotated[str, Query(min_length=1, max_length=200, description=MODEL_REF)]
_FILED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": FeedbackItem,
        "description": "The reviewer had said this already: the verdict was changed or "
        "repeated (no new row)",
    },
    201: {"description": "A new feedback row"},
}
# Both writes answer the row they filed: 201 new, 200 changed or repeated.
_FILING: dict[str, Any] = {
    "status_code": 201,
    "response_model": FeedbackItem,
    "responses": _FILED | schemas.errors(400, 403, 404),
}


def channel_of(request: Request) -> Channel:
    """'web' when the page's session cookie signed the request in, else 'api'
    (deps.get_caller reads a bearer token first and the cookie only without one)."""
    return "api" if _bearer(request) else "web"


def feedback_item(record: FeedbackRecord, role: Role, *, own: bool = False) -> dict[str, Any]:
    """A feedback row as role may see it: the reviewer's name for curators and admins,
    or for the reviewer who just filed it."""
    body = record.as_dict()
    body["box"] = None if record.box is None else box_fields(record.box)
    if not (own or sees_paths(role)):
        body["reviewer"] = None
    return body


def _box(corners: Corners | None) -> Box | None:
    if corners is None:
        return None
    return Box(corners.x_min, corners.y_min, corners.x_max, corners.y_max)


def _check_pixels(session: Session, caller: Caller, image_id: int) -> None:
    """404 for an unknown image; 403 when the caller may not see its pixels."""
    if pixels_withheld(caller.role, pixel_columns(session, image_id=image_id).attributes):
        raise withheld(image_id)


def _file(
    lake: LakeDep, response: Response, work: Callable[[Session], tuple[int, bool]]
) -> dict[str, Any]:
    """Run work in one transaction (again on a deadlock or a lock wait: two reviewers
    at once) and answer the row filed: 201 when it is new, 200 when the reviewer's
    earlier one was changed or repeated."""

    def once(session: Session) -> tuple[FeedbackRecord, bool]:
        try:
            feedback_id, created = work(session)
        except FeedbackNotFound as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except FeedbackError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        (record,) = feedback_records(session, feedback_ids=[feedback_id])
        return record, created

    record, created = run_transaction(lake.engine, once)
    response.status_code = 201 if created else 200
    return feedback_item(record, Role.VIEWER, own=True)


@router.post("/predictions/{prediction_id}/feedback", **_FILING)
def review(
    prediction_id: PredictionId,
    body: ReviewIn,
    caller: Reviewer,
    request: Request,
    response: Response,
    lake: LakeDep,
) -> dict[str, Any]:
    """Accept, reject or correct a predicted box (reviewers); saying it again changes
    the reviewer's verdict on that box."""
    filed_by = FiledBy(caller.name, channel_of(request), body.simulated)
    verdict = Review(body.verdict, body.class_name, _box(body.box))

    def work(session: Session) -> tuple[int, bool]:
        image_id = session.scalar(
            select(InferenceRun.image_id)
            .join(Prediction, Prediction.run_id == InferenceRun.id)
            .where(Prediction.id == prediction_id)
        )
        if image_id is not None:  # else review_prediction says there is no such box
            _check_pixels(session, caller, image_id)
        return review_prediction(
            session, prediction_id=prediction_id, review=verdict, reviewer=filed_by
        )

    return _file(lake, response, work)


@router.post("/images/{image_id}/feedback", **_FILING)
def add(
    image_id: ImageId,
    body: AddBoxIn,
    caller: Reviewer,
    request: Request,
    response: Response,
    lake: LakeDep,
) -> dict[str, Any]:
    """On the run reviewed (run_id) or the model's latest run on the image (reviewers):
    add a box the model missed (the same box again is the same row), or say there is
    nothing (more) to find there (verdict none)."""
    filed_by = FiledBy(caller.name, channel_of(request), body.simulated)
    box = _box(body.box)

    def work(session: Session) -> tuple[int, bool]:
        _check_pixels(session, caller, image_id)
        version_id = None if body.model is None else resolve_version(session, ref=body.model).id
        if body.verdict == "none":
            return confirm_nothing_missed(
                session,
                image_id=image_id,
                run_id=body.run_id,
                model_version_id=version_id,
                reviewer=filed_by,
            )
        assert body.class_name is not None and box is not None  # AddBoxIn checked
        return add_box(
            session,
            image_id=image_id,
            run_id=body.run_id,
            model_version_id=version_id,
            class_name=body.class_name,
            box=box,
            reviewer=filed_by,
        )

    return _file(lake, response, work)


@router.get(
    "/images/{image_id}/feedback",
    response_model=ImageFeedback,
    responses=schemas.errors(403, 404),
    dependencies=[Depends(strict_query)],
)
def image_feedback(
    image_id: ImageId,
    caller: Viewer,
    session: DbSession,
    model: Annotated[str | None, Query(max_length=200, description=MODEL_REF)] = None,
) -> dict[str, Any]:
    """The feedback on the image's predictions, oldest first (of one model version when
    model is given); simulated feedback is marked."""
    _check_pixels(session, caller, image_id)
    version_id = None if model is None else resolve_version(session, ref=model).id
    records = feedback_records(session, image_id=image_id, model_version_id=version_id)
    return {"image_id": image_id, "feedback": [feedback_item(r, caller.role) for r in records]}


def _withheld_ids(session: Session, role: Role, image_ids: Sequence[int]) -> set[int]:
    if sees_paths(role) or not image_ids:
        return set()
    rows = session.execute(select(Image.id, Image.attributes).where(Image.id.in_(image_ids)))
    return {image_id for image_id, attributes in rows if pixels_withheld(role, attributes)}


def visible_queue(
    session: Session,
    *,
    role: Role,
    model_version_id: int,
    order: QueueOrder,
    other_version_id: int | None,
    limit: int,
) -> list[QueueItem]:
    """review_queue without the images whose pixels role may not see (it could not
    review them): asks for more while some were left out and more may follow."""
    asked = limit
    while True:
        try:
            found = review_queue(
                session,
                model_version_id=model_version_id,
                order=order,
                other_version_id=other_version_id,
                limit=asked,
            )
        except FeedbackError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        hidden = _withheld_ids(session, role, [item.image_id for item in found])
        shown = [item for item in found if item.image_id not in hidden]
        if len(shown) >= limit or len(found) < asked:
            return shown[:limit]
        asked *= 4


@router.get(
    "/review/queue",
    response_model=ReviewQueue,
    responses=schemas.errors(403, 404),
    dependencies=[Depends(strict_query)],
)
def queue(
    caller: Reviewer,
    session: DbSession,
    model: ModelQuery,
    order: Annotated[
        QueueOrder,
        Query(description="top_score: lowest first, no box first; disagreement: with compare"),
    ] = "top_score",
    compare: Annotated[
        str | None, Query(min_length=1, max_length=200, description="The other model version")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Images the model version predicted that nobody reviewed yet, most uncertain first
    (reviewers)."""
    if compare is not None and order != "disagreement":
        raise HTTPException(422, detail="compare goes with order=disagreement")
    version = resolve_version(session, ref=model)
    other = None if compare is None else resolve_version(session, ref=compare)
    items = visible_queue(
        session,
        role=caller.role,
        model_version_id=version.id,
        order=order,
        other_version_id=None if other is None else other.id,
        limit=limit,
    )
    return {
        "model": version.model.name,
        "version": version.version,
        "order": order,
        "compare": None if other is None else f"{other.model.name}:{other.version}",
        "items": [item.as_dict() for item in items],
    }
