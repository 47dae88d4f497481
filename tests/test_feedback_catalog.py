"""Feedback in the catalog (issue 11), on each backend: an image where the model found
nothing leaves the review queue by a 'none' verdict and becomes a reviewed negative; a
simulated verdict under a person's name never overwrites theirs; a change of mind is
audited; the disagreement order puts images the other version never saw last; a box
under a pixel is refused. (Found by the hostile review of the feedback routes.)
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.feedback import (
    FeedbackError,
    Review,
    Reviewer,
    confirm_nothing_missed,
    feedback_records,
    review_prediction,
    review_queue,
)
from radlake.catalog.model_registry import resolve_version
from radlake.catalog.models import AuditEvent
from radlake.curation.versions import get_version, version_findings
from radlake.domain import Box
from radlake.inference.registry import register_version
from radlake.inference.service import predict_images
from radlake.lake import Lake
from radlake.pipelines.retrain_set import RetrainRequest, build_retrain_set
from tests.test_predict_batch import model_file
from tests.test_retrain_set import ACCEPT, ALICE, REJECT, boxes, review, reviewed_lake

__all__ = ["reviewed_lake"]  # the fixture, used by name

Lakes = tuple[Lake, dict[str, list[int]]]


def queue(lake: Lake, **options: object) -> list[tuple[int, float | None]]:
    with session_factory(lake.engine)() as session:
        version = resolve_version(session, ref="lungs:1")
        items = review_queue(session, model_version_id=version.id, **options)  # type: ignore[arg-type]
    return [(item.image_id, item.top_score) for item in items]


def test_nothing_found_and_nothing_there_leaves_the_queue_as_a_negative(
    reviewed_lake: Lakes,
) -> None:
    lake, by_split = reviewed_lake
    empty, full = by_split["production"][:2]
    # The model scores 0.9 and 0.8: at 0.95 it finds nothing on this film.
    predict_images(lake, model_ref="lungs", image_ids=[empty], score_threshold=0.95, caller="t")
    first = queue(lake)
    assert first[0] == (empty, None)  # nothing found: the most uncertain
    with transaction(lake.engine) as session:
        version = resolve_version(session, ref="lungs:1")
        _, created = confirm_nothing_missed(
            session, image_id=empty, run_id=None, model_version_id=version.id, reviewer=ALICE
        )
        _, again = confirm_nothing_missed(
            session, image_id=empty, run_id=None, model_version_id=version.id, reviewer=ALICE
        )
    assert created and not again
    assert empty not in [image_id for image_id, _ in queue(lake)]
    review(lake, full, {"Left Lung": ACCEPT, "Right Lung": ACCEPT})
    made = build_retrain_set(lake, RetrainRequest("lungs", export=False))
    assert made.summary.counts["images"] == 2 and made.summary.counts["negative_images"] == 1
    with session_factory(lake.engine)() as session:
        version = get_version(session, "lungs", None)
        found = version_findings(session, version, [empty, full])
    assert found.get(empty, []) == [] and len(found[full]) == 2


def test_a_simulated_verdict_never_overwrites_a_person_s(reviewed_lake: Lakes) -> None:
    lake, by_split = reviewed_lake
    image = by_split["production"][0]
    review(lake, image, {"Left Lung": ACCEPT})
    review(lake, image, {"Left Lung": REJECT}, who=Reviewer("alice", "api", simulated=True))
    with session_factory(lake.engine)() as session:
        rows = feedback_records(session, image_id=image)
    assert sorted((r.reviewer, r.verdict, r.simulated) for r in rows) == [
        ("alice", "accept", False),
        ("alice", "reject", True),
    ]


def test_a_change_of_mind_keeps_one_row_and_the_audit_log_keeps_what_it_was(
    reviewed_lake: Lakes,
) -> None:
    lake, by_split = reviewed_lake
    image = by_split["production"][0]
    review(lake, image, {"Left Lung": ACCEPT})
    review(lake, image, {"Left Lung": ACCEPT})  # the same again: no change, no event
    review(lake, image, {"Left Lung": REJECT})
    with session_factory(lake.engine)() as session:
        (row,) = feedback_records(session, image_id=image)
        events = list(
            session.scalars(select(AuditEvent).where(AuditEvent.action == "feedback.change"))
        )
    assert row.verdict == "reject"
    assert [(e.actor, e.target, e.detail["was"][0], e.detail["now"][0]) for e in events] == [
        ("alice", f"feedback:{row.id}", "accept", "reject")
    ]


def test_disagreement_puts_images_the_other_version_never_saw_last(reviewed_lake: Lakes) -> None:
    lake, by_split = reviewed_lake
    seen, moved, unseen = by_split["production"][:3]
    with transaction(lake.engine) as session:
        register_version(
            session,
            lake.store,
            name="lungs",
            onnx_bytes_or_path=model_file(left=(12.0, 23.0, 30.0, 43.0)),
        )
    predict_images(lake, model_ref="lungs:2", image_ids=[seen, moved], caller="t")
    with session_factory(lake.engine)() as session:
        other = resolve_version(session, ref="lungs:2").id
        version = resolve_version(session, ref="lungs:1").id
        items = review_queue(
            session, model_version_id=version, order="disagreement", other_version_id=other
        )
    figures = {item.image_id: item.disagreement for item in items}
    assert figures[unseen] is None and figures[seen] is not None and figures[seen] > 0
    assert [item.image_id for item in items].index(unseen) > [i.image_id for i in items].index(seen)


def test_a_box_under_a_pixel_is_refused(reviewed_lake: Lakes) -> None:
    lake, by_split = reviewed_lake
    found = boxes(lake, by_split["production"][0])
    with transaction(lake.engine) as session, pytest.raises(FeedbackError, match="1 pixel"):
        review_prediction(
            session,
            prediction_id=found["Left Lung"],
            review=Review("correct", box=Box(0.0, 0.0, 1e-300, 64.0)),
            reviewer=ALICE,
        )
