"""No request leaves a temporary file behind, answered or failed (issue 8, hygiene)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import fault_proxy_fixture  # noqa: F401 (the fault_proxy fixture)
from tests.test_api import Api, api  # noqa: F401 (the api fixture)


def test_export_requests_leave_no_temporary_folder(
    api: Api,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    body = {"selection": {"format": "dicom"}, "splits": "training=0.5,test=0.5", "seed": 3}
    made = api.client.post("/datasets/ds/versions", json=body, headers=api.auth("curator"))
    assert made.status_code == 201, made.text
    base = "/datasets/ds/versions/1/export"

    ok = api.client.get(base, params={"format": "coco"}, headers=api.auth("viewer"))
    failed = api.client.get(base, params={"split": "nope"}, headers=api.auth("viewer"))

    assert ok.status_code == 200 and ok.content[:2] == b"PK"
    assert failed.status_code == 404, failed.text
    assert list(scratch.iterdir()) == []


def test_errors_quote_hostile_input_only_in_short(api: Api) -> None:  # noqa: F811
    digits = "9" * 4096
    answer = api.client.get(f"/images/{digits}", headers=api.auth("viewer"))
    assert answer.status_code == 422
    assert digits not in answer.text and len(answer.text) < 1000
    long_window = api.client.get(
        "/images/1/render", params={"window": "4" * 5000}, headers=api.auth("viewer")
    )
    assert long_window.status_code == 422 and len(long_window.text) < 1000


def test_a_bug_answers_500_and_logs_no_data(
    api: Api,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "DOE^JOHN_ZZPID00042"

    @api.app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"duplicate key (name)=({secret})")

    with caplog.at_level("DEBUG"):
        answer = api.client.get("/boom", headers=api.auth("viewer"))
    assert answer.status_code == 500 and answer.json() == {"detail": "internal error"}
    assert "RuntimeError" in caplog.text and secret not in caplog.text
    assert secret not in answer.text


def test_the_api_document_needs_a_token_and_no_page_loads_from_outside(
    api: Api,  # noqa: F811
) -> None:
    assert api.client.get("/openapi.json").status_code == 401
    document = api.client.get("/openapi.json", headers=api.auth("viewer"))
    assert document.status_code == 200 and document.json()["info"]["title"] == "radlake"
    for page in ("/docs", "/redoc"):  # FastAPI's pages fetch scripts from a CDN: off
        assert api.client.get(page, headers=api.auth("viewer")).status_code == 404


def test_a_study_is_one_query_for_its_images_in_series_order(
    api: Api,  # noqa: F811
    tmp_path: Path,
) -> None:
    import pydicom
    from pydicom.uid import generate_uid
    from sqlalchemy import event

    from radlake.pipelines.executor import SerialExecutor
    from radlake.pipelines.ingest import ingest
    from tests.conftest import pydicom_file

    study_uid = generate_uid()
    folder = tmp_path / "study"
    folder.mkdir()
    for series_index in range(3):
        series_uid = generate_uid()
        for instance in (2, 1):
            ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), instance
            ds.save_as(folder / f"s{series_index}-{instance}.dcm")
    lake = api.lake
    ingest(
        [folder],
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(lake.engine, "before_cursor_execute", count)
    try:
        study = api.client.get(f"/studies/{study_uid}", headers=api.auth("viewer")).json()
    finally:
        event.remove(lake.engine, "before_cursor_execute", count)
    assert [len(s["images"]) for s in study["series"]] == [2, 2, 2]
    for member in study["series"]:
        alone = api.client.get(f"/series/{member['series_uid']}", headers=api.auth("viewer"))
        assert [i["id"] for i in member["images"]] == [i["id"] for i in alone.json()["images"]]
    image_queries = [s for s in statements if s.lstrip().upper().startswith("SELECT IMAGE.")]
    assert len(image_queries) == 1, image_queries


def test_revalidation_follows_rfc_9110_and_originals_serve_ranges(
    api: Api,  # noqa: F811
) -> None:
    from tests.test_api import first_id

    curator = api.auth("admin")  # originals are for admins (issue 13)
    image_id = first_id(api, modality="CT")
    path = f"/images/{image_id}/original"
    whole = api.client.get(path, headers=curator)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    etag, data = whole.headers["etag"], whole.content
    for tags in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        again = api.client.get(path, headers=curator | {"If-None-Match": tags})
        assert again.status_code == 304 and again.content == b"", tags
    assert api.client.get(path, headers=curator | {"If-None-Match": '"x"'}).status_code == 200

    part = api.client.get(path, headers=curator | {"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = api.client.get(path, headers=curator | {"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    beyond = api.client.get(path, headers=curator | {"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    stale = api.client.get(path, headers=curator | {"Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == data

    render = f"/images/{image_id}/render"
    first = api.client.get(render, headers=curator)
    listed = api.client.get(
        render, headers=curator | {"If-None-Match": f'"a", {first.headers["etag"]}'}
    )
    assert listed.status_code == 304


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # JSON's 1e400 is infinity and "\ud800" a lone surrogate: quoting either back in
        # the 422 made it a 500.
        ("/cohorts", '{"name": "c", "filter": {"min_rows": 1e400}}'),
        ("/cohorts", '{"name": "\\ud800", "filter": {}}'),
        ("/datasets/ds/versions", '{"selection": {"min_rows": -1e400}}'),
        ("/datasets/ds/versions", '{"selection": {"view": "\\ud800"}}'),
        ("/cohorts", '{"name": "c", "filter": {"attr": 1}, "\\udfff": 1}'),
        # PostgreSQL refuses NUL in text: a filter value holding one was a 500 there.
        ("/datasets/ds/versions", '{"selection": {"view": "P\\u0000A"}}'),
        ("/cohorts", '{"name": "c", "filter": {"attributes": [["k\\u0000", "v"]]}}'),
        # An unknown key of the body is reported, not dropped: with "selecton" a
        # version of the whole lake was made, with "fliter" a cohort of everything.
        ("/datasets/ds/versions", '{"selecton": {"modality": "CT"}}'),
        ("/cohorts", '{"name": "c", "fliter": {"modality": "CT"}}'),
    ],
)
def test_hostile_json_bodies_are_a_422_that_json_can_carry(
    api: Api,  # noqa: F811
    path: str,
    body: str,
) -> None:
    headers = api.auth("curator") | {"Content-Type": "application/json"}
    answer = api.client.post(path, content=body.encode(), headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"]
    assert api.client.get("/cohorts", headers=headers).json() == []
    assert api.client.get("/datasets", headers=headers).json() == []


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-rf", "_x"])
def test_new_dataset_and_cohort_names_start_with_a_letter_or_digit(
    api: Api,  # noqa: F811
    name: str,
) -> None:
    # '..' was accepted as a dataset name and could then not be exported to the store
    # (exports/<dataset>/...); as a cohort it downloaded as '...zip'.
    from urllib.parse import quote

    curator = api.auth("curator")
    path = "/datasets/" + quote(name, safe="").replace(".", "%2E") + "/versions"
    made = api.client.post(path, json={"selection": {"modality": "CT"}}, headers=curator)
    assert made.status_code == 422, made.text
    saved = api.client.post("/cohorts", json={"name": name, "filter": {}}, headers=curator)
    assert saved.status_code == 422, saved.text
    assert api.client.get("/datasets", headers=curator).json() == []
    assert api.client.get("/cohorts", headers=curator).json() == []
    fine = api.client.post("/cohorts", json={"name": "x." + name, "filter": {}}, headers=curator)
    assert fine.status_code == 201, fine.text


def test_a_dead_catalog_is_a_503_fault_and_the_log_holds_no_sql(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A PostgreSQL catalog on a port where nothing listens: every route that reads the
    # catalog answered 500 "internal error", as if radlake had a bug.
    from fastapi.testclient import TestClient

    from radlake.api.app import create_app
    from radlake.catalog.db import make_engine
    from radlake.imaging.deid import Pseudonymizer
    from radlake.lake import Lake
    from radlake.storage.store import open_store
    from tests.conftest import SECRET

    engine = make_engine("postgresql://radlake@127.0.0.1:1/test")
    lake = Lake(engine, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    bearer = {"Authorization": "Bearer rl_" + "x" * 43}
    with TestClient(create_app(lake)) as client, caplog.at_level("DEBUG"):
        assert client.get("/health").status_code == 200
        answers = [
            client.get("/images", params={"modality": "CT"}, headers=bearer),
            client.get("/images/1/original", headers=bearer),
            client.post("/cohorts", json={"name": "c", "filter": {}}, headers=bearer),
            client.get("/ui", headers={"Cookie": "radlake_session=rs_" + "y" * 43}),
            client.post("/ui/signin", data={"token": "rl_" + "z" * 43}),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"].startswith("fault: the catalog")
        assert answer.headers["retry-after"]
    assert "catalog fault (OperationalError)" in caplog.text
    assert "SELECT" not in caplog.text and "rl_" not in caplog.text
    engine.dispose()


def test_a_catalog_file_that_is_not_a_database_is_a_503_fault(tmp_path: Path) -> None:
    # A SQLite catalog overwritten with noise: SQLite raises a bare DatabaseError ("file
    # is not a database"), which answered 500 "internal error" on every route.
    from fastapi.testclient import TestClient

    from radlake.api.app import create_app
    from radlake.catalog.db import make_engine
    from radlake.imaging.deid import Pseudonymizer
    from radlake.lake import Lake
    from radlake.storage.store import open_store
    from tests.conftest import SECRET

    catalog = tmp_path / "catalog.sqlite"
    catalog.write_bytes(bytes(range(256)) * 400)
    engine = make_engine(f"sqlite:///{catalog}")
    lake = Lake(engine, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    bearer = {"Authorization": "Bearer rl_" + "x" * 43}
    with TestClient(create_app(lake)) as client:
        answers = [
            client.get("/images", headers=bearer),
            client.post("/predictions/1/feedback", json={"verdict": "accept"}, headers=bearer),
            client.get("/review/queue", params={"model": "m"}, headers=bearer),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"].startswith("fault: the catalog")
    engine.dispose()


def test_a_catalog_server_that_never_answers_is_a_503_in_bounded_time(
    tmp_path: Path,
    fault_proxy: Any,
) -> None:
    # A PostgreSQL that accepts connections and never answers held every request (and
    # its worker thread) forever: connecting has a timeout now.
    import time

    from fastapi.testclient import TestClient
    from sqlalchemy.engine import make_url

    from radlake.api.app import create_app
    from radlake.auth import Role, create_token
    from radlake.catalog.db import CONNECT_TIMEOUT_SECONDS, make_engine, transaction, upgrade
    from radlake.imaging.deid import Pseudonymizer
    from radlake.lake import Lake
    from radlake.storage.store import open_store
    from tests.conftest import POSTGRES_URL, SECRET, server_database

    for url in server_database(POSTGRES_URL):
        real = make_url(url)
        proxy = fault_proxy((real.host or "127.0.0.1", real.port or 5432))
        engine = make_engine(real.set(port=proxy.port).render_as_string(hide_password=False))
        upgrade(engine)
        with transaction(engine) as session:
            token = create_token(session, name="v", role=Role.VIEWER)
        lake = Lake(engine, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
        bearer = {"Authorization": f"Bearer {token}"}
        with TestClient(create_app(lake)) as client:
            assert client.get("/images", headers=bearer).status_code == 200
            proxy.set_mode("stall")  # cuts pooled connections; new ones hang
            started = time.monotonic()
            answer = client.get("/images", headers=bearer)
            took = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert took < CONNECT_TIMEOUT_SECONDS * 2 + 5
        assert proxy.counts["stall"] > 0
        engine.dispose()
