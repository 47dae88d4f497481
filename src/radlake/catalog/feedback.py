"""Reviewers' feedback on predictions: file a verdict, read it back, and order what is
left to review (issue 11).

A verdict names a recorded box (its prediction id) or, for a box the model missed, the
run the reviewer looked at. One reviewer has one verdict per box: saying it again
changes it (a reviewer may change their mind), so repeating a request is a no-op. The
same added box (run, reviewer, class, corners) is one row however often it is sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radlake.catalog.feedback_models import Feedback
from radlake.catalog.inference_models import InferenceRun, Model, ModelVersion, Prediction
from radlake.catalog.models import AuditEvent, Image, utcnow
from radlake.curation.agreement import iou
from radlake.domain import Box
from radlake.errors import RadlakeError

Verdict = Literal["accept", "reject", "correct", "add", "none"]
Channel = Literal["api", "web", "simulator", "import"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
QueueOrder = Literal["top_score", "disagreement"]
MIN_SIDE = 1.0  # pixels: a thinner box is a slip of the mouse, not a finding


class FeedbackError(RadlakeError, ValueError):
    """A verdict that cannot be recorded as asked (wrong class, a box outside the
    image, a correction that changes nothing, no run to add a box to)."""


class FeedbackNotFound(RadlakeError, LookupError):
    """No such prediction, run or image."""


@dataclass(frozen=True, slots=True)
class Review:
    """What a reviewer says of one predicted box (accept, reject, correct)."""

    verdict: Verdict
    class_name: str | None = None
    box: Box | None = None


@dataclass(frozen=True, slots=True)
class Reviewer:
    """Who files feedback, through what, and whether a person did."""

    name: str
    channel: Channel
    simulated: bool = False
    at: datetime | None = None  # when: now unless imported with its own time


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A feedback row as plain values (what the API, CLI and lineage show)."""

    id: int
    image_id: int
    run_id: int
    prediction_id: int | None
    model: str
    version: int
    model_version_id: int
    verdict: str
    class_name: str | None
    box: Box | None
    confidence: float | None
    reviewer: str
    simulated: bool
    channel: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        box = self.box
        return {
            "id": self.id,
            "image_id": self.image_id,
            "run_id": self.run_id,
            "prediction_id": self.prediction_id,
            "model": self.model,
            "version": self.version,
            "model_version_id": self.model_version_id,
            "verdict": self.verdict,
            "class_name": self.class_name,
            "box": None if box is None else [box.x_min, box.y_min, box.x_max, box.y_max],
            "confidence": self.confidence,
            "reviewer": self.reviewer,
            "simulated": self.simulated,
            "channel": self.channel,
            "created_at": self.created_at.isoformat(),
        }


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()


def _check_label(
    session: Session, *, version: ModelVersion, image_id: int, class_name: str, box: Box
) -> None:
    """The class is one of the model's and the box lies inside the stored image."""
    if class_name not in version.class_names:
        raise FeedbackError(
            f"class {class_name[:100]!r} is not one of the model's: "
            f"{', '.join(version.class_names)}"
        )
    size = session.execute(select(Image.columns, Image.rows).where(Image.id == image_id)).first()
    width, height = (None, None) if size is None else size
    if not (box.x_min < box.x_max and box.y_min < box.y_max and box.x_min >= 0 <= box.y_min):
        raise FeedbackError("a box needs 0 <= x_min < x_max and 0 <= y_min < y_max")
    if box.x_max - box.x_min < MIN_SIDE or box.y_max - box.y_min < MIN_SIDE:
        raise FeedbackError("a box is at least 1 pixel wide and 1 pixel high")
    if width and height and (box.x_max > width or box.y_max > height):
        raise FeedbackError(f"the box leaves the {width} x {height} image")


def save_feedback(session: Session, row: dict[str, Any]) -> tuple[int, bool]:
    """Insert the row unless its fingerprint is there; else update it to these values.
    True when this call inserted it: of two identical requests at once, exactly one
    (the insert runs in a savepoint, so a clash undoes only itself)."""
    statement = select(Feedback).where(Feedback.fingerprint == row["fingerprint"])
    found = session.scalars(statement).first()
    if found is None:
        try:
            with session.begin_nested():
                session.execute(insert(Feedback).values(**row))
            return session.scalars(statement).one().id, True
        except IntegrityError:  # the same row was filed meanwhile: update it below
            # A locking read: MariaDB's repeatable read would show the snapshot of the
            # first read, from before the other request's row.
            found = session.scalars(statement.with_for_update()).one()
    was = (found.verdict, found.class_name, found.x_min, found.y_min, found.x_max, found.y_max)
    for key, value in row.items():
        setattr(found, key, value)
    now = (found.verdict, found.class_name, found.x_min, found.y_min, found.x_max, found.y_max)
    if was != now:  # a change of mind keeps one row; the audit log keeps what it was
        session.add(
            AuditEvent(
                actor=found.reviewer,
                action="feedback.change",
                target=f"feedback:{found.id}",
                detail={"was": list(was), "now": list(now)},
            )
        )
    session.flush()
    return found.id, False


def review_prediction(
    session: Session, *, prediction_id: int, review: Review, reviewer: Reviewer
) -> tuple[int, bool]:
    """Record (or change) reviewer's verdict on a predicted box; (feedback id, created).

    Raises:
        FeedbackNotFound: no such prediction.
        FeedbackError: 'add' (that names an image, not a box), accept or reject with a
            class or box, a correction that changes nothing, a class the model does not
            have, a box outside the image.
    """
    found = session.execute(
        select(Prediction, InferenceRun)
        .join(InferenceRun, Prediction.run_id == InferenceRun.id)
        .where(Prediction.id == prediction_id)
    ).first()
    if found is None:
        raise FeedbackNotFound(f"no prediction {prediction_id}")
    predicted, run = found
    version = session.get_one(ModelVersion, run.model_version_id)
    was = Box(predicted.x_min, predicted.y_min, predicted.x_max, predicted.y_max)
    class_name: str | None = predicted.class_name
    box: Box | None = was
    if review.verdict in ("add", "none"):
        raise FeedbackError(
            f"{review.verdict} names the image, not a box: POST /images/{{id}}/feedback"
        )
    if review.verdict in ("accept", "reject"):
        if review.class_name is not None or review.box is not None:
            raise FeedbackError(f"{review.verdict} takes no class or box: use correct")
        if review.verdict == "reject":
            class_name, box = None, None
    else:
        class_name = review.class_name or predicted.class_name
        box = review.box or was
        if class_name == predicted.class_name and box == was:
            raise FeedbackError("a correction needs a different class or box")
        _check_label(
            session, version=version, image_id=run.image_id, class_name=class_name, box=box
        )
    return save_feedback(
        session,
        feedback_row(
            image_id=run.image_id,
            run_id=run.id,
            prediction_id=predicted.id,
            version_id=version.id,
            verdict=review.verdict,
            class_name=class_name,
            box=box,
            confidence=predicted.score,
            reviewer=reviewer,
            fingerprint=_fingerprint("prediction", predicted.id, *_who(reviewer)),
        ),
    )


def _reviewed_run(
    session: Session, *, image_id: int, run_id: int | None, model_version_id: int | None
) -> InferenceRun:
    """The run a reviewer looked at: run_id, or model_version_id's latest on the image.

    Raises:
        FeedbackNotFound: no such image or run, or the run is of another image.
        FeedbackError: neither given, or no run of that version on the image yet.
    """
    if session.get(Image, image_id) is None:
        raise FeedbackNotFound(f"no image {image_id}")
    if run_id is not None:
        run = session.get(InferenceRun, run_id)
        if run is None or run.image_id != image_id:
            raise FeedbackNotFound(f"image {image_id} has no run {run_id}")
        return run
    if model_version_id is None:
        raise FeedbackError("name the run (run_id) or the model whose predictions you review")
    found = session.scalars(
        select(InferenceRun)
        .where(InferenceRun.image_id == image_id, InferenceRun.model_version_id == model_version_id)
        .order_by(InferenceRun.id.desc())
        .limit(1)
    ).first()
    if found is None:
        raise FeedbackError(
            f"the model has not run on image {image_id}: predict first, then review"
        )
    return found


def add_box(
    session: Session,
    *,
    image_id: int,
    run_id: int | None,
    model_version_id: int | None,
    class_name: str,
    box: Box,
    reviewer: Reviewer,
) -> tuple[int, bool]:
    """Record a box the model missed on a run of the image (run_id), or on the latest
    run of model_version_id there; (feedback id, created).

    Raises:
        FeedbackNotFound, FeedbackError: as _reviewed_run; also a class the model does
            not have, a box outside the image or under a pixel wide or high.
    """
    run = _reviewed_run(
        session, image_id=image_id, run_id=run_id, model_version_id=model_version_id
    )
    version = session.get_one(ModelVersion, run.model_version_id)
    _check_label(session, version=version, image_id=image_id, class_name=class_name, box=box)
    return _on_run(session, run, reviewer, class_name, box)


def confirm_nothing_missed(
    session: Session,
    *,
    image_id: int,
    run_id: int | None,
    model_version_id: int | None,
    reviewer: Reviewer,
) -> tuple[int, bool]:
    """Record that the reviewer found nothing (more) on the run than its boxes: an image
    where the model found nothing and nothing is there leaves the queue this way, and
    becomes a reviewed negative of a retraining set; (feedback id, created).

    Raises:
        FeedbackNotFound, FeedbackError: as _reviewed_run.
    """
    run = _reviewed_run(
        session, image_id=image_id, run_id=run_id, model_version_id=model_version_id
    )
    return _on_run(session, run, reviewer, None, None)


def _on_run(
    session: Session, run: InferenceRun, reviewer: Reviewer, class_name: str | None, box: Box | None
) -> tuple[int, bool]:
    """File an added box (class and box) or 'none' (neither) on a run."""
    verdict = "none" if box is None else "add"
    corners = () if box is None else (box.x_min, box.y_min, box.x_max, box.y_max)
    return save_feedback(
        session,
        feedback_row(
            image_id=run.image_id,
            run_id=run.id,
            prediction_id=None,
            version_id=run.model_version_id,
            verdict=verdict,
            class_name=class_name,
            box=box,
            confidence=None,
            reviewer=reviewer,
            fingerprint=_fingerprint(verdict, run.id, *_who(reviewer), class_name or "", *corners),
        ),
    )


def _who(reviewer: Reviewer) -> tuple[str, ...]:
    """The fingerprint's reviewer part: a simulator's verdict under a person's token is
    its own row, never an overwrite of the person's."""
    return (reviewer.name, "simulated") if reviewer.simulated else (reviewer.name,)


def feedback_row(
    *,
    image_id: int,
    run_id: int,
    prediction_id: int | None,
    version_id: int,
    verdict: str,
    class_name: str | None,
    box: Box | None,
    confidence: float | None,
    reviewer: Reviewer,
    fingerprint: str,
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "run_id": run_id,
        "prediction_id": prediction_id,
        "model_version_id": version_id,
        "verdict": verdict,
        "class_name": class_name,
        "x_min": None if box is None else box.x_min,
        "y_min": None if box is None else box.y_min,
        "x_max": None if box is None else box.x_max,
        "y_max": None if box is None else box.y_max,
        "confidence": confidence,
        "reviewer": reviewer.name[:100],
        "simulated": reviewer.simulated,
        "channel": reviewer.channel,
        "fingerprint": fingerprint,
        "created_at": reviewer.at or utcnow(),
    }


def feedback_records(
    session: Session,
    *,
    image_id: int | None = None,
    model_version_id: int | None = None,
    feedback_ids: Sequence[int] | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[FeedbackRecord]:
    """Feedback rows of an image, a model version or given ids, oldest first (newest
    first when asked: a limit then keeps the latest)."""
    order = (
        (Feedback.created_at.desc(), Feedback.id.desc())
        if newest_first
        else (
            Feedback.created_at,
            Feedback.id,
        )
    )
    statement = (
        select(Feedback, Model.name, ModelVersion.version)
        .join(ModelVersion, Feedback.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .order_by(*order)
    )
    if image_id is not None:
        statement = statement.where(Feedback.image_id == image_id)
    if model_version_id is not None:
        statement = statement.where(Feedback.model_version_id == model_version_id)
    if feedback_ids is not None:
        statement = statement.where(Feedback.id.in_(feedback_ids))
    if since is not None:
        statement = statement.where(Feedback.created_at >= since)
    if limit is not None:
        statement = statement.limit(limit)
    return [_record(row, name, number) for row, name, number in session.execute(statement)]


def _record(row: Feedback, model: str, version: int) -> FeedbackRecord:
    corners = (row.x_min, row.y_min, row.x_max, row.y_max)
    return FeedbackRecord(
        id=row.id,
        image_id=row.image_id,
        run_id=row.run_id,
        prediction_id=row.prediction_id,
        model=model,
        version=version,
        model_version_id=row.model_version_id,
        verdict=row.verdict,
        class_name=row.class_name,
        box=None if None in corners else Box(*corners),  # type: ignore[arg-type]
        confidence=row.confidence,
        reviewer=row.reviewer,
        simulated=row.simulated,
        channel=row.channel,
        created_at=row.created_at,
    )


@dataclass(frozen=True, slots=True)
class QueueItem:
    """An image waiting for review, with why it is where it is in the queue."""

    image_id: int
    run_id: int
    boxes: int
    top_score: float | None  # None: the model found nothing there
    disagreement: float | None  # 1 - mean best IoU against the other version's boxes

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "run_id": self.run_id,
            "boxes": self.boxes,
            "top_score": self.top_score,
            "disagreement": self.disagreement,
        }


def _latest_runs(model_version_id: int) -> Any:
    """Per image, the id of the version's latest run there (a subquery)."""
    return (
        select(InferenceRun.image_id.label("image_id"), func.max(InferenceRun.id).label("run_id"))
        .where(InferenceRun.model_version_id == model_version_id)
        .group_by(InferenceRun.image_id)
        .subquery()
    )


def _feedback_on(image_id: Any, model_version_id: Any) -> Any:
    """Feedback on an image for a model version: what takes an image off the queue."""
    return select(Feedback.id).where(
        Feedback.image_id == image_id, Feedback.model_version_id == model_version_id
    )


def review_queue(
    session: Session,
    *,
    model_version_id: int,
    order: QueueOrder = "top_score",
    other_version_id: int | None = None,
    limit: int = 50,
) -> list[QueueItem]:
    """Images the version predicted that nobody reviewed yet, most uncertain first:
    lowest top score (an image where the model found nothing comes first), or, with
    order 'disagreement', most disagreement with other_version_id's latest boxes there.

    Raises:
        FeedbackError: 'disagreement' without another version.
    """
    latest = _latest_runs(model_version_id)
    reviewed = _feedback_on(latest.c.image_id, model_version_id)
    top = func.max(Prediction.score)
    statement = (
        select(latest.c.image_id, latest.c.run_id, func.count(Prediction.id), top)
        .outerjoin(Prediction, Prediction.run_id == latest.c.run_id)
        .where(~reviewed.exists())
        .group_by(latest.c.image_id, latest.c.run_id)
    )
    if order == "top_score":
        # No box first (coalesce to -1), then lowest top score; image id breaks ties.
        rows = session.execute(
            statement.order_by(func.coalesce(top, -1.0), latest.c.image_id).limit(limit)
        ).all()
        return [QueueItem(i, r, n, s, None) for i, r, n, s in rows]
    if other_version_id is None:
        raise FeedbackError("ordering by disagreement needs the other model version")
    candidates = session.execute(statement).all()
    other = _latest_runs(other_version_id)
    ran = set(
        session.scalars(
            select(other.c.image_id).where(other.c.image_id.in_([row[0] for row in candidates]))
        )
    )
    theirs = _boxes_by_image(
        session,
        select(other.c.image_id, Prediction)
        .join(Prediction, Prediction.run_id == other.c.run_id)
        .where(other.c.image_id.in_([row[0] for row in candidates])),
    )
    ours = _boxes_by_image(
        session,
        select(InferenceRun.image_id, Prediction)
        .join(Prediction, Prediction.run_id == InferenceRun.id)
        .where(InferenceRun.id.in_([row[1] for row in candidates])),
    )
    # Where the other version never ran there is nothing to disagree with: those
    # images come last, with no figure, rather than first as total disagreement.
    items = [
        QueueItem(
            i, r, n, s, _disagreement(ours.get(i, []), theirs.get(i, [])) if i in ran else None
        )
        for i, r, n, s in candidates
    ]
    items.sort(
        key=lambda item: (item.disagreement is None, -(item.disagreement or 0.0), item.image_id)
    )
    return items[:limit]


def _boxes_by_image(session: Session, statement: Any) -> dict[int, list[tuple[str, Box]]]:
    found: dict[int, list[tuple[str, Box]]] = {}
    for image_id, row in session.execute(statement):
        box = Box(row.x_min, row.y_min, row.x_max, row.y_max)
        found.setdefault(image_id, []).append((row.class_name, box))
    return found


def _disagreement(ours: list[tuple[str, Box]], theirs: list[tuple[str, Box]]) -> float:
    """1 - the mean, over both versions' boxes, of each box's best same-class IoU in the
    other version (0: the same boxes; 1: nothing in common; 0 when neither found any)."""
    if not ours and not theirs:
        return 0.0

    def best(box: tuple[str, Box], others: list[tuple[str, Box]]) -> float:
        return max((iou(box[1], o[1]) for o in others if o[0] == box[0]), default=0.0)

    scores = [best(b, theirs) for b in ours] + [best(b, ours) for b in theirs]
    return 1.0 - sum(scores) / len(scores)


def queue_sizes(session: Session) -> dict[int, int]:
    """Per model version (id), the images review_queue would list: those it predicted
    that have no feedback on that version yet."""
    reviewed = _feedback_on(InferenceRun.image_id, InferenceRun.model_version_id)
    rows = session.execute(
        select(InferenceRun.model_version_id, func.count(func.distinct(InferenceRun.image_id)))
        .where(~reviewed.exists())
        .group_by(InferenceRun.model_version_id)
    )
    return {int(version): int(n) for version, n in rows}


def reviewed_runs(session: Session, *, model_version_id: int) -> dict[int, int]:
    """Per image, the newest run of the version that has feedback (image id -> run id)."""
    return {
        image_id: run_id
        for image_id, run_id in session.execute(
            select(Feedback.image_id, func.max(Feedback.run_id))
            .where(Feedback.model_version_id == model_version_id)
            .group_by(Feedback.image_id)
        )
    }
