"""Which images changed since the last build: the watermark.

The catalog's rows are append-mostly and every table has an increasing integer id,
so the watermark is, per table, the largest id a build has seen: a new image, label,
rendition, inference run (its predictions are inserted with it), feedback row,
dataset version (its members come with it) or retrain set (it names a label set)
has a larger id, and its image's document is rewritten. A change of mind on a
feedback row updates the row in place, but it leaves an audit event
(`feedback.change`, catalog/feedback.save_feedback), whose id is watched instead.
Ids, not created_at times: ids are unique and need no clock, and rows filed with
their own past time (an imported feedback file) still count.

An id is taken when a row is inserted, not when its transaction commits: on
PostgreSQL or MariaDB a long transaction may commit id 100 after a build has
already seen 101. So a build also notes the ids it did not see among the last
GAP_WINDOW ids below the newest (rolled back, deleted, or not yet committed) and
looks for them again in every later build for PENDING_SECONDS; one that appears
then counts as new. SQLite has one writer at a time, so there the list only holds
rolled-back or deleted ids.

Not detectable without a schema change (no updated_at, no tombstones): labels
deleted without a replacement (a source reloaded with fewer findings for an image),
image rows updated in place (a dataset adapter claiming images first ingested as a
plain folder) and deleted images. `radlake warehouse build --full` picks those up.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from radlake.catalog.db import batches
from radlake.catalog.feedback_models import Feedback, RetrainSet
from radlake.catalog.inference_models import InferenceRun
from radlake.catalog.models import (
    AuditEvent,
    DatasetMember,
    DatasetVersion,
    Image,
    Label,
    Rendition,
)
from radlake.domain import LabelOrigin

GAP_WINDOW = 10_000  # ids below the newest one seen that are checked for late commits
PENDING_SECONDS = 24 * 3600.0  # how long an unseen id is looked for again
MAX_PENDING = 64  # ranges of unseen ids kept per table (the newest)
FEEDBACK_CHANGE = "feedback.change"


@dataclass(slots=True)
class Mark:
    """One table's watermark: the largest id seen and the ranges of ids not seen."""

    max: int = 0
    # (first id, last id, epoch seconds when first missed)
    pending: list[tuple[int, int, float]] = field(default_factory=list)


Watermark = dict[str, Mark]


def watermark_from_dict(found: dict[str, Any]) -> Watermark:
    return {
        table: Mark(int(mark["max"]), [(int(a), int(b), float(t)) for a, b, t in mark["pending"]])
        for table, mark in found.items()
    }


def watermark_as_dict(watermark: Watermark) -> dict[str, Any]:
    return {
        table: {"max": mark.max, "pending": [list(r) for r in mark.pending]}
        for table, mark in sorted(watermark.items())
    }


ImagesOf = Callable[[Session, Sequence[Any]], set[int]]


@dataclass(frozen=True, slots=True)
class Tracked:
    """A watched table: its id column, the columns read of new rows, and how those
    rows name the images whose documents they change."""

    id: InstrumentedAttribute[int]
    columns: tuple[InstrumentedAttribute[Any], ...]
    images_of: ImagesOf


def _second_column(session: Session, rows: Sequence[Any]) -> set[int]:
    return {row[1] for row in rows if row[1] is not None}


def _changed_feedback(session: Session, rows: Sequence[Any]) -> set[int]:
    ids = [
        int(target.removeprefix("feedback:"))
        for _, action, target in rows
        if action == FEEDBACK_CHANGE and target.removeprefix("feedback:").isdigit()
    ]
    found: set[int] = set()
    for chunk in batches(ids):
        found.update(session.scalars(select(Feedback.image_id).where(Feedback.id.in_(chunk))))
    return found


def _version_members(session: Session, rows: Sequence[Any]) -> set[int]:
    found: set[int] = set()
    for chunk in batches([row[0] for row in rows]):
        found.update(
            session.scalars(
                select(DatasetMember.image_id).where(DatasetMember.version_id.in_(chunk)).distinct()
            )
        )
    return found


def _retrain_labels(session: Session, rows: Sequence[Any]) -> set[int]:
    # A retrain set names its label rows' label set; the rows may have been seen
    # (and written) before the set's own row committed.
    found: set[int] = set()
    for chunk in batches([row[1] for row in rows]):
        found.update(
            image_id
            for image_id in session.scalars(
                select(Label.image_id)
                .where(Label.job_id.in_(chunk), Label.origin == LabelOrigin.FEEDBACK.value)
                .distinct()
            )
            if image_id is not None
        )
    return found


TRACKED: dict[str, Tracked] = {
    "image": Tracked(Image.id, (Image.id, Image.id), _second_column),
    "label": Tracked(Label.id, (Label.id, Label.image_id), _second_column),
    "rendition": Tracked(Rendition.id, (Rendition.id, Rendition.image_id), _second_column),
    "inference_run": Tracked(
        InferenceRun.id, (InferenceRun.id, InferenceRun.image_id), _second_column
    ),
    "feedback": Tracked(Feedback.id, (Feedback.id, Feedback.image_id), _second_column),
    "audit_event": Tracked(
        AuditEvent.id, (AuditEvent.id, AuditEvent.action, AuditEvent.target), _changed_feedback
    ),
    "dataset_version": Tracked(DatasetVersion.id, (DatasetVersion.id,), _version_members),
    "retrain_set": Tracked(RetrainSet.id, (RetrainSet.id, RetrainSet.job_id), _retrain_labels),
}


@dataclass(frozen=True, slots=True)
class Changes:
    """What a build must write: image ids (None: every image) and the watermark
    the build leaves behind; new_images counts images no earlier build wrote."""

    image_ids: set[int] | None
    watermark: Watermark
    new_images: int


def scan_changes(session: Session, previous: Watermark | None, *, now: float) -> Changes:
    """The images whose documents a build writes, and the next watermark.

    previous None (a full build): every image, and a watermark at the newest rows.
    Read this before the documents: a row that commits in between is then in the
    documents but not the watermark, so it is written again next time (harmless),
    never the other way round.
    """
    watermark: Watermark = {}
    changed: set[int] = set()
    new_images = 0
    for table, tracked in TRACKED.items():
        mark = None if previous is None else previous.get(table, Mark())
        rows, watermark[table] = _scan(session, tracked, mark, now)
        if previous is not None:
            images = tracked.images_of(session, rows)
            changed |= images
            if table == "image":
                new_images = len(images)
    if previous is None:
        return Changes(None, watermark, 0)
    return Changes(changed, watermark, new_images)


def _scan(
    session: Session, tracked: Tracked, mark: Mark | None, now: float
) -> tuple[list[Any], Mark]:
    """New rows of one table (id above the mark, or in its pending ranges) and the
    table's next mark. A full build (mark None) reads only the last GAP_WINDOW ids,
    to note the gaps among them."""
    if mark is None:
        top = session.scalar(select(func.max(tracked.id))) or 0
        since, pending = max(0, top - GAP_WINDOW), []
    else:
        since = mark.max
        pending = [r for r in mark.pending if now - r[2] < PENDING_SECONDS]
    condition: ColumnElement[bool] = tracked.id > since
    if pending:
        condition = or_(condition, *(tracked.id.between(a, b) for a, b, _ in pending))
    rows = list(session.connection().execute(select(*tracked.columns).where(condition)))
    seen = sorted({row[0] for row in rows})
    top_seen = max(seen[-1] if seen else 0, since)
    still = [gap for a, b, t in pending for gap in _unseen(seen, a, b, t)]
    fresh = _unseen(seen, max(since, top_seen - GAP_WINDOW) + 1, top_seen, now)
    kept = sorted(still + fresh, key=lambda r: r[1])[-MAX_PENDING:]
    return rows, Mark(top_seen, kept)


def _unseen(seen: Sequence[int], first: int, last: int, at: float) -> list[tuple[int, int, float]]:
    """Ranges of [first, last] that hold no id of the sorted seen ids."""
    gaps: list[tuple[int, int, float]] = []
    start = first
    for found in _between(seen, first, last):
        if found > start:
            gaps.append((start, found - 1, at))
        start = found + 1
    if start <= last:
        gaps.append((start, last, at))
    return gaps


def _between(seen: Sequence[int], first: int, last: int) -> Iterable[int]:
    lo = bisect.bisect_left(seen, first)
    hi = bisect.bisect_right(seen, last)
    return seen[lo:hi]
