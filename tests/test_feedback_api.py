"""Reviewers' feedback over the API (issue 11), on SQLite, PostgreSQL and MariaDB:
accept, reject, correct and add through POST /predictions/{id}/feedback and POST
/images/{id}/feedback (201, then 200 on a repeat or a change of mind), what is refused
and why, roles and withheld pixels, GET /images/{id}/feedback, the review queue in
both orders, and two reviewers writing at once to a real uvicorn server.

The lake is tests/test_predict_api.py's `site` (256 x 192 images, the lungs models
whose Left Lung and Right Lung boxes are known exactly), over this module's `lake`:
the same lake on each catalog backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.feedback import FeedbackRecord, feedback_records
from radlake.catalog.feedback_models import Feedback
from radlake.catalog.model_registry import PredictedBox, RunRecord, record_runs, resolve_version
from radlake.domain import Box
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.storage.store import open_store
from tests.conftest import SECRET
from tests.test_predict_api import (
    Site,
    site,  # noqa: F401 (the fixture)
)
from tests.test_predict_batch import HEIGHT, LEFT, RIGHT, WIDTH
from tests.test_web import serve


@pytest.fixture
def lake(catalog: Engine, tmp_path: Path) -> Iterator[Lake]:
    """The `site` fixture's lake on each catalog backend (conftest's is SQLite only)."""
    yield Lake(catalog, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))


def corners(box: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(("x_min", "y_min", "x_max", "y_max"), box, strict=True))


def predicted(on: Site, image: str = "a", model: str = "lungs:1") -> dict[str, Any]:
    answer = on.predict(model=model, image_id=on.ids[image])
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def boxes_by_class(run: dict[str, Any]) -> dict[str, int]:
    return {found["class_name"]: found["prediction_id"] for found in run["detections"]}


def review(on: Site, prediction_id: int, role: str = "reviewer", **body: Any) -> httpx.Response:
    return on.client.post(
        f"/predictions/{prediction_id}/feedback", json=body, headers=on.auth(role)
    )


def add(on: Site, image: str, role: str = "reviewer", **body: Any) -> httpx.Response:
    return on.client.post(f"/images/{on.ids[image]}/feedback", json=body, headers=on.auth(role))


def stored(lake: Lake) -> list[FeedbackRecord]:
    with session_factory(lake.engine)() as session:
        return feedback_records(session)


def test_accept_correct_reject_add_and_repeat(site: Site) -> None:  # noqa: F811
    run = predicted(site)
    ids = boxes_by_class(run)
    accepted = review(site, ids["Left Lung"], verdict="accept")
    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert body["verdict"] == "accept" and body["class_name"] == "Left Lung"
    assert body["box"] == corners(LEFT) and body["confidence"] == pytest.approx(0.9)
    assert (body["image_id"], body["run_id"], body["prediction_id"]) == (
        site.ids["a"],
        run["run_id"],
        ids["Left Lung"],
    )
    assert (body["model"], body["version"]) == ("lungs", 1)
    assert (body["reviewer"], body["channel"], body["simulated"]) == ("reviewer", "api", False)
    # The same request again: the same row, 200 (its time is the latest word's).
    again = review(site, ids["Left Lung"], verdict="accept")
    assert again.status_code == 200
    assert again.json() | {"created_at": None} == body | {"created_at": None}

    moved = (150.0, 25.0, 230.5, 170.0)
    corrected = review(site, ids["Right Lung"], verdict="correct", box=corners(moved))
    assert corrected.status_code == 201, corrected.text
    assert corrected.json()["class_name"] == "Right Lung"  # a box only: the class stays
    assert corrected.json()["box"] == corners(moved)
    renamed = review(site, ids["Right Lung"], verdict="correct", class_name="Left Lung")
    assert renamed.status_code == 200  # a change of mind: the same row, now this label
    assert renamed.json()["id"] == corrected.json()["id"]
    assert (renamed.json()["class_name"], renamed.json()["box"]) == ("Left Lung", corners(RIGHT))

    rejected = review(site, ids["Left Lung"], verdict="reject")
    assert rejected.status_code == 200 and rejected.json()["id"] == body["id"]
    assert (rejected.json()["class_name"], rejected.json()["box"]) == (None, None)

    missed = (10.0, 10.0, 30.5, 40.25)
    added = add(
        site, "a", verdict="add", class_name="Right Lung", box=corners(missed), run_id=run["run_id"]
    )
    assert added.status_code == 201, added.text
    assert added.json()["prediction_id"] is None and added.json()["confidence"] is None
    assert added.json()["box"] == corners(missed) and added.json()["run_id"] == run["run_id"]
    # The same box named through the model (its latest run here) is the same row.
    by_model = add(site, "a", class_name="Right Lung", box=corners(missed), model="lungs:1")
    assert by_model.status_code == 200 and by_model.json()["id"] == added.json()["id"]

    rows = sorted(stored(site.lake), key=lambda r: r.id)
    assert [(r.verdict, r.class_name, r.prediction_id) for r in rows] == [
        ("reject", None, ids["Left Lung"]),
        ("correct", "Left Lung", ids["Right Lung"]),
        ("add", "Right Lung", None),
    ]
    assert {(r.reviewer, r.channel, r.simulated) for r in rows} == {("reviewer", "api", False)}

    # Any role reads an image's feedback; the reviewer's name is for curators.
    shown = site.client.get(f"/images/{site.ids['a']}/feedback", headers=site.auth("viewer"))
    assert shown.status_code == 200, shown.text
    # Oldest word first (the reject came after the correction; a catalog whose clock
    # keeps whole seconds may tie them).
    assert sorted(item["verdict"] for item in shown.json()["feedback"]) == [
        "add",
        "correct",
        "reject",
    ]
    assert {item["reviewer"] for item in shown.json()["feedback"]} == {None}
    curator = site.client.get(f"/images/{site.ids['a']}/feedback", headers=site.auth("curator"))
    assert {item["reviewer"] for item in curator.json()["feedback"]} == {"reviewer"}
    assert curator.json()["feedback"][-1]["box"] == corners(missed)
    other = site.client.get(
        f"/images/{site.ids['a']}/feedback",
        params={"model": "lungs:2"},
        headers=site.auth("viewer"),
    )
    assert other.json() == {"image_id": site.ids["a"], "feedback": []}


def test_two_reviewers_keep_two_rows_and_simulated_is_kept(site: Site) -> None:  # noqa: F811
    ids = boxes_by_class(predicted(site))
    first = review(site, ids["Left Lung"], verdict="accept")
    second = review(site, ids["Left Lung"], role="curator", verdict="reject", simulated=True)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json()["simulated"] is True and first.json()["simulated"] is False
    rows = stored(site.lake)
    assert [(r.reviewer, r.verdict, r.simulated) for r in rows] == [
        ("reviewer", "accept", False),
        ("curator", "reject", True),
    ]
    shown = site.client.get(f"/images/{site.ids['a']}/feedback", headers=site.auth("viewer"))
    assert [item["simulated"] for item in shown.json()["feedback"]] == [False, True]
    # An added box keeps its flag too.
    added = add(
        site, "a", class_name="Left Lung", box=corners(LEFT), model="lungs:1", simulated=True
    )
    assert added.status_code == 201 and added.json()["simulated"] is True


def count(lake: Lake) -> int:
    with session_factory(lake.engine)() as session:
        return int(session.scalar(select(func.count(Feedback.id))) or 0)


def test_what_is_refused_and_why(site: Site) -> None:  # noqa: F811
    run = predicted(site)
    ids = boxes_by_class(run)
    left = ids["Left Lung"]
    refused: list[tuple[httpx.Response, int, str]] = [
        (
            review(site, left, verdict="correct", class_name="Heart"),
            422,
            "is not one of the model's: Left Lung, Right Lung",
        ),
        (
            review(site, left, verdict="correct", box=corners((10, 10, WIDTH + 1, 50))),
            422,
            f"leaves the {WIDTH} x {HEIGHT} image",
        ),
        (
            review(site, left, verdict="correct", box=corners((50, 10, 40, 50))),
            422,
            "x_min < x_max",
        ),
        (review(site, left, verdict="accept", box=corners(LEFT)), 422, "takes no class or box"),
        (review(site, left, verdict="reject", class_name="Left Lung"), 422, "takes no class"),
        (review(site, left, verdict="correct", class_name="Left Lung"), 422, "a different class"),
        (review(site, left, verdict="correct"), 422, "a different class or box"),
        (review(site, 987_654, verdict="accept"), 404, "no prediction 987654"),
        (review(site, left, role="viewer", verdict="accept"), 403, "reviewer role"),
        (
            add(site, "a", class_name="Left Lung", box=corners(LEFT), run_id=987_654),
            404,
            "has no run 987654",
        ),
        (
            add(site, "b", class_name="Left Lung", box=corners(LEFT), run_id=run["run_id"]),
            404,
            f"has no run {run['run_id']}",  # a run of another image
        ),
        (
            add(site, "b", class_name="Left Lung", box=corners(LEFT), model="lungs:1"),
            422,
            "has not run on image",
        ),
        (add(site, "a", class_name="Left Lung", box=corners(LEFT)), 422, "one of the two"),
        (
            add(site, "a", class_name="Left Lung", box=corners(LEFT), model="lungs", run_id=1),
            422,
            "one of the two",
        ),
        (
            add(site, "a", class_name="Left Lung", box=corners(LEFT), model="nosuch"),
            404,
            "nosuch",
        ),
        (
            add(site, "a", class_name="Heart", box=corners(LEFT), model="lungs:1"),
            422,
            "not one of the model's",
        ),
        (
            add(site, "a", role="viewer", class_name="Left Lung", box=corners(LEFT), model="lungs"),
            403,
            "reviewer role",
        ),
    ]
    for answer, code, reason in refused:
        assert answer.status_code == code, (answer.request.content, answer.text)
        assert reason in str(answer.json()["detail"]), answer.text
    no_token = site.client.post(f"/predictions/{left}/feedback", json={"verdict": "accept"})
    assert no_token.status_code == 401
    unknown_image = site.client.post(
        "/images/987654/feedback",
        json={"class_name": "Left Lung", "box": corners(LEFT), "model": "lungs"},
        headers=site.auth("reviewer"),
    )
    assert unknown_image.status_code == 404, unknown_image.text
    assert count(site.lake) == 0


HOSTILE_BODIES: list[Any] = [
    None,
    [],
    "accept",
    {},
    {"verdict": "maybe"},
    {"verdict": "add"},  # names an image, not a box
    {"verdict": "accept", "extra": 1},
    {"verdict": "accept", "simulated": "yes"},
    {"verdict": "accept", "simulated": 1},
    {"verdict": "correct", "class_name": 7},
    {"verdict": "correct", "class_name": ""},
    {"verdict": "correct", "class_name": "x" * 100_000},
    {"verdict": "correct", "box": [1, 2, 3, 4]},
    {"verdict": "correct", "box": {"x_min": 1, "y_min": 2, "x_max": 3}},
    {"verdict": "correct", "box": {"x_min": "1", "y_min": 2, "x_max": 3, "y_max": 4}},
    {"verdict": "correct", "box": {"x_min": True, "y_min": 2, "x_max": 3, "y_max": 4}},
    {"verdict": "correct", "box": {"x_min": -1, "y_min": 2, "x_max": 3, "y_max": 4}},
    {"verdict": "correct", "box": {"x_min": 1, "y_min": 2, "x_max": 1e300, "y_max": 4}},
    {"verdict": "correct", "box": {"x_min": 1, "y_min": 2, "x_max": 3, "y_max": 4, "z": 0}},
]
RAW_BODIES = [
    b'{"verdict": "correct", "box": {"x_min": NaN, "y_min": 2, "x_max": 3, "y_max": 4}}',
    b'{"verdict": "correct", "box": {"x_min": 1, "y_min": 2, "x_max": Infinity, "y_max": 4}}',
    b'{"verdict": "accept"',
    b"\xff\xfe not json",
    b"[" * 100_000,
    b'{"verdict": "correct", "class_name": "\\ud800"}',
]


def test_hostile_bodies_are_4xx_and_record_nothing(site: Site) -> None:  # noqa: F811
    run = predicted(site)
    left = boxes_by_class(run)["Left Lung"]
    headers = site.auth("reviewer")
    for body in HOSTILE_BODIES:
        answer = site.client.post(f"/predictions/{left}/feedback", json=body, headers=headers)
        assert answer.status_code == 422, (body if len(str(body)) < 200 else "long", answer.text)
        assert len(answer.text) < 5_000 and "Traceback" not in answer.text
    for data in RAW_BODIES:
        for path in (f"/predictions/{left}/feedback", f"/images/{site.ids['a']}/feedback"):
            answer = site.client.post(
                path, content=data, headers=headers | {"Content-Type": "application/json"}
            )
            assert 400 <= answer.status_code < 500, (data[:60], answer.text)
    for body in ({"class_name": "Left Lung", "box": corners(LEFT), "run_id": "1"}, {"box": {}}):
        answer = add(site, "a", **body)
        assert answer.status_code == 422, answer.text
    # A viewer's bad body is refused for the role first.
    viewer = site.client.post(f"/predictions/{left}/feedback", json=[], headers=site.auth("viewer"))
    assert viewer.status_code == 403
    assert count(site.lake) == 0


def test_withheld_pixels_are_not_reviewed(site: Site) -> None:  # noqa: F811
    burned = site.ids["burned"]
    answer = site.predict("curator", model="lungs", image_id=burned)
    assert answer.status_code == 200, answer.text
    run = answer.json()
    for role, code in (("reviewer", 403), ("curator", 201)):
        for found in run["detections"][:1]:
            filed = review(site, found["prediction_id"], role=role, verdict="accept")
            assert filed.status_code == code, filed.text
        shown = site.client.get(f"/images/{burned}/feedback", headers=site.auth(role))
        assert shown.status_code == (403 if code == 403 else 200)
    refused = add(site, "burned", class_name="Left Lung", box=corners(LEFT), model="lungs")
    assert refused.status_code == 403 and "burned-in" in refused.json()["detail"]


def record(lake: Lake, ref: str, image_id: int, *boxes: tuple[str, float, Box]) -> int:
    """A run of ref on the image with these (class, score, box): scores the constant
    test models cannot give."""
    with transaction(lake.engine) as session:
        version = resolve_version(session, ref=ref)
        names = list(version.class_names)
        (recorded,) = record_runs(
            session,
            runs=[
                RunRecord(
                    model_version_id=version.id,
                    image_id=image_id,
                    score_threshold=0.1,
                    iou_threshold=0.45,
                    latency_ms=1.0,
                    caller="test",
                    boxes=[PredictedBox(names.index(c), c, s, b) for c, s, b in boxes],
                )
            ],
        )
    return recorded.run_id


def queue(on: Site, role: str = "reviewer", **params: Any) -> httpx.Response:
    return on.client.get("/review/queue", params=params, headers=on.auth(role))


def test_queue_orders_by_top_score_and_reviewed_images_leave_it(site: Site) -> None:  # noqa: F811
    a, b, c, burned = (site.ids[k] for k in ("a", "b", "c", "burned"))
    left, right = Box(*LEFT), Box(*RIGHT)
    record(site.lake, "lungs:1", a, ("Left Lung", 0.9, left), ("Right Lung", 0.6, right))
    record(site.lake, "lungs:1", b)  # the model found nothing: first in the queue
    record(site.lake, "lungs:1", c, ("Left Lung", 0.4, left))
    record(site.lake, "lungs:1", burned, ("Left Lung", 0.2, left))
    record(site.lake, "lungs:2", a, ("Left Lung", 0.1, left))  # another version's queue

    answer = queue(site, model="lungs:1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["version"], body["order"], body["compare"]) == (
        "lungs",
        1,
        "top_score",
        None,
    )
    # Burned-in pixels: not the reviewer's to review, so not in its queue.
    assert [(i["image_id"], i["boxes"], i["top_score"]) for i in body["items"]] == [
        (b, 0, None),
        (c, 1, pytest.approx(0.4)),
        (a, 2, pytest.approx(0.9)),
    ]
    curator = queue(site, "curator", model="lungs@production").json()
    assert [i["image_id"] for i in curator["items"]] == [b, burned, c, a]
    assert [i["image_id"] for i in queue(site, model="lungs:1", limit=1).json()["items"]] == [b]

    # The latest run counts; a reviewed image leaves the queue.
    run = record(site.lake, "lungs:1", b, ("Right Lung", 0.95, right))
    assert [i["image_id"] for i in queue(site, model="lungs:1").json()["items"]] == [c, a, b]
    filed = add(site, "b", class_name="Left Lung", box=corners(LEFT), run_id=run)
    assert filed.status_code == 201, filed.text
    items = queue(site, model="lungs:1").json()["items"]
    assert [(i["image_id"], i["run_id"]) for i in items][-1][0] == a
    assert b not in [i["image_id"] for i in items]
    assert [i["image_id"] for i in queue(site, model="lungs:2").json()["items"]] == [a]
    # Nothing found and nothing there: 'none' takes c out of the queue, once.
    assert (
        add(site, "c", verdict="none", class_name="Left Lung", model="lungs:1").status_code == 422
    )
    assert add(site, "c", verdict="none", model="lungs:1").status_code == 201
    again = add(site, "c", verdict="none", model="lungs:1")
    assert again.status_code == 200 and again.json()["verdict"] == "none"
    assert again.json()["box"] is None and again.json()["class_name"] is None
    assert [i["image_id"] for i in queue(site, model="lungs:1").json()["items"]] == [a]
    # Query parameters as strict as /images': a typo, a key twice, compare without its order.
    for params, reason in (
        ({"model": "lungs:1", "foo": "bar"}, "unknown query parameter"),
        ([("model", "lungs:1"), ("model", "lungs:2")], "given twice"),
        ({"model": "lungs:1", "compare": "lungs:2"}, "order=disagreement"),
    ):
        refused = site.client.get("/review/queue", params=params, headers=site.auth("reviewer"))
        assert refused.status_code == 422 and reason in refused.text, refused.text
    listed = site.client.get(f"/images/{a}/feedback?x=1", headers=site.auth("viewer"))
    assert listed.status_code == 422 and "unknown query parameter" in listed.text


def test_queue_by_disagreement_between_two_versions(site: Site) -> None:  # noqa: F811
    a, b, c = (site.ids[k] for k in ("a", "b", "c"))
    left, right = Box(*LEFT), Box(*RIGHT)
    shifted = Box(LEFT[0] + 40, LEFT[1], LEFT[2] + 40, LEFT[3])  # IoU 1/3 with left
    for image in (a, b, c):
        record(site.lake, "lungs:1", image, ("Left Lung", 0.9, left), ("Right Lung", 0.8, right))
    record(site.lake, "lungs:2", a, ("Left Lung", 0.9, left), ("Right Lung", 0.8, right))
    record(site.lake, "lungs:2", b, ("Left Lung", 0.9, shifted), ("Right Lung", 0.8, right))
    record(site.lake, "lungs:2", c)  # found nothing: nothing in common

    answer = queue(site, model="lungs:1", order="disagreement", compare="lungs:2")
    assert answer.status_code == 200, answer.text
    assert answer.json()["compare"] == "lungs:2"
    found = [(i["image_id"], i["disagreement"]) for i in answer.json()["items"]]
    assert found == [
        (c, pytest.approx(1.0)),
        (b, pytest.approx(1 - (1 / 3 + 1) / 2)),
        (a, pytest.approx(0.0)),
    ]
    without = queue(site, model="lungs:1", order="disagreement")
    assert without.status_code == 422 and "other model version" in without.json()["detail"]
    for params, code in (
        ({"model": "nosuch"}, 404),
        ({"model": "lungs:1", "compare": "lungs:9", "order": "disagreement"}, 404),
        ({"model": "lungs:1", "order": "sideways"}, 422),
        ({"model": "lungs:1", "limit": 0}, 422),
        ({"model": "lungs:1", "limit": 10**6}, 422),
        ({}, 422),
    ):
        assert queue(site, **params).status_code == code, params
    assert queue(site, "viewer", model="lungs:1").status_code == 403


def test_reviewers_at_once_on_a_real_server(site: Site) -> None:  # noqa: F811
    """Two reviewers, each sending every verdict twice at the same moment: no 500, one
    row per reviewer and box, each reviewer's last word kept."""
    ids = list(boxes_by_class(predicted(site)).values()) + list(
        boxes_by_class(predicted(site, "b")).values()
    )
    work = [
        (role, prediction_id, verdict)
        for prediction_id in ids
        for role in ("reviewer", "curator")
        for verdict in ("accept", "accept")
    ]
    with serve(site.app) as base, httpx.Client(base_url=base, timeout=60) as client:

        def send(item: tuple[str, int, str]) -> int:
            role, prediction_id, verdict = item
            answer = client.post(
                f"/predictions/{prediction_id}/feedback",
                json={"verdict": verdict},
                headers=site.auth(role),
            )
            return answer.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(send, work))
    assert set(codes) <= {200, 201}, codes
    # Exactly one 201 per reviewer and box, however the two identical requests race.
    assert codes.count(201) == len(ids) * 2, codes
    rows = stored(site.lake)
    assert sorted((r.prediction_id or 0, r.reviewer) for r in rows) == sorted(
        (i, role) for i in ids for role in ("reviewer", "curator")
    )
    assert all(r.verdict == "accept" and not math.isnan(r.confidence or 0) for r in rows)
