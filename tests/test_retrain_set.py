"""Retraining sets (issue 11): verdicts on a model's predictions made into a label set
and a dataset version that keeps the held-out splits; complete images only; lineage;
YOLO and COCO under retrain/<name>/; re-running and two builds at once make one set.

The lake is a VinBigData-layout source of 20 films whose ground truth is a Left and a
Right Lung box at known places; the model answers exactly those boxes (scores 0.9 and
0.8), so each verdict's label is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.feedback import Review, Reviewer, add_box, review_prediction
from radlake.catalog.feedback_models import RetrainSet
from radlake.catalog.model_registry import (
    PredictedBox,
    RunRecord,
    predictions_for_image,
    record_runs,
    resolve_version,
)
from radlake.catalog.models import DatasetVersion, Label
from radlake.catalog.retrain_sets import lineage, taken_feedback_ids
from radlake.curation.versions import (
    get_version,
    members,
    version_findings,
)
from radlake.domain import Box, LabelOrigin
from radlake.imaging.deid import Pseudonymizer
from radlake.inference.service import predict_images
from radlake.lake import Lake
from radlake.pipelines.retrain_set import RetrainError, RetrainRequest, build_retrain_set
from radlake.storage.store import open_store
from tests.conftest import SECRET
from tests.test_predict_batch import LEFT, load_films

pytest.importorskip("onnxruntime", reason="predictions need the [inference] extra")

ALICE = Reviewer("alice", "api")
BOB = Reviewer("bob", "api")
SIMULATED = Reviewer("sim", "api", simulated=True)


@pytest.fixture
def reviewed_lake(catalog: Engine, tmp_path: Path) -> Iterator[tuple[Lake, dict[str, list[int]]]]:
    """On each catalog backend: dataset lungs v1 (training, production, test), model
    lungs v1 trained on it, and its predictions on production and one test image."""
    lake = Lake(catalog, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    version_id = load_films(
        lake, tmp_path / "src", count=20, splits="training=0.3,production=0.4,test=0.3"
    )
    with session_factory(lake.engine)() as session:
        split_of = members(session, version_id)
    by_split: dict[str, list[int]] = {}
    for image_id, split in sorted(split_of.items()):
        by_split.setdefault(split, []).append(image_id)
    assert len(by_split["production"]) >= 5 and by_split["test"], by_split
    predict_images(
        lake,
        model_ref="lungs",
        image_ids=[*by_split["production"], by_split["test"][0]],
        caller="test",
    )
    yield lake, by_split


def boxes(lake: Lake, image_id: int) -> dict[str, int]:
    """Class name -> prediction id of the image's latest run."""
    with session_factory(lake.engine)() as session:
        return {
            p.class_name: p.prediction_id for p in predictions_for_image(session, image_id=image_id)
        }


def review(lake: Lake, image_id: int, verdicts: dict[str, Review], who: Reviewer = ALICE) -> None:
    found = boxes(lake, image_id)
    with transaction(lake.engine) as session:
        for class_name, verdict in verdicts.items():
            review_prediction(
                session, prediction_id=found[class_name], review=verdict, reviewer=who
            )


def add(lake: Lake, image_id: int, box: Box, who: Reviewer = ALICE) -> None:
    with transaction(lake.engine) as session:
        version = resolve_version(session, ref="lungs")
        add_box(
            session,
            image_id=image_id,
            run_id=None,
            model_version_id=version.id,
            class_name="Left Lung",
            box=box,
            reviewer=who,
        )


ACCEPT, REJECT = Review("accept"), Review("reject")
MOVED = Box(50.0, 60.0, 130.0, 150.0)


def test_a_retrain_set_takes_complete_reviews_and_keeps_held_out_splits(
    reviewed_lake: tuple[Lake, dict[str, list[int]]],
) -> None:
    lake, by_split = reviewed_lake
    a, b, c, d, e = by_split["production"][:5]
    held_out = by_split["test"][0]
    review(lake, a, {"Left Lung": ACCEPT, "Right Lung": Review("correct", box=MOVED)})
    review(lake, b, {"Left Lung": REJECT, "Right Lung": REJECT})
    add(lake, b, Box(10.0, 10.0, 60.0, 90.0))
    add(lake, b, Box(11.0, 10.0, 60.0, 90.0), who=BOB)  # the same missed box: one label
    review(lake, c, {"Left Lung": ACCEPT})  # Right Lung unreviewed: c stays out
    review(lake, d, {"Left Lung": ACCEPT, "Right Lung": REJECT}, who=SIMULATED)
    review(lake, e, {"Left Lung": ACCEPT, "Right Lung": REJECT})
    review(lake, e, {"Right Lung": ACCEPT})  # a change of mind: the latest verdict counts
    review(lake, held_out, {"Left Lung": ACCEPT, "Right Lung": ACCEPT})

    outcome = build_retrain_set(lake, RetrainRequest("lungs", min_confidence=0.85))
    assert outcome.created
    counts = outcome.summary.counts
    # e's Right Lung scores 0.8 < 0.85: e is left out whole, not trained as background.
    assert counts["left_out"] == {
        "unreviewed boxes": 1,
        "in held-out split 'test'": 1,
        "accepted box below the confidence threshold": 1,
    }
    assert counts["images"] == 3 and counts["boxes"] == 4  # a: 2, b: 1, d: 1
    with session_factory(lake.engine)() as session:
        made = get_version(session, "lungs", None)
        base = get_version(session, "lungs", 1)
        assert (made.version, made.label_set) == (2, "feedback")
        new_split, old_split = members(session, made.id), members(session, base.id)
        # Held-out splits are exactly the base's; reviewed images joined training;
        # production images nobody finished reviewing are not in the version.
        assert {i for i, s in new_split.items() if s == "test"} == set(by_split["test"])
        assert {i for i, s in new_split.items() if s == "training"} == {
            *by_split["training"],
            a,
            b,
            d,
        }
        assert "production" not in new_split.values() and "production" in old_split.values()
        found = version_findings(session, made, [a, b, d, by_split["training"][0], held_out])
        assert sorted((f.class_name, f.box) for f in found[a]) == [
            ("Left Lung", Box(*LEFT)),
            ("Right Lung", MOVED),
        ]
        assert [(f.class_name, f.box, f.origin) for f in found[b]] == [
            ("Left Lung", Box(10.0, 10.0, 60.0, 90.0), LabelOrigin.FEEDBACK)
        ]
        truth = found[by_split["training"][0]]
        assert {f.origin for f in truth} == {LabelOrigin.GROUND_TRUTH} and len(truth) == 2
        assert all(f.origin == LabelOrigin.GROUND_TRUTH for f in found[held_out])
        # Ground truth is untouched; the feedback labels are their own rows.
        assert (
            session.scalar(select(func.count()).where(Label.origin == LabelOrigin.FEEDBACK.value))
            == 4
        )
        made_set = session.scalars(select(RetrainSet)).one()
        taken = taken_feedback_ids(session, retrain_set_id=made_set.id)
        assert len(taken) == outcome.summary.feedback_rows == 2 + 4 + 2
        steps = lineage(session, version=resolve_version(session, ref="lungs"))
        assert len(steps) == 1 and steps[0].trained_on == "lungs@1"
    # YOLO and COCO in the store under retrain/<name>/.
    name = outcome.summary.name
    yolo_keys = list(lake.store.list(f"retrain/{name}/yolo/"))
    assert any(k.endswith(".txt") for k in yolo_keys), yolo_keys
    coco = json.loads(lake.store.get_bytes(f"retrain/{name}/coco/annotations/training.json"))
    assert len(coco["images"]) == len(by_split["training"]) + 3
    assert len(coco["annotations"]) == 2 * len(by_split["training"]) + 4

    again = build_retrain_set(lake, RetrainRequest("lungs", min_confidence=0.85))
    assert not again.created and again.summary.name == name
    # Without the simulated reviewer's feedback, d is not taken: a different set.
    real_only = build_retrain_set(
        lake, RetrainRequest("lungs", min_confidence=0.85, simulated=False, export=False)
    )
    assert real_only.created and real_only.summary.counts["images"] == 2


def test_building_twice_at_once_makes_one_set(
    reviewed_lake: tuple[Lake, dict[str, list[int]]],
) -> None:
    lake, by_split = reviewed_lake
    a = by_split["production"][0]
    review(lake, a, {"Left Lung": ACCEPT, "Right Lung": ACCEPT})
    request = RetrainRequest("lungs", export=False)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: build_retrain_set(lake, request), range(2)))
    assert sorted(o.created for o in outcomes) == [False, True]
    assert outcomes[0].summary.name == outcomes[1].summary.name
    with session_factory(lake.engine)() as session:
        assert session.scalar(select(func.count(RetrainSet.id))) == 1
        assert session.scalar(select(func.count(DatasetVersion.id))) == 2


def test_what_cannot_be_built_says_why(reviewed_lake: tuple[Lake, dict[str, list[int]]]) -> None:
    lake, by_split = reviewed_lake
    with pytest.raises(RetrainError, match="no feedback"):
        build_retrain_set(lake, RetrainRequest("lungs"))
    review(lake, by_split["production"][0], {"Left Lung": ACCEPT})  # incomplete
    with pytest.raises(RetrainError, match="1 unreviewed boxes"):
        build_retrain_set(lake, RetrainRequest("lungs"))
    with pytest.raises(RetrainError, match=r"confidence in \[0, 1\]"):
        build_retrain_set(lake, RetrainRequest("lungs", min_confidence=1.5))


def test_training_images_keep_their_truth_and_a_box_twice_is_one_label(
    reviewed_lake: tuple[Lake, dict[str, list[int]]],
) -> None:
    lake, by_split = reviewed_lake
    trained, twice = by_split["training"][0], by_split["production"][0]
    predict_images(lake, model_ref="lungs", image_ids=[trained], caller="test")
    review(lake, trained, {"Left Lung": ACCEPT, "Right Lung": REJECT})
    # A run listing the same box twice (an imported file may): both accepted.
    with transaction(lake.engine) as session:
        version = resolve_version(session, ref="lungs")
        same = PredictedBox(0, "Left Lung", 0.95, Box(*LEFT))
        (run,) = record_runs(
            session, runs=[RunRecord(version.id, twice, 0.0, 0.0, 0.0, "import:x", [same, same])]
        )
        for prediction_id in run.prediction_ids:
            review_prediction(session, prediction_id=prediction_id, review=ACCEPT, reviewer=ALICE)
    outcome = build_retrain_set(lake, RetrainRequest("lungs", export=False))
    counts = outcome.summary.counts
    assert counts["left_out"] == {"already in 'training' with ground truth": 1}
    assert (counts["images"], counts["boxes"]) == (1, 1)
    assert counts["unreviewed_production_dropped"] == len(by_split["production"]) - 1
    with session_factory(lake.engine)() as session:
        made = get_version(session, "lungs", None)
        found = version_findings(session, made, [trained, twice])
    assert {f.origin for f in found[trained]} == {LabelOrigin.GROUND_TRUTH}
    assert [(f.class_name, f.box) for f in found[twice]] == [("Left Lung", Box(*LEFT))]
