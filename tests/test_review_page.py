"""Reviewing through the web page (issue 11): the image page's review panel and the
queue page as served (TestClient), then a reviewer in headless Chromium (the DevTools
driver of tests/test_web.py against uvicorn) accepts one box, corrects another by
class and by dragging it, draws a missed one, and the catalog holds exactly those
three verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from radlake.catalog.db import session_factory
from radlake.catalog.feedback import FeedbackRecord, feedback_records
from tests.test_predict_api import (
    Site,
    site,  # noqa: F401 (the fixture)
)
from tests.test_predict_batch import LEFT, RIGHT
from tests.test_predict_page import signed_in
from tests.test_web import CHROMIUM, IMAGES_LOADED, Chromium, chromium, serve


def predicted_boxes(on: Site, image: str = "a") -> dict[str, int]:
    answer = on.predict(model="lungs:1", image_id=on.ids[image])
    assert answer.status_code == 200, answer.text
    return {found["class_name"]: found["prediction_id"] for found in answer.json()["detections"]}


def stored(on: Site) -> list[FeedbackRecord]:
    with session_factory(on.lake.engine)() as session:
        return sorted(feedback_records(session), key=lambda record: record.id)


def test_review_panel_and_queue_as_served(site: Site) -> None:  # noqa: F811
    ids = predicted_boxes(site)
    image_id = site.ids["a"]
    page = signed_in(site, "reviewer").get(f"/ui/images/{image_id}").text
    assert '<a href="/ui/review">Review</a>' in page
    rows = re.findall(r'<tr data-prediction-id="(\d+)" data-run="(\d+)">', page)
    assert sorted(int(p) for p, _ in rows) == sorted(ids.values())
    assert page.count('data-verdict="accept"') == 2 and 'id="review-add"' in page
    state = json.loads(
        re.search(r'<script id="review-state" type="application/json">(.*?)</script>', page, re.S)
        .group(1)  # type: ignore[union-attr]
        .replace("&#34;", '"')
    )
    assert state["runs"][0]["classes"] == ["Left Lung", "Right Lung"]
    assert state["mine"] == {} and state["added"] == []
    # Simulated feedback is marked; a viewer sees feedback, not the controls or names.
    simulated = site.client.post(
        f"/predictions/{ids['Left Lung']}/feedback",
        json={"verdict": "reject", "simulated": True},
        headers=site.auth("curator"),
    )
    assert simulated.status_code == 201, simulated.text
    viewer = signed_in(site, "viewer").get(f"/ui/images/{image_id}").text
    assert 'id="review-boxes"' not in viewer and "/ui/review" not in viewer
    assert re.search(r'rejected <span class="badge simulated"[^>]*>simulated</span>', viewer)
    assert "<th>Reviewer</th>" not in viewer
    curator = signed_in(site, "curator").get(f"/ui/images/{image_id}").text
    assert "<th>Reviewer</th>" in curator and "<td>curator</td>" in curator

    # The queue page: images nobody reviewed, with links; viewers are refused.
    b = site.ids["b"]
    predicted_boxes(site, "b")
    queue = signed_in(site, "reviewer").get("/ui/review", params={"model": "lungs:1"})
    assert queue.status_code == 200
    assert re.findall(r'<a href="/ui/images/(\d+)">', queue.text) == [str(b)]  # a has feedback
    empty = signed_in(site, "reviewer").get("/ui/review", params={"model": "overlap"})
    assert 'id="queue-empty"' in empty.text
    wrong = signed_in(site, "reviewer").get(
        "/ui/review", params={"model": "lungs:1", "order": "disagreement"}
    )
    assert "needs the other model version" in wrong.text
    assert "no version 9" in signed_in(site, "reviewer").get("/ui/review?model=lungs:9").text
    refused = signed_in(site, "viewer").get("/ui/review")
    assert refused.status_code == 403 and "reviewer role" in refused.text


def screen_point(page: Chromium, x: float, y: float) -> tuple[float, float]:
    """Where the image pixel (x, y) is on the screen (the overlay maps one onto the other)."""
    found: list[float] = page.evaluate(
        "(() => { const s = document.querySelector('svg.overlay'), r = s.getBoundingClientRect(),"
        " v = s.viewBox.baseVal; return [r.left + "
        f"{x} * r.width / v.width, r.top + {y} * r.height / v.height]; }})()"
    )
    return found[0], found[1]


def drag(page: Chromium, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at start, move there in steps, release: real input events (pointer events
    follow from them)."""
    mouse: dict[str, Any] = {"button": "left", "clickCount": 1}
    page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": start[0], "y": start[1]})
    page.call(
        "Input.dispatchMouseEvent", {"type": "mousePressed", "x": start[0], "y": start[1]} | mouse
    )
    for step in range(1, 6):
        x = start[0] + (end[0] - start[0]) * step / 5
        y = start[1] + (end[1] - start[1]) * step / 5
        page.call(
            "Input.dispatchMouseEvent",
            {"type": "mouseMoved", "x": x, "y": y, "button": "left", "buttons": 1},
        )
    page.call(
        "Input.dispatchMouseEvent", {"type": "mouseReleased", "x": end[0], "y": end[1]} | mouse
    )


def click(page: Chromium, selector: str) -> None:
    page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


def saved(page: Chromium) -> str:
    text: str = page.wait_for(
        "(() => { const t = document.getElementById('review-status').textContent;"
        " return t.startsWith('Saved') || t.startsWith('Not saved') ? t : ''; })()"
    )
    return text


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium absent: apt-get install -y chromium"
)
def test_review_in_headless_chromium(site: Site, tmp_path: Path) -> None:  # noqa: F811
    ids = predicted_boxes(site)
    image_id = site.ids["a"]
    with serve(site.app) as base, chromium(tmp_path) as page:
        target = f"{base}/ui/images/{image_id}"
        page.goto(target, landing=f"{base}/ui/signin?next=%2Fui%2Fimages%2F{image_id}")
        page.evaluate(
            f"document.querySelector('input[name=token]').value = "
            f"{json.dumps(site.tokens['reviewer'])};"
            "document.querySelector('form.signin button').click()"
        )
        page.wait_for(
            f"location.href === {json.dumps(target)} && document.readyState === 'complete'"
        )
        page.wait_for(IMAGES_LOADED)
        page.wait_for("window.radlakeReview !== undefined")
        row = '#review-boxes tr[data-prediction-id="{}"]'

        # Accept the Left Lung box.
        click(page, row.format(ids["Left Lung"]) + ' button[data-verdict="accept"]')
        assert saved(page) == "Saved: accepted as Left Lung."
        verdict = f"document.querySelector('{row.format(ids['Left Lung'])} .verdict').textContent"
        assert page.evaluate(verdict) == "accepted"

        # Correct the Right Lung box: another class, and the box dragged 10 px right, 6 down.
        click(page, row.format(ids["Right Lung"]) + ' button[data-verdict="correct"]')
        page.wait_for("!document.getElementById('review-editor').hidden")
        centre = screen_point(page, (RIGHT[0] + RIGHT[2]) / 2, (RIGHT[1] + RIGHT[3]) / 2)
        scale: float = page.evaluate(
            "(() => { const s = document.querySelector('svg.overlay');"
            " return s.viewBox.baseVal.width / s.getBoundingClientRect().width; })()"
        )
        drag(page, centre, (centre[0] + 10, centre[1] + 6))
        moved = (
            RIGHT[0] + 10 * scale,
            RIGHT[1] + 6 * scale,
            RIGHT[2] + 10 * scale,
            RIGHT[3] + 6 * scale,
        )
        page.evaluate("document.getElementById('review-class').value = 'Left Lung'")
        click(page, "#review-save")
        assert saved(page) == "Saved: corrected as Left Lung.", page.evaluate(
            "document.getElementById('review-coords').textContent"
        )
        assert page.evaluate("document.getElementById('review-editor').hidden") is True

        # Add a box the model missed: drawn on the image, class Right Lung.
        drawn = (20.0, 30.0, 60.0, 90.0)
        click(page, "#review-add")
        page.wait_for("!document.getElementById('review-editor').hidden")
        drag(page, screen_point(page, *drawn[:2]), screen_point(page, *drawn[2:]))
        page.evaluate("document.getElementById('review-class').value = 'Right Lung'")
        click(page, "#review-save")
        assert saved(page) == "Saved: added as Right Lung."
        assert page.evaluate("document.querySelectorAll('#feedback tbody tr').length") == 3

        # Reloaded, the page shows the reviewer's verdicts from the catalog.
        page.goto(target)
        page.wait_for("window.radlakeReview !== undefined")
        assert page.evaluate(verdict) == "accepted"
        corrected = f"document.querySelector('{row.format(ids['Right Lung'])} .verdict')"
        assert page.evaluate(corrected + ".textContent").startswith("corrected Left Lung")
        assert page.evaluate("document.querySelectorAll('tr[data-added]').length") == 1
        labels = page.evaluate(
            "[...document.querySelectorAll('.review-mark text')].map(t => t.textContent).sort()"
        )
        assert labels == ["accepted", "added: Right Lung", "corrected: Left Lung"]

        rows = stored(site)
        assert [(r.verdict, r.class_name, r.prediction_id) for r in rows] == [
            ("accept", "Left Lung", ids["Left Lung"]),
            ("correct", "Left Lung", ids["Right Lung"]),
            ("add", "Right Lung", None),
        ]
        for record, expected in zip(rows, (LEFT, moved, drawn), strict=True):
            assert record.box is not None
            found = (record.box.x_min, record.box.y_min, record.box.x_max, record.box.y_max)
            assert found == pytest.approx(expected, abs=1.0), (record.verdict, found, expected)
        assert {(r.reviewer, r.channel, r.simulated) for r in rows} == {("reviewer", "web", False)}

        # Nothing more to find on this run: one more row, verdict none, no label.
        click(page, "[data-none-run]")
        assert saved(page) == "Saved: nothing missed."
        assert page.errors() == []
    assert [(r.verdict, r.class_name, r.box) for r in stored(site)][3:] == [("none", None, None)]
