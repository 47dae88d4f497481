"""POST /predict and GET /images/{id}/predictions over a real lake: register a model
built with onnx.helper, predict by image id (JSON and form) and by upload, read the
stored boxes back; thresholds act and are checked; roles, privacy and errors; one
ONNX Runtime session for concurrent requests to a real uvicorn server.

The images are 256 x 192 and the model (tests/test_predict_batch.py) answers a Left
Lung and a Right Lung box whose place in the stored image is known exactly.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from radlake.api.app import create_app
from radlake.auth import Role, create_token
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.inference_models import InferenceRun
from radlake.catalog.model_registry import promote, resolve_version
from radlake.catalog.models import Image, Label
from radlake.inference.registry import register_version
from radlake.inference.sessions import SESSIONS
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from tests.conftest import pydicom_file
from tests.inference_graphs import constant_head, yolov8_head
from tests.test_predict_batch import HEIGHT, LEFT, NAMES, RIGHT, WIDTH, model_file
from tests.test_web import serve

UPLOAD_LIMIT = 300_000


@dataclass
class Site:
    app: FastAPI
    client: TestClient
    lake: Lake
    tokens: dict[str, str]
    ids: dict[str, int]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def predict(self, role: str = "viewer", **body: Any) -> httpx.Response:
        return self.client.post("/predict", json=body, headers=self.auth(role))


def noise_png(seed: str, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    buffer = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def overlapping_model() -> bytes:
    """Two Left Lung boxes of IoU 0.6 (scores 0.9, 0.7) and a Right Lung box (0.5),
    in the 64 x 64 letterboxed input."""
    boxes = [(10.0, 23.0, 30.0, 43.0), (10.0, 23.0, 30.0, 35.5), (35.0, 13.0, 59.0, 51.0)]
    scores = np.array([[0.9, 0.0], [0.7, 0.0], [0.0, 0.5]])
    metadata = {"names": NAMES, "imgsz": "[64, 64]", "task": "detect"}
    return constant_head(yolov8_head(boxes, scores), metadata=metadata)


def register(lake: Lake, name: str, data: bytes) -> int:
    with transaction(lake.engine) as session:
        _, version = register_version(session, lake.store, name=name, onnx_bytes_or_path=data)
    return version


@pytest.fixture
def site(lake: Lake, tmp_path: Path) -> Iterator[Site]:
    files = []
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(noise_png(name))
        files.append(tmp_path / f"{name}.png")
    # Possibly burned-in text (BurnedInAnnotation YES): viewers may not see its pixels.
    burned = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    burned.SOPInstanceUID = generate_uid()
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "burned.dcm")
    files.append(tmp_path / "burned.dcm")
    ingest(
        files,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    with transaction(lake.engine) as session:
        tokens = {r.name.lower(): create_token(session, name=r.name.lower(), role=r) for r in Role}
        ids = {
            Path(image.source_key or "").stem: image.id
            for image in session.scalars(select(Image).order_by(Image.id))
        }
    assert set(ids) == {"a", "b", "c", "burned"}, ids
    assert register(lake, "lungs", model_file()) == 1
    assert register(lake, "lungs", model_file(scores=(0.9, 0.3))) == 2
    with transaction(lake.engine) as session:
        promote(session, name="lungs", version=1, alias="production")
    assert register(lake, "overlap", overlapping_model()) == 1
    app = create_app(lake, upload_limit=UPLOAD_LIMIT)
    with TestClient(app) as client:
        yield Site(app, client, lake, tokens, ids)


def boxes_of(answer: dict[str, Any]) -> list[tuple[str, tuple[float, ...]]]:
    return [
        (found["class_name"], tuple(round(v, 3) for v in found["box"].values()))
        for found in answer["detections"]
    ]


def runs(lake: Lake) -> int:
    with session_factory(lake.engine)() as session:
        return int(session.scalar(select(func.count(InferenceRun.id))) or 0)


def test_predict_by_id_stores_the_run_and_reads_it_back(site: Site) -> None:
    image_id = site.ids["a"]
    answer = site.predict(model="lungs", image_id=image_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # The production alias (version 1); boxes exact in the stored image's pixels.
    assert (body["model"], body["version"], body["image_id"]) == ("lungs", 1, image_id)
    assert boxes_of(body) == [("Left Lung", LEFT), ("Right Lung", RIGHT)]
    assert [round(d["score"], 5) for d in body["detections"]] == [0.9, 0.8]
    assert (body["width"], body["height"]) == (WIDTH, HEIGHT)
    assert body["latency_ms"] > 0 and body["uploaded"] is None
    assert (body["score_threshold"], body["iou_threshold"]) == (0.25, 0.45)
    # A form by id, version 2 pinned: a second run, kept apart per version.
    form = site.client.post(
        "/predict",
        data={"model": "lungs:2", "image_id": str(image_id), "score_threshold": "0.5"},
        headers=site.auth("viewer"),
    )
    assert form.status_code == 200, form.text
    assert boxes_of(form.json()) == [("Left Lung", LEFT)]  # Right Lung scored 0.3
    assert runs(site.lake) == 2

    stored = site.client.get(f"/images/{image_id}/predictions", headers=site.auth("viewer"))
    assert stored.status_code == 200, stored.text
    by_version = {run["version"]: run for run in stored.json()["runs"]}
    assert by_version[1]["run_id"] == body["run_id"]
    assert by_version[2]["run_id"] == form.json()["run_id"]
    assert [(p["class_name"], tuple(p["box"].values())) for p in by_version[1]["predictions"]] == [
        ("Left Lung", LEFT),
        ("Right Lung", RIGHT),
    ]
    assert len(by_version[2]["predictions"]) == 1 and by_version[2]["score_threshold"] == 0.5
    assert by_version[1]["caller"] is None  # who ran it: curators only
    curator = site.client.get(f"/images/{image_id}/predictions", headers=site.auth("curator"))
    assert {run["caller"] for run in curator.json()["runs"]} == {"api:viewer"}
    one = site.client.get(
        f"/images/{image_id}/predictions", params={"model": "lungs:2"}, headers=site.auth("viewer")
    )
    assert [run["version"] for run in one.json()["runs"]] == [2]
    # Predictions never become labels.
    with session_factory(site.lake.engine)() as session:
        assert session.scalar(select(func.count(Label.id))) == 0
    other = site.client.get(f"/images/{site.ids['b']}/predictions", headers=site.auth("viewer"))
    assert other.json() == {"image_id": site.ids["b"], "runs": []}


def test_upload_is_stored_once_and_predicted(site: Site) -> None:
    data = noise_png("uploaded")
    sent = {"file": ("chest x-ray (1).png", data, "image/png")}
    fields = {"model": "lungs@production", "score_threshold": "0.1", "iou_threshold": "0.5"}
    first = site.client.post("/predict", files=sent, data=fields, headers=site.auth("curator"))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["uploaded"]["already_present"] is False and body["uploaded"]["format"] == "png"
    assert body["image_id"] == body["uploaded"]["id"] not in site.ids.values()
    assert boxes_of(body) == [("Left Lung", LEFT), ("Right Lung", RIGHT)]
    again = site.client.post("/predict", files=sent, data=fields, headers=site.auth("curator"))
    assert again.json()["uploaded"] == body["uploaded"] | {"already_present": True}
    with session_factory(site.lake.engine)() as session:
        assert session.scalar(select(func.count(Image.id))) == len(site.ids) + 1
    stored = site.client.get(f"/images/{body['image_id']}/predictions", headers=site.auth("viewer"))
    assert stored.json()["runs"][0]["run_id"] == again.json()["run_id"]


def test_thresholds_act(site: Site) -> None:
    image_id = site.ids["b"]

    def found(model: str, score: float, iou: float) -> list[tuple[str, float]]:
        answer = site.predict(
            model=model, image_id=image_id, score_threshold=score, iou_threshold=iou
        )
        assert answer.status_code == 200, answer.text
        return [(d["class_name"], round(d["score"], 3)) for d in answer.json()["detections"]]

    assert found("lungs", 0.0, 0.45) == [("Left Lung", 0.9), ("Right Lung", 0.8)]
    assert found("lungs", 0.85, 0.45) == [("Left Lung", 0.9)]
    assert found("lungs", 1.0, 0.45) == []
    # Two Left Lung boxes of IoU 0.6: NMS at 0.5 keeps the better, at 0.7 both.
    assert found("overlap", 0.25, 0.5) == [("Left Lung", 0.9), ("Right Lung", 0.5)]
    assert found("overlap", 0.25, 0.7) == [
        ("Left Lung", 0.9),
        ("Left Lung", 0.7),
        ("Right Lung", 0.5),
    ]
    assert found("overlap", 0.6, 0.7) == [("Left Lung", 0.9), ("Left Lung", 0.7)]


@pytest.mark.parametrize(
    "field, value",
    [
        ("score_threshold", 11),
        ("score_threshold", 1.0001),
        ("score_threshold", -0.1),
        ("iou_threshold", 2),
        ("iou_threshold", "abc"),
        ("score_threshold", None),
        ("score_threshold", [0.5]),
        ("score_threshold", True),  # JSON's true is not a number
        ("iou_threshold", "0.5"),  # nor is a string in JSON (a form's text is read)
    ],
)
def test_out_of_range_thresholds_are_422_and_record_nothing(
    site: Site, field: str, value: object
) -> None:
    answer = site.predict(model="lungs", image_id=site.ids["a"], **{field: value})
    assert answer.status_code == 422, answer.text
    assert field in json.dumps(answer.json()["detail"])
    form = site.client.post(
        "/predict",
        data={"model": "lungs", "image_id": str(site.ids["a"]), field: str(value)},
        headers=site.auth("viewer"),
    )
    assert form.status_code == (200 if value == "0.5" else 422), form.text
    if value == "0.5":
        assert form.json()["iou_threshold"] == 0.5
        assert runs(site.lake) == 1
        return
    assert runs(site.lake) == 0


def test_nan_threshold_is_not_json(site: Site) -> None:
    body = '{"model": "lungs", "image_id": 1, "score_threshold": NaN}'
    answer = site.client.post(
        "/predict",
        content=body,
        headers={**site.auth("viewer"), "Content-Type": "application/json"},
    )
    assert answer.status_code == 400 and "not JSON" in answer.json()["detail"]
    assert runs(site.lake) == 0


def test_unknown_models_and_images_are_404_malformed_ones_422(site: Site) -> None:
    image_id = site.ids["a"]
    for model in ("nosuch", "lungs:9", "lungs@staging"):
        answer = site.predict(model=model, image_id=image_id)
        assert answer.status_code == 404, (model, answer.text)
        assert "lungs@staging" not in answer.text or "staging" in answer.json()["detail"]
    for model in ("a@b:c", "", "x" * 500, "lungs:two"):
        answer = site.predict(model=model, image_id=image_id)
        assert answer.status_code == 422, (model, answer.text)
        assert len(answer.text) < 1000  # hostile input is quoted short
    missing = site.predict(model="lungs", image_id=987654)
    assert missing.status_code == 404 and "987654" in missing.json()["detail"]
    gone = site.client.get("/images/987654/predictions", headers=site.auth("viewer"))
    assert gone.status_code == 404
    unknown = site.client.get(
        f"/images/{image_id}/predictions", params={"model": "nosuch"}, headers=site.auth("viewer")
    )
    assert unknown.status_code == 404
    # An unknown model is refused before an upload is stored.
    upload = site.client.post(
        "/predict",
        files={"file": ("new.png", noise_png("never stored"))},
        data={"model": "nosuch"},
        headers=site.auth("curator"),
    )
    assert upload.status_code == 404
    with session_factory(site.lake.engine)() as session:
        assert session.scalar(select(func.count(Image.id))) == len(site.ids)
    assert runs(site.lake) == 0


def test_tokens_and_roles(site: Site) -> None:
    image_id = site.ids["a"]
    body = {"model": "lungs", "image_id": image_id}
    assert site.client.post("/predict", json=body).status_code == 401
    bad = site.client.post("/predict", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and isinstance(bad.json()["detail"], str)
    upload = {"file": ("x.png", noise_png("x"))}
    assert site.client.post("/predict", files=upload, data={"model": "lungs"}).status_code == 401
    assert site.client.get(f"/images/{image_id}/predictions").status_code == 401
    # A viewer runs a model on a catalogued image, but may not add an upload to the lake.
    assert site.predict("viewer", **body).status_code == 200
    refused = site.client.post(
        "/predict", files=upload, data={"model": "lungs"}, headers=site.auth("viewer")
    )
    assert refused.status_code == 403 and "curator" in refused.json()["detail"]
    with session_factory(site.lake.engine)() as session:
        assert session.scalar(select(func.count(Image.id))) == len(site.ids)
    assert runs(site.lake) == 1


def test_burned_in_pixels_are_not_run_or_shown_for_viewers(site: Site) -> None:
    burned = site.ids["burned"]
    asked = site.predict("viewer", model="lungs", image_id=burned)
    assert asked.status_code == 403 and "burned-in" in asked.json()["detail"]
    assert runs(site.lake) == 0
    curator = site.predict("curator", model="lungs", image_id=burned)
    assert curator.status_code == 200, curator.text
    path = f"/images/{burned}/predictions"
    assert site.client.get(path, headers=site.auth("viewer")).status_code == 403
    assert len(site.client.get(path, headers=site.auth("curator")).json()["runs"]) == 1


def test_hostile_bodies_get_a_reason(site: Site) -> None:
    auth = site.auth("curator")
    image_id = site.ids["a"]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
        ({"content": b"model=lungs", "headers": {"Content-Type": "text/plain"}}, 422, "JSON body"),
        ({"json": {"model": "lungs"}}, 422, "image_id"),
        ({"json": {"model": "lungs", "image_id": image_id, "extra": 1}}, 422, "extra"),
        ({"json": {"model": "lungs", "image_id": 2**70}}, 422, "image_id"),
        ({"json": {"model": "lungs", "image_id": str(image_id)}}, 422, "image_id"),
        ({"json": {"model": 7, "image_id": image_id}}, 422, "model"),
        ({"json": [1, 2]}, 422, "valid dictionary"),
        ({"data": {"model": "lungs"}}, 422, "either a file or an image_id"),
        (
            {"data": {"model": "lungs", "image_id": str(image_id)}, "files": {"file": ("a", b"1")}},
            422,
            "either a file or an image_id",
        ),
        ({"data": {"model": "lungs"}, "files": {"picture": ("a.png", b"1")}}, 422, "'file'"),
        ({"data": {"model": "lungs"}, "files": {"file": ("empty.png", b"")}}, 422, "empty"),
        (
            {"data": {"model": "lungs"}, "files": {"file": ("junk.png", b"hello, text")}},
            422,
            "",
        ),
        (
            {
                "data": {"model": "lungs"},
                "files": {"file": ("big.png", b"\0" * (UPLOAD_LIMIT + 1))},
            },
            413,
            "limit",
        ),
    ]
    for kwargs, status, reason in cases:
        answer = site.client.post(
            "/predict", headers={**auth, **kwargs.pop("headers", {})}, **kwargs
        )
        assert answer.status_code == status, (kwargs, answer.text)
        assert reason in json.dumps(answer.json()["detail"]), answer.text
    with session_factory(site.lake.engine)() as session:
        assert session.scalar(select(func.count(Image.id))) == len(site.ids)
    assert runs(site.lake) == 0


def test_a_model_file_that_does_not_match_is_a_server_fault_with_a_reason(site: Site) -> None:
    register(site.lake, "broken", model_file(scores=(0.6, 0.6)))  # a file no test loaded
    with session_factory(site.lake.engine)() as session:
        key = resolve_version(session, ref="broken").store_key
    site.lake.store.put_bytes(key, b"not the registered file")
    answer = site.predict(model="broken", image_id=site.ids["a"])
    assert answer.status_code == 500
    assert "sha256" in answer.json()["detail"] and "Traceback" not in answer.text
    assert runs(site.lake) == 0
    # A file gone from the store is the lake's fault too, never a 404 to the caller.
    register(site.lake, "gone", model_file(scores=(0.65, 0.6)))
    with session_factory(site.lake.engine)() as session:
        key = resolve_version(session, ref="gone").store_key
    site.lake.store.delete(key)
    answer = site.predict(model="gone", image_id=site.ids["a"])
    assert answer.status_code == 500 and "missing from the store" in answer.json()["detail"]


def test_concurrent_requests_share_one_session(site: Site) -> None:
    """Concurrent requests to a real server: one ONNX Runtime session is built for a
    model new to the process, and every request gets the exact boxes."""
    register(site.lake, "fresh", model_file(scores=(0.7, 0.6)))  # a file no test loaded
    loads = SESSIONS.loads
    image_ids = [site.ids[name] for name in ("a", "b", "c")] * 4
    with serve(site.app) as base, httpx.Client(base_url=base, timeout=60) as client:

        def ask(image_id: int) -> dict[str, Any]:
            body = {"model": "fresh", "image_id": image_id}
            answer = client.post("/predict", json=body, headers=site.auth("viewer"))
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, image_ids))
    assert SESSIONS.loads == loads + 1
    assert all(boxes_of(a) == [("Left Lung", LEFT), ("Right Lung", RIGHT)] for a in answers)
    assert len({a["run_id"] for a in answers}) == len(image_ids) == runs(site.lake)


def test_the_document_declares_the_answers(site: Site) -> None:
    document = site.app.openapi()
    post = document["paths"]["/predict"]["post"]
    assert {"401", "403", "404", "413", "422"} <= set(post["responses"])
    assert set(post["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictionResult"}
    get = document["paths"]["/images/{image_id}/predictions"]["get"]
    assert {"401", "403", "404", "422"} <= set(get["responses"])
