"""The REST API through an HTTP client, on SQLite and PostgreSQL, with real images."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select

from radlake.api.app import create_app
from radlake.auth import Role, create_token
from radlake.catalog.db import make_engine, session_factory, transaction, upgrade
from radlake.catalog.models import AuditEvent, Image, Quarantine
from radlake.catalog.queries import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store
from tests.conftest import POSTGRES_URL, SECRET, pydicom_file, server_database

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "US1_J2KR.dcm")
UPLOAD_LIMIT = 400_000


@dataclass
class Api:
    client: TestClient
    lake: Lake
    tokens: dict[str, str]
    app: FastAPI

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def build(url: str, root: Path) -> Iterator[Api]:
    engine = make_engine(url)
    upgrade(engine)
    lake = Lake(engine, open_store((root / "store").as_uri()), Pseudonymizer(SECRET))
    files = [pydicom_file(n) for n in SAMPLES if pydicom_file(n).exists()]
    ingest(
        files,
        engine=engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    with transaction(engine) as session:
        tokens = {
            role.name.lower(): create_token(session, name=role.name.lower(), role=role)
            for role in Role
        }
    app = create_app(lake, upload_limit=UPLOAD_LIMIT)
    with TestClient(app) as client:
        yield Api(client, lake, tokens, app)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    if request.param == "sqlite":
        (tmp_path / "db").mkdir()
        yield from build(f"sqlite:///{tmp_path / 'db' / 'catalog.sqlite'}", tmp_path)
    else:
        for url in server_database(POSTGRES_URL):
            yield from build(url, tmp_path)


def first_id(api: Api, **params: str) -> int:
    body = api.client.get("/images", params=params, headers=api.auth("viewer")).json()
    return int(body["images"][0]["id"])


def test_health_needs_no_token(api: Api) -> None:
    assert api.client.get("/health").json()["status"] == "ok"


def test_query_filters_pagination_and_detail(api: Api) -> None:
    headers = api.auth("viewer")
    everything = api.client.get("/images", headers=headers).json()
    assert everything["total"] == 4
    ct = api.client.get("/images", params={"modality": "CT"}, headers=headers).json()
    assert ct["total"] == 1 and ct["images"][0]["modality"] == "CT"
    pages, cursor = [], 0
    while True:
        page = api.client.get(
            "/images", params={"limit": 1, "cursor": cursor}, headers=headers
        ).json()
        pages += [image["id"] for image in page["images"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert pages == sorted(image["id"] for image in everything["images"])
    detail = api.client.get(f"/images/{pages[0]}", headers=headers).json()
    assert len(detail["sha256"]) == 64 and "original_key" not in detail
    series = api.client.get(f"/series/{detail['series']['series_uid']}", headers=headers).json()
    assert pages[0] in [image["id"] for image in series["images"]]
    study = api.client.get(f"/studies/{detail['study_uid']}", headers=headers).json()
    assert study["series"]


def test_pixels_original_render_and_etag(api: Api) -> None:
    image_id = first_id(api, modality="CT")
    headers = api.auth("viewer")
    original = api.client.get(f"/images/{image_id}/original", headers=api.auth("admin"))
    assert original.content == pydicom_file("CT_small.dcm").read_bytes()
    preview = api.client.get(f"/images/{image_id}/render", headers=headers)
    assert preview.headers["content-type"] == "image/png"
    assert PILImage.open(io.BytesIO(preview.content)).size == (512, 512)
    again = api.client.get(
        f"/images/{image_id}/render", headers=headers | {"If-None-Match": preview.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    jpeg = api.client.get(
        f"/images/{image_id}/render",
        params={"format": "jpeg", "size": 64, "window": "40,400"},
        headers=headers,
    )
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert PILImage.open(io.BytesIO(jpeg.content)).size == (64, 64)
    dose = first_id(api, modality="RTDOSE")
    bad = api.client.get(f"/images/{dose}/render", params={"slice": 99}, headers=headers)
    assert bad.status_code == 422 and "0..14" in bad.json()["detail"]
    with session_factory(api.lake.engine)() as session:
        actions = list(session.scalars(select(AuditEvent.action)))
    assert "download.original" in actions


def test_zip_of_a_query_matches_it_exactly(api: Api) -> None:
    response = api.client.get("/images.zip", params={"modality": "MR"}, headers=api.auth("viewer"))
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    names = archive.namelist()
    mr_ids = [
        image["id"]
        for image in api.client.get(
            "/images", params={"modality": "MR"}, headers=api.auth("viewer")
        ).json()["images"]
    ]
    assert names == [f"images/{i}.png" for i in mr_ids] + ["metadata.csv"]
    rows = archive.read("metadata.csv").decode().splitlines()
    assert len(rows) == 1 + len(mr_ids)


def test_curators_create_dataset_versions(api: Api) -> None:
    body = {"selection": {"format": "dicom"}, "splits": "training=0.5,test=0.5", "seed": 3}
    made = api.client.post("/datasets/mr/versions", json=body, headers=api.auth("curator"))
    assert made.status_code == 201, made.text
    assert (made.json()["version"], made.json()["created"]) == (1, True)
    assert made.json()["leakage"]["ok"] is True
    same = api.client.post("/datasets/mr/versions", json=body, headers=api.auth("curator"))
    assert same.json()["created"] is False
    shown = api.client.get("/datasets/mr/versions/1", headers=api.auth("viewer")).json()
    assert sum(shown["splits"].values()) == 4
    empty = api.client.post(
        "/datasets/x/versions", json={"selection": {"modality": "XA"}}, headers=api.auth("curator")
    )
    assert empty.status_code == 422 and "matches no image" in empty.json()["detail"]
    bad = api.client.post(
        "/datasets/x/versions", json={"splits": "a=2,b=x"}, headers=api.auth("curator")
    )
    assert bad.status_code == 422


def test_cohorts_save_and_download(api: Api) -> None:
    created = api.client.post(
        "/cohorts",
        json={"name": "ct_only", "filter": {"modality": "CT"}},
        headers=api.auth("curator"),
    )
    assert created.status_code == 201
    assert (
        api.client.post(
            "/cohorts", json={"name": "ct_only", "filter": {}}, headers=api.auth("curator")
        ).status_code
        == 409
    )
    listed = api.client.get("/cohorts", headers=api.auth("viewer")).json()
    assert [c["name"] for c in listed] == ["ct_only"]
    archive = zipfile.ZipFile(
        io.BytesIO(api.client.get("/cohorts/ct_only.zip", headers=api.auth("viewer")).content)
    )
    assert len(archive.namelist()) == 2
    bad = api.client.post(
        "/cohorts", json={"name": "x", "filter": {"colour": "blue"}}, headers=api.auth("curator")
    )
    assert bad.status_code == 422


def state(api: Api) -> tuple[int, int, list[str]]:
    with session_factory(api.lake.engine)() as session:
        images = int(session.scalar(select(func.count(Image.id))) or 0)
        quarantined = int(session.scalar(select(func.count(Quarantine.id))) or 0)
    return images, quarantined, sorted(api.lake.store.list())


def test_upload_good_and_hostile(api: Api, tmp_path: Path) -> None:
    headers = api.auth("curator")
    buffer = io.BytesIO()
    PILImage.new("L", (40, 30), 128).save(buffer, "PNG")
    created = api.client.post(
        "/images", files={"file": ("../../evil name.dcm", buffer.getvalue())}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["format"] == "png"  # content decides, never the name
    assert not list(Path("/").glob("evil name*"))
    before = state(api)
    zip_bomb = io.BytesIO()
    with zipfile.ZipFile(zip_bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * 5_000_000)
    hostile = {
        "not an image named .png": (b"hello, this is text", 422),
        "zip bomb": (zip_bomb.getvalue(), 422),
        "truncated DICOM": (pydicom_file("CT_small.dcm").read_bytes()[:3000], 422),
        "empty": (b"", 422),
        "oversized": (b"\0" * (UPLOAD_LIMIT + 10), 413),
    }
    for label, (data, code) in hostile.items():
        answer = api.client.post("/images", files={"file": ("x.png", data)}, headers=headers)
        assert answer.status_code == code, (label, answer.text)
        assert "detail" in answer.json() and "Traceback" not in answer.text
    assert state(api) == before  # nothing on disk or in the catalog changed


def test_hostile_paths_and_parameters(api: Api) -> None:
    headers = api.auth("viewer")
    for path in (
        "/images/../../etc/passwd",
        "/images/..%2F..%2Fetc%2Fpasswd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/-1",
        "/images/1e9",
        "/series/..%2F..",
        "/images/99999999",
    ):
        answer = api.client.get(path, headers=headers)
        assert 400 <= answer.status_code < 500, path
    for params in (
        {"limit": 10**9},
        {"limit": 0},
        {"cursor": -1},
        {"min_size": -5},
        {"attr": "novalue"},
    ):
        answer = api.client.get("/images", params=params, headers=headers)
        assert answer.status_code == 422, params


# In order: each can what those before can. A dicomweb token reads /dicomweb only.
ROLES = ("dicomweb", "viewer", "reviewer", "curator", "admin")
ROUTES = {
    ("GET", "/images"): "viewer",
    ("GET", "/images/{id}"): "viewer",
    ("GET", "/images/{id}/original"): "admin",  # full identifying headers (issues 8, 13)
    ("GET", "/images/{id}/dicom"): "viewer",  # the de-identified object (issue 13)
    ("GET", "/images/{id}/render"): "viewer",
    ("GET", "/images/{id}/labels"): "viewer",
    ("GET", "/images/{id}/predictions"): "viewer",
    # Any role runs a model on an image it may see; uploading one needs a curator
    # (tests/test_predict_api.py).
    ("POST", "/predict"): "viewer",
    ("GET", "/series/{series}"): "viewer",
    ("GET", "/studies/{study}"): "viewer",
    ("GET", "/jobs"): "viewer",
    ("GET", "/quarantine"): "viewer",
    ("GET", "/stats"): "viewer",
    ("GET", "/datasets"): "viewer",
    ("GET", "/images.zip"): "viewer",
    ("GET", "/cohorts"): "viewer",
    ("POST", "/cohorts"): "curator",
    ("POST", "/images"): "curator",
    ("GET", "/audit"): "admin",
    ("GET", "/datasets/{name}/versions/{version}"): "viewer",
    ("GET", "/datasets/{name}/versions/{version}/export"): "viewer",
    ("GET", "/datasets/{name}/versions/{version}/splits/{split}.zip"): "viewer",
    ("GET", "/cohorts/{name}.zip"): "viewer",
    ("DELETE", "/cohorts/{name}"): "curator",
    ("POST", "/datasets/{name}/versions"): "curator",
    # Feedback (issue 11): reviewers file it, any role reads an image's
    # (tests/test_feedback_api.py).
    ("POST", "/predictions/{prediction_id}/feedback"): "reviewer",
    ("POST", "/images/{id}/feedback"): "reviewer",
    ("GET", "/images/{id}/feedback"): "viewer",
    ("GET", "/review/queue"): "reviewer",
    # DICOMweb (issue 13): dicomweb tokens and viewers search and retrieve
    # de-identified objects, curators store (tests/test_dicomweb.py has its own matrix
    # on real data).
    **{
        ("GET", "/dicomweb" + path): "dicomweb"
        for path in (
            "/studies",
            "/series",
            "/instances",
            "/studies/{study}",
            "/studies/{study}/metadata",
            "/studies/{study}/series",
            "/studies/{study}/instances",
            "/studies/{study}/series/{series}",
            "/studies/{study}/series/{series}/metadata",
            "/studies/{study}/series/{series}/instances",
            "/studies/{study}/series/{series}/instances/{instance}",
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            "/studies/{study}/series/{series}/instances/{instance}/rendered",
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}",
        )
    },
    ("POST", "/dicomweb/studies"): "curator",
    ("POST", "/dicomweb/studies/{study}"): "curator",
}


def test_auth_matrix_every_route_every_role(api: Api) -> None:
    registered = {
        (method.upper(), path)
        for path, operations in api.app.openapi()["paths"].items()
        if path != "/health"
        for method in operations
    }
    image_id = first_id(api, modality="CT")
    detail = api.client.get(f"/images/{image_id}", headers=api.auth("viewer")).json()
    with transaction(api.lake.engine) as session:
        # CT only: a viewer's zip of an image that may show burned-in patient data (the
        # Secondary Capture sample) is refused for that reason, not for the role.
        create_version(
            session,
            VersionRequest("ds", ImageFilter(modality=("CT",)), SplitSpec.parse("only=1.0")),
        )
    api.client.post(
        "/cohorts", json={"name": "all", "filter": {"modality": "CT"}}, headers=api.auth("curator")
    )
    values = {
        "image_id": str(image_id),
        "uid": detail["series"]["series_uid"],
        "version": "1",
        "split": "only",
        "prediction_id": "1",  # none exists: a 404 past the role check
        "study": "1.2.3",  # no such de-identified study: a 404 past the role check
        "series": "1.2.4",
        "instance": "1.2.5",
        "frame": "1",
        "frame_list": "1",
    }
    checked = 0
    for method, path in sorted(registered):
        concrete = path.replace("{name}", "all" if path.startswith("/cohorts") else "ds")
        for key, value in values.items():
            concrete = concrete.replace("{" + key + "}", value)
        if path.startswith("/studies/"):
            concrete = path.replace("{uid}", detail["study_uid"])
        assert "{" not in concrete, concrete
        needed = next(
            (
                v
                for (m, p), v in ROUTES.items()
                if m == method
                and (
                    p  # DICOMweb paths keep their own names ({study}, {series}, ...)
                    if p.startswith("/dicomweb")
                    else p.replace("{id}", "{image_id}")
                    .replace("{series}", "{uid}")
                    .replace("{study}", "{uid}")
                )
                == path
            ),
            None,
        )
        assert needed is not None, f"route {method} {path} is missing from the auth matrix"
        checked += 1
        for role, expected_ok in (
            ("none", False),
            ("bad", False),
            *((held, ROLES.index(held) >= ROLES.index(needed)) for held in ROLES),
        ):
            headers = (
                {}
                if role == "none"
                else {"Authorization": "Bearer rl_not-a-token"}
                if role == "bad"
                else api.auth(role)
            )
            answer = api.client.request(
                method,
                concrete + ("?modality=CT" if path == "/images.zip" else ""),
                headers=headers,
                json=(
                    {"name": f"c{role}", "filter": {}}
                    if "cohorts" in path
                    else {"splits": "only=1.0"}
                    if method == "POST" and "datasets" in path
                    else None
                ),
            )
            code = answer.status_code
            if role in ("none", "bad"):
                assert code == 401, (method, path, role, code)
            elif not expected_ok:
                assert code == 403, (method, path, role, code)
            else:
                assert code not in (401, 403), (method, path, role, code)
    assert checked == len(ROUTES)
