"""The predict page and the image page's prediction toggles: server-rendered HTML
through TestClient, then headless Chromium against uvicorn on 127.0.0.1 (the
DevTools driver of tests/test_web.py): sign in, upload, predict, boxes drawn over the
rendering, screenshot not blank and showing the box colour."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select

from radlake.api.web import PALETTE
from radlake.catalog.db import session_factory
from radlake.catalog.inference_models import InferenceRun
from radlake.catalog.models import Image
from tests.test_predict_api import (
    Site,
    noise_png,
    site,  # noqa: F401 (the fixture)
)
from tests.test_predict_batch import LEFT
from tests.test_web import CHROMIUM, IMAGES_LOADED, chromium, csrf_of, serve


def signed_in(site: Site, role: str) -> TestClient:  # noqa: F811
    client = TestClient(site.app, follow_redirects=False)
    answer = client.post("/ui/signin", data={"token": site.tokens[role]})
    assert answer.status_code == 303, answer.text
    return client


def test_predict_page_lists_models_and_needs_a_session(site: Site) -> None:  # noqa: F811
    anonymous = TestClient(site.app, follow_redirects=False)
    answer = anonymous.get("/ui/predict")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/signin")
    curator = signed_in(site, "curator").get("/ui/predict")
    assert curator.status_code == 200
    page = curator.text
    # Every model's default, then each version; the production alias is named.
    values = re.findall(r'<option value="([^"]+)">', page)
    assert values == ["lungs", "lungs:2", "lungs:1", "overlap", "overlap:1"]
    assert "lungs (production: v1)" in page and "lungs:1 [production]" in page
    assert 'type="file" name="file"' in page
    assert f'name="csrf_token" value="{csrf_of(page)}"' in page.split('id="predict"')[1]
    # Sliders cannot leave [0, 1].
    sliders = re.findall(r'<input id="(score|iou)" type="range"[^>]*>', page)
    assert sliders == ["score", "iou"]
    for tag in re.findall(r'<input id="(?:score|iou)" type="range"[^>]*>', page):
        assert 'min="0"' in tag and 'max="1"' in tag
    # A viewer may run a model on a catalogued image, not upload one.
    viewer = signed_in(site, "viewer").get(f"/ui/predict?image_id={site.ids['a']}")
    assert 'type="file"' not in viewer.text
    assert f'name="image_id" min="1" step="1" value="{site.ids["a"]}" required' in viewer.text


def test_image_page_shows_predictions_per_version(site: Site) -> None:  # noqa: F811
    image_id = site.ids["a"]
    for model in ("lungs:1", "lungs:2"):
        assert site.predict(model=model, image_id=image_id).status_code == 200
    page = signed_in(site, "viewer").get(f"/ui/images/{image_id}").text
    toggles = re.findall(r'data-prediction="([^"]+)"', page)
    assert toggles == ["lungs:1", "lungs:2"]
    rects = re.findall(r'<rect class="pred" data-version="([^"]+)"', page)
    assert rects == ["lungs:1", "lungs:1", "lungs:2", "lungs:2"]
    assert re.findall(r'<rect class="box"', page) == []  # no ground truth mixed in
    # A viewer sees no predictions of an image whose pixels are withheld.
    burned = site.ids["burned"]
    assert site.predict("curator", model="lungs", image_id=burned).status_code == 200
    assert "data-prediction" not in signed_in(site, "viewer").get(f"/ui/images/{burned}").text
    assert "data-prediction" in signed_in(site, "curator").get(f"/ui/images/{burned}").text


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium absent: apt-get install -y chromium"
)
def test_predict_page_in_headless_chromium(site: Site, tmp_path: Path) -> None:  # noqa: F811
    started = time.monotonic()
    with serve(site.app) as base, chromium(tmp_path) as page:
        page.goto(f"{base}/ui/predict", landing=f"{base}/ui/signin?next=%2Fui%2Fpredict")
        page.evaluate(
            f"document.querySelector('input[name=token]').value = "
            f"{json.dumps(site.tokens['curator'])};"
            "document.querySelector('form.signin button').click()"
        )
        page.wait_for("location.pathname === '/ui/predict' && document.readyState === 'complete'")

        # A slider set past its end by a script stays at 1; the shown value follows.
        page.evaluate(
            "const s = document.getElementById('score'); s.value = '11';"
            "s.dispatchEvent(new Event('input'))"
        )
        assert page.evaluate("document.getElementById('score-value').textContent") == "1.00"
        page.evaluate(
            "const t = document.getElementById('score'); t.value = '0.85';"
            "t.dispatchEvent(new Event('input'))"
        )
        assert page.evaluate("document.getElementById('score-value').textContent") == "0.85"

        # Upload a new X-ray and predict: one box above 0.85 (Left Lung, 0.9).
        upload = tmp_path / "new chest.png"
        upload.write_bytes(noise_png("browser upload"))
        field = page.call(
            "Runtime.evaluate", {"expression": "document.querySelector('input[type=file]')"}
        )["result"]["objectId"]
        page.call("DOM.setFileInputFiles", {"files": [str(upload)], "objectId": field})
        page.evaluate("document.querySelector('#predict select').value = 'lungs:1'")
        page.evaluate("document.querySelector('#predict button').click()")
        page.wait_for("!document.getElementById('predict-result').hidden", timeout=30)
        page.wait_for(IMAGES_LOADED)
        drawn = "document.querySelectorAll('#predict-overlay rect.pred').length"
        assert page.evaluate(drawn) == 1
        summary = page.evaluate("document.getElementById('predict-summary').textContent")
        assert "1 box from lungs:1" in summary and "stored as a new image" in summary
        assert re.search(r"Inference \d+ ms", summary), summary
        box = page.evaluate(
            "[...'xywh'].map(k => +document.querySelector('#predict-overlay rect')"
            ".getAttribute(k === 'w' ? 'width' : k === 'h' ? 'height' : k))"
        )
        x0, y0, x1, y1 = LEFT
        assert box == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-3)
        # The overlay lies exactly over the rendering.
        frame = page.evaluate(
            "(() => { const a = document.getElementById('predict-annotated')"
            ".getBoundingClientRect(), b = document.getElementById('predict-overlay')"
            ".getBoundingClientRect(); return [a.width, a.height, b.width, b.height]; })()"
        )
        assert frame[0] == frame[2] > 100 and frame[1] == frame[3] > 50, frame
        shot = base64.b64decode(page.call("Page.captureScreenshot", {"format": "png"})["data"])
        (tmp_path / "predict-page.png").write_bytes(shot)

        # A refused request says why on the page (no image and no file chosen).
        page.goto(f"{base}/ui/predict")
        page.evaluate("document.querySelector('#predict button').click()")
        assert "Choose a file or give an image id" in page.wait_for(
            "document.getElementById('predict-status').textContent"
        )
        page.evaluate(
            "document.querySelector('input[name=image_id]').value = '987654';"
            "document.querySelector('#predict button').click()"
        )
        assert "Not run (404)" in page.wait_for(
            "document.getElementById('predict-status').textContent.replace('Running…', '')"
        )

        # The image page toggles the run's boxes.
        with session_factory(site.lake.engine)() as session:
            new_id = session.scalar(select(func.max(Image.id)))
        page.goto(f"{base}/ui/images/{new_id}")
        page.wait_for(IMAGES_LOADED)
        shown = "document.querySelectorAll('svg.overlay rect.pred:not(.hidden)').length"
        assert page.evaluate(shown) == 1
        page.evaluate("document.querySelector('input[data-prediction=\"lungs:1\"]').click()")
        assert page.evaluate(shown) == 0
        assert page.errors() == [
            "Failed to load resource: the server responded with a status of 404 (Not Found)"
        ]

    with session_factory(site.lake.engine)() as session:
        assert session.scalar(select(func.count(InferenceRun.id))) == 1
    pixels = np.asarray(PILImage.open(io.BytesIO(shot)).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (900, 1280, 3)
    assert float(pixels.std()) > 10  # not blank: the X-ray, the page, the box
    colour = PALETTE[0]  # class 0, Left Lung
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    near = int((np.abs(pixels - target).sum(axis=2) <= 24).sum())
    assert near > 100, f"{near} pixels of the box colour {colour}"
    assert time.monotonic() - started < 60
