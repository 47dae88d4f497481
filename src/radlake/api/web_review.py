"""Reviewing on the web page (issue 11): the image page's review panel and the queue
page /ui/review.

The image page shows each model version's latest run; for reviewers, static/review.js
adds Accept, Reject and Correct to each predicted box (a class from the model's list,
the box moved, resized or drawn again) and Add box (drawn on the image), each posted to
the feedback routes (api/routes/feedback.py) with the session cookie and the page's
CSRF token, so the page files exactly what the API would. Every role sees the
feedback already filed, the simulated flag marked and the reviewer's name as
api/routes/feedback.py shows it. The queue page lists what a model version left to
review, most uncertain first, with links to the image pages.
"""

from __future__ import annotations

from typing import Annotated, Any, cast, get_args

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy.orm import Session

from radlake.api.deps import Caller, DbSession
from radlake.api.routes.feedback import feedback_item, visible_queue
from radlake.api.web import _cookie_caller, _page, _to_signin
from radlake.api.web_predict import model_choices
from radlake.auth import Role
from radlake.catalog.feedback import QueueOrder, feedback_records
from radlake.catalog.inference_models import ModelVersion
from radlake.catalog.model_registry import resolve_version
from radlake.inference.errors import InferenceError

router = APIRouter(include_in_schema=False)
REVIEW_ROLE = Role.REVIEWER  # the role the feedback routes ask for
QUEUE_ORDERS: tuple[str, ...] = get_args(QueueOrder)
VERDICT_WORDS = {
    "accept": "accepted",
    "reject": "rejected",
    "correct": "corrected",
    "add": "added",
    "none": "nothing missed",
}


def review_context(
    session: Session, *, caller: Caller, image_id: int, runs: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """What the image page's review panel shows: the image's feedback as caller may
    see it and, for reviewers, each run's classes and the caller's own verdicts. None
    without runs (nothing was predicted, or the pixels are withheld)."""
    if not runs:
        return None
    feedback = []
    mine: dict[int, dict[str, Any]] = {}  # prediction id -> the caller's verdict
    added: list[dict[str, Any]] = []  # the caller's added boxes
    for record in feedback_records(session, image_id=image_id):
        item = feedback_item(record, caller.role) | {"word": VERDICT_WORDS[record.verdict]}
        feedback.append(item)
        if record.reviewer == caller.name and not record.simulated:
            if record.verdict == "add":
                added.append(item)
            elif record.prediction_id is not None:
                mine[record.prediction_id] = item
    classes = {
        run["run_id"]: list(session.get_one(ModelVersion, run["model_version_id"]).class_names)
        for run in runs
    }
    return {
        "may_review": caller.role >= REVIEW_ROLE,
        "feedback": feedback,
        "sees_reviewers": caller.role >= Role.CURATOR,
        # For review.js: the run each box belongs to, its model's classes, what the
        # caller said already (the page shows it on load).
        "state": {
            "image_id": image_id,
            "runs": [
                {
                    "run_id": run["run_id"],
                    "version": f"{run['model']}:{run['version']}",
                    "classes": classes[run["run_id"]],
                }
                for run in runs
            ],
            "mine": {str(key): value for key, value in mine.items()},
            "added": added,
        },
    }


@router.get("/ui/review")
def review_page(
    request: Request,
    session: DbSession,
    model: Annotated[str | None, Query(max_length=200)] = None,
    order: Annotated[str, Query(max_length=20)] = "top_score",
    compare: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """The review queue of a model version, most uncertain first (reviewers)."""
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    if caller.role < REVIEW_ROLE:
        message = "Reviewing needs the reviewer role; your token is a viewer's."
        return _page(request, "error.html", caller, 403, message=message)
    models = model_choices(session)
    model = model or (models[0][0] if models else None)
    items: list[dict[str, Any]] = []
    error = None
    version_name = None
    if order not in QUEUE_ORDERS:
        error = f"order is top_score or disagreement, not {order[:20]!r}"
    elif model is not None:
        try:
            version = resolve_version(session, ref=model)
            other = resolve_version(session, ref=compare) if compare else None
            version_name = f"{version.model.name}:{version.version}"
            found = visible_queue(
                session,
                role=caller.role,
                model_version_id=version.id,
                order=cast(QueueOrder, order),
                other_version_id=None if other is None else other.id,
                limit=limit,
            )
            items = [item.as_dict() for item in found]
        except InferenceError as exc:  # no such model or version
            error = str(exc)
        except HTTPException as exc:  # the queue's 422: disagreement without compare
            error = str(exc.detail)
    return _page(
        request,
        "review.html",
        caller,
        models=models,
        model=model or "",
        version_name=version_name,
        order=order,
        compare=compare or "",
        items=items,
        error=error,
    )
