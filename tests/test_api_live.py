"""The API over a real socket: uvicorn in a thread on 127.0.0.1, an HTTP client outside.

What an in-process client cannot show: that a zip streams (its first bytes cross the
wire long before its last), that conditional requests revalidate over HTTP, and that
the 401 carries its challenge header through a real server.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image as PILImage
from pydicom.uid import generate_uid

from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from tests.conftest import pydicom_file
from tests.test_api import build

REPLICATED = ("CT_small.dcm", "MR_small.dcm")
# The lake also holds US and Secondary Capture samples, whose pixels viewers may not
# have (burned-in data): whole-lake zips are a curator's.
CURATOR = "curator"
COPIES = 28  # per file: 2 x 28 replicas + the 4 images build() catalogues = 60
# Every entry rendered on the fly, at 1024 px, as PNG.
ZIP_PARAMS = {"content": "rendered", "size": "1024", "image_format": "png"}


@dataclass(frozen=True, slots=True)
class LiveServer:
    url: str
    tokens: dict[str, str]
    lake: Lake

    def auth(self, role: str = "viewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def replicas(folder: Path, copies: int) -> list[Path]:
    """Copies of pydicom's CT and MR files, each with its own study, series and SOP UIDs."""
    folder.mkdir()
    files = []
    for name in REPLICATED:
        for copy in range(copies):
            ds = pydicom.dcmread(pydicom_file(name))
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, str(copy), "study"])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, str(copy), "series"])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, str(copy), "instance"])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = folder / f"{Path(name).stem}-{copy:02d}.dcm"
            ds.save_as(target)
            files.append(target)
    return files


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """uvicorn serving app from a thread on a free port of 127.0.0.1; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start within 30 s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live")
    for api in build(f"sqlite:///{root / 'catalog.sqlite'}", root):
        summary = ingest(
            replicas(root / "replicas", COPIES),
            engine=api.lake.engine,
            store=api.lake.store,
            pseudonymizer=api.lake.pseudonymizer,
            executor=SerialExecutor(),
        )
        assert summary.catalogued == len(REPLICATED) * COPIES, summary.line()
        with serve(api.app) as url:
            yield LiveServer(url, api.tokens, api.lake)


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def test_zip_streams_while_it_is_built(live: LiveServer, client: httpx.Client) -> None:
    listing = client.get("/images", params={"limit": 1000}, headers=live.auth(CURATOR)).json()
    ids = [image["id"] for image in listing["images"]]
    assert listing["total"] == len(ids) == len(REPLICATED) * COPIES + 4
    arrivals: list[tuple[float, int]] = []  # (seconds since the request, bytes)
    parts: list[bytes] = []
    started = time.perf_counter()
    with client.stream(
        "GET", "/images.zip", params=ZIP_PARAMS, headers=live.auth(CURATOR)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        for chunk in response.iter_raw():
            arrivals.append((time.perf_counter() - started, len(chunk)))
            parts.append(chunk)
    first_byte, total = arrivals[0][0], arrivals[-1][0]
    before_last = sum(size for _, size in arrivals[:-1])
    assert before_last > 0, "the whole archive arrived in one piece"
    assert first_byte < 0.4 * total, (
        f"first byte after {first_byte:.2f} s of {total:.2f} s: the zip did not stream"
    )

    archive = zipfile.ZipFile(io.BytesIO(b"".join(parts)))
    assert archive.testzip() is None
    assert archive.namelist() == [f"images/{i}.png" for i in ids] + ["metadata.csv"]
    for name in archive.namelist()[:-1]:
        with PILImage.open(io.BytesIO(archive.read(name))) as picture:
            assert (picture.format, max(picture.size)) == ("PNG", 1024), name
    rows = archive.read("metadata.csv").decode().splitlines()
    assert [int(row.split(",")[0]) for row in rows[1:]] == ids


# Found by this test: ?format= once meant both the output format and the filter on
# the original's format; the output format is now ?image_format=.
def test_zip_of_png_renderings_holds_every_image(live: LiveServer, client: httpx.Client) -> None:
    listing = client.get("/images", params={"limit": 1000}, headers=live.auth(CURATOR)).json()
    params = {"content": "rendered", "size": "64", "image_format": "png"}
    response = client.get("/images.zip", params=params, headers=live.auth(CURATOR))
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert names == [f"images/{image['id']}.png" for image in listing["images"]] + ["metadata.csv"]


def test_etag_revalidation_answers_304(live: LiveServer, client: httpx.Client) -> None:
    image_id = client.get("/images", params={"limit": 1}, headers=live.auth()).json()["images"][0][
        "id"
    ]
    path = f"/images/{image_id}/render"
    first = client.get(path, params={"size": 128}, headers=live.auth())
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    etag = first.headers["etag"]
    again = client.get(path, params={"size": 128}, headers=live.auth() | {"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = client.get(path, params={"size": 64}, headers=live.auth() | {"If-None-Match": etag})
    assert other.status_code == 200, "another rendering must not match this ETag"


@pytest.mark.parametrize("authorization", [None, "Bearer rl_not-a-token", "Basic dXNlcjpwYXNz"])
def test_no_valid_token_gets_401_with_a_challenge(
    client: httpx.Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = client.get("/images", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "detail" in answer.json()


def test_a_zip_that_breaks_off_is_cut_and_logged_in_one_line(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A store read failing halfway through a zip: the status line is out, so the
    # connection is cut (the client must not get a finished-looking file) and the log
    # gets one line, not uvicorn's traceback "Exception in ASGI application".
    import logging

    from sqlalchemy import select

    from radlake.catalog.db import session_factory
    from radlake.catalog.models import Image

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    for api in build(f"sqlite:///{tmp_path / 'catalog.sqlite'}", tmp_path):
        # Enough originals (about 150 kB) that the zip is on the wire before the last.
        copies = replicas(tmp_path / "replicas", 3)
        ingest(
            copies,
            engine=api.lake.engine,
            store=api.lake.store,
            pseudonymizer=api.lake.pseudonymizer,
            executor=SerialExecutor(),
        )
        with session_factory(api.lake.engine)() as session:
            last = session.scalars(select(Image).order_by(Image.id.desc()).limit(1)).one()
            api.lake.store.delete(last.original_key)
        keep = Keep()
        logging.getLogger("uvicorn.error").addHandler(keep)
        try:
            with serve(api.app) as url, httpx.Client(base_url=url, timeout=60) as client:
                params = {"content": "original"}
                with pytest.raises(httpx.RemoteProtocolError):  # cut, not finished
                    client.get("/images.zip", params=params, headers=api.auth("admin"))
                assert client.get("/health").status_code == 200  # the server lives on
        finally:
            logging.getLogger("uvicorn.error").removeHandler(keep)
    assert "response cut short (ObjectNotFound) on GET /images.zip" in caplog.text
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]


def test_concurrent_first_versions_of_a_new_dataset_all_succeed(tmp_path: Path) -> None:
    # Eight curators creating the first version of one new dataset at once: all but
    # one hit the dataset's unique name and got a 500.
    from concurrent.futures import ThreadPoolExecutor

    built = build(f"sqlite:///{tmp_path / 'catalog.sqlite'}", tmp_path)
    api = next(built)
    body = {"selection": {"modality": "CT,MR"}, "seed": 4}
    curator = api.auth(CURATOR)
    with serve(api.app) as url, httpx.Client(base_url=url, timeout=120) as client:

        def create(_: int) -> httpx.Response:
            return client.post("/datasets/racing/versions", json=body, headers=curator)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(create, range(8)))
        datasets = client.get("/datasets", headers=curator).json()
    built.close()
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert sorted(a.json()["created"] for a in answers) == [False] * 7 + [True]
    assert {a.json()["version"] for a in answers} == {1}
    assert [(d["name"], len(d["versions"])) for d in datasets] == [("racing", 1)]
