"""The web page: sign-in session cookie, redirects, browse, image page with boxes, escaping;
then the same pages in headless Chromium against uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select as sql_select

from radlake.api.app import create_app
from radlake.api.deps import COOKIE_NAME
from radlake.auth import Role, create_token
from radlake.catalog.db import make_engine, session_factory, transaction, upgrade
from radlake.catalog.models import Cohort, Image, Label
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert(1)</script>"
# (class, reader, origin, confidence, box) on the generated 64 x 48 PNG: 4 boxes.
PNG_LABELS: tuple[tuple[str, str | None, str, float | None, tuple[float, ...] | None], ...] = (
    ("Nodule", "reader-a", "ground_truth", None, (8, 6, 24, 20)),
    ("Mass", "reader-a", "ground_truth", None, (30, 12, 58, 40)),
    ("Nodule", "reader-b", "ground_truth", None, (10, 8, 26, 22)),
    ("Nodule", "detector", "prediction", 0.87, (9, 7, 25, 21)),
    ("Effusion", "reader-b", "ground_truth", None, None),
)


@dataclass
class Site:
    app: FastAPI
    lake: Lake
    tokens: dict[str, str]
    ids: dict[str, int]
    root: Path

    def client(self, role: str | None = None, base_url: str = "http://testserver") -> TestClient:
        client = TestClient(self.app, base_url=base_url, follow_redirects=False)
        if role is not None:
            answer = client.post("/ui/signin", data={"token": self.tokens[role]})
            assert answer.status_code == 303, answer.text
        return client


def csrf_of(html: str) -> str:
    """The CSRF token a signed-in page carries (meta tag and sign-out form agree)."""
    meta = re.findall(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    field = re.findall(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert len(meta) == 1 and meta == field[:1], (meta, field)
    return meta[0]


def add_labels(lake: Lake, image_id: int, rows: Any) -> None:
    with transaction(lake.engine) as session:
        image = session.get(Image, image_id)
        assert image is not None
        for class_name, reader, origin, confidence, box in rows:
            x_min, y_min, x_max, y_max = box or (None, None, None, None)
            session.add(
                Label(
                    source_id=image.source_id,
                    source_image_key=image.source_key,
                    image_id=image_id,
                    class_name=class_name,
                    reader=reader,
                    origin=origin,
                    confidence=confidence,
                    x_min=x_min,
                    y_min=y_min,
                    x_max=x_max,
                    y_max=y_max,
                )
            )


def gradient_png(path: Path, size: tuple[int, int] = (64, 48), phase: int = 0) -> Path:
    gradient = PILImage.linear_gradient("L").rotate(phase).resize(size)
    gradient.save(path, "PNG")
    return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "db").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'catalog.sqlite'}")
    upgrade(engine)
    lake = Lake(engine, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    for source, files in (
        ("pydicom", [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]),
        ("generated", [gradient_png(tmp_path / "chest.png")]),
    ):
        ingest(
            files,
            engine=engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            source=source,
            executor=SerialExecutor(),
        )
    with transaction(engine) as session:
        tokens = {r.name.lower(): create_token(session, name=r.name.lower(), role=r) for r in Role}
        ids = {
            (image.modality or image.format): image.id
            for image in session.scalars(sql_select(Image).order_by(Image.id))
        }
    assert set(ids) == {"CT", "MR", "png"}, ids
    add_labels(lake, ids["png"], PNG_LABELS)
    yield Site(create_app(lake), lake, tokens, ids, tmp_path)
    engine.dispose()


def boxes_in(html: str) -> list[str]:
    return re.findall(r'<rect class="box"[^>]*>', html)


def thumb_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'class="thumb" data-image-id="(\d+)"', html)]


# ---------------------------------------------------------------- through TestClient


def test_signin_sets_an_httponly_samesite_strict_cookie(site: Site) -> None:
    client = site.client()
    form = client.get("/ui/signin")
    assert form.status_code == 200 and 'name="token"' in form.text
    answer = client.post("/ui/signin", data={"token": site.tokens["viewer"], "next": "/ui"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    cookie = answer.headers["set-cookie"]
    # The cookie names a server-side session; the API token never leaves the form.
    assert re.match(rf"{COOKIE_NAME}=rs_[A-Za-z0-9_-]{{43}};", cookie), cookie
    assert site.tokens["viewer"] not in cookie and site.tokens["viewer"][3:] not in cookie
    assert "Max-Age=43200" in cookie  # 12 h, the default lifetime
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert "secure" not in cookie.lower()  # plain http: a Secure cookie would never return
    assert client.get("/ui").status_code == 200
    secure = site.client(base_url="https://testserver").post(
        "/ui/signin", data={"token": site.tokens["viewer"]}
    )
    assert "secure" in secure.headers["set-cookie"].lower()


def test_bad_token_gets_401_the_form_and_no_cookie(site: Site) -> None:
    client = site.client()
    for token in ("rl_not-a-token", "", site.tokens["viewer"] + "x"):
        answer = client.post("/ui/signin", data={"token": token})
        assert answer.status_code == 401, token
        assert "not valid" in answer.text and 'name="token"' in answer.text
        assert "set-cookie" not in answer.headers
    assert client.get("/ui").status_code == 303


def test_a_dicomweb_token_cannot_sign_in_to_the_pages(site: Site) -> None:
    """A web viewer's token (readable in its page) reads /dicomweb, never these pages."""
    client = site.client()
    answer = client.post("/ui/signin", data={"token": site.tokens["dicomweb"]})
    assert answer.status_code == 403 and "DICOMweb" in answer.text
    assert "set-cookie" not in answer.headers
    assert client.get("/ui").status_code == 303


def test_pages_redirect_to_signin_without_a_valid_cookie(site: Site) -> None:
    client = site.client()
    png = site.ids["png"]
    for path in ("/ui", f"/ui/images/{png}", "/ui/upload", "/ui?modality=MR"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/ui/signin?next=%2Fui"), path
    assert client.get("/").headers["location"] == "/ui/signin"
    # A Bearer header is for the JSON API; pages go by the cookie alone.
    bearer = {"Authorization": f"Bearer {site.tokens['admin']}"}
    assert client.get("/ui", headers=bearer).status_code == 303
    client.cookies.set(COOKIE_NAME, "rl_forged")
    assert client.get("/ui").status_code == 303
    signed_in = site.client("viewer")
    assert signed_in.get("/").headers["location"] == "/ui"


def test_signin_returns_to_the_page_asked_for_but_never_off_site(site: Site) -> None:
    client = site.client()
    target = f"/ui/images/{site.ids['CT']}?window=40%2C400"
    asked = client.get(target).headers["location"]
    form = client.get(asked)
    assert 'value="/ui/images/' in form.text
    back = client.post("/ui/signin", data={"token": site.tokens["viewer"], "next": target})
    assert back.headers["location"] == target
    cross_site = client.post(
        "/ui/signin",
        data={"token": site.tokens["viewer"]},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403 and "set-cookie" not in cross_site.headers
    same_site = client.post(
        "/ui/signin",
        data={"token": site.tokens["viewer"]},
        headers={"Origin": "http://testserver"},
    )
    assert same_site.status_code == 303
    for hostile in ("https://evil.example/", "//evil.example", "/ui\\@evil", "javascript:x"):
        answer = client.post("/ui/signin", data={"token": site.tokens["viewer"], "next": hostile})
        assert answer.headers["location"] == "/ui", hostile


def test_signout_ends_the_session_and_clears_the_cookie(site: Site) -> None:
    client = site.client("viewer")
    token = csrf_of(client.get("/ui").text)
    session_cookie = client.cookies[COOKIE_NAME]
    # Another site's form (no CSRF token, or a foreign Origin) cannot sign this browser out.
    for data, origin in (({}, "http://testserver"), ({"csrf_token": token}, "http://evil.example")):
        refused = client.post("/ui/signout", data=data, headers={"Origin": origin})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
    assert client.get("/ui").status_code == 200
    answer = client.post(
        "/ui/signout", data={"csrf_token": token}, headers={"Origin": "http://testserver"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/signin"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f'{COOKIE_NAME}="";') and "Max-Age=0" in cookie
    assert client.get("/ui").status_code == 303
    # The session is over on the server: its cookie, replayed, opens nothing.
    replay = site.client()
    replay.cookies.set(COOKIE_NAME, session_cookie)
    assert replay.get("/ui").status_code == 303
    assert replay.get("/images").status_code == 401


def test_browse_filters_paging_zip_link_and_cohort_form(site: Site) -> None:
    client = site.client("viewer")
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert thumb_ids(page.text) == sorted(site.ids.values())
    assert '<strong id="total">3</strong>' in page.text
    for option in ('value="MR"', 'value="CT"', 'value="Nodule"', 'value="generated"'):
        assert option in page.text
    assert "cohort-save" not in page.text  # viewers cannot save cohorts
    mr = client.get("/ui", params={"modality": "MR", "view": "", "finding": ""})
    assert thumb_ids(mr.text) == [site.ids["MR"]]
    assert 'href="/images.zip?modality=MR"' in mr.text
    assert '<option value="MR" selected>' in mr.text
    nodule = client.get("/ui", params={"finding": "Nodule"})
    assert thumb_ids(nodule.text) == [site.ids["png"]]
    first = client.get("/ui", params={"limit": 1})
    assert thumb_ids(first.text) == [min(site.ids.values())]
    link = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert link is not None
    second = client.get(link.group(1).replace("&amp;", "&"))
    assert thumb_ids(second.text) == [sorted(site.ids.values())[1]]
    curator = site.client("curator").get("/ui", params={"modality": "CT"})
    assert "cohort-save" in curator.text
    assert '<script id="cohort-filter" type="application/json">{"modality": "CT"}</script>' in (
        curator.text
    )


def test_image_page_has_metadata_overlay_and_downloads(site: Site) -> None:
    client = site.client("viewer")
    png = site.ids["png"]
    page = client.get(f"/ui/images/{png}")
    assert page.status_code == 200
    detail = client.get(f"/images/{png}").json()
    assert f"<td>{detail['sha256']}</td>" in page.text
    assert "<th>source</th><td>generated</td>" in page.text
    assert 'viewBox="0 0 64 48"' in page.text
    boxes = boxes_in(page.text)
    assert len(boxes) == 4
    assert 'data-reader="reader-a" data-origin="ground_truth" data-class="Mass"' in page.text
    assert 'x="30.0" y="12.0"' in page.text and 'width="28.0" height="28.0"' in page.text
    assert len({re.findall(r'stroke="(#[0-9a-f]{6})"', box)[0] for box in boxes}) == 2
    assert "Effusion" in page.text and "image-level" in page.text
    assert f'href="/images/{png}/original"' not in page.text  # originals: admins (issue 13)
    curator_page = site.client("curator").get(f"/ui/images/{png}").text
    assert f'href="/images/{png}/original"' not in curator_page
    admin_page = site.client("admin").get(f"/ui/images/{png}").text
    assert f'href="/images/{png}/original"' in admin_page
    assert f'src="/images/{png}/render"' in page.text
    assert "data-window" not in page.text  # window presets are for DICOM only
    ct = client.get(f"/ui/images/{site.ids['CT']}", params={"window": "-600,1500"})
    assert "<td>CT</td>" in ct.text and "patient_pseudonym" in ct.text
    assert f'src="/images/{site.ids["CT"]}/render?window=-600%2C1500"' in ct.text
    assert 'data-window="40,400"' in ct.text and 'data-window="40,80"' in ct.text
    bad_window = client.get(f"/ui/images/{site.ids['CT']}", params={"window": "wide"})
    assert f'src="/images/{site.ids["CT"]}/render"' in bad_window.text
    missing = client.get("/ui/images/999999")
    assert missing.status_code == 404 and "no image with id 999999" in missing.text


def test_hostile_class_and_reader_names_are_escaped(site: Site) -> None:
    reader = '"><img src=x onerror=alert(2)>'
    add_labels(site.lake, site.ids["CT"], [(HOSTILE, reader, "ground_truth", None, (1, 1, 9, 9))])
    client = site.client("viewer")
    for path in (f"/ui/images/{site.ids['CT']}", "/ui", f"/ui?finding={HOSTILE}"):
        html = client.get(path).text
        assert HOSTILE not in html and "<img src=x" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    page = client.get(f"/ui/images/{site.ids['CT']}").text
    assert 'data-reader="&#34;&gt;&lt;img src=x onerror=alert(2)&gt;"' in page
    cohort = site.client("curator").get("/ui", params={"finding": HOSTILE}).text
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in cohort  # tojson in <script>


def test_upload_page_is_for_curators(site: Site) -> None:
    assert site.client("viewer").get("/ui/upload").status_code == 403
    assert 'href="/ui/upload"' not in site.client("viewer").get("/ui").text
    page = site.client("curator").get("/ui/upload")
    assert page.status_code == 200 and 'type="file" name="file"' in page.text
    assert f'name="csrf_token" value="{csrf_of(page.text)}"' in page.text.split('id="upload"')[1]
    assert site.client().get("/static/app.js").headers["content-type"].startswith("text/javascript")


# ---------------------------------------------------------------- in headless Chromium


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """uvicorn in a thread on 127.0.0.1 and a free port (httpx's own test pattern)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Chromium:
    """Headless Chromium driven through the DevTools protocol over
    --remote-debugging-pipe: NUL-terminated JSON on fds 3 (in) and 4 (out), so no
    websocket library is needed."""

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--password-store=basic",
        "--hide-scrollbars",
        "--mute-audio",
        "--remote-debugging-pipe",
        # Only 127.0.0.1 is reachable: every host name resolves to nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    )

    def __init__(self, profile: Path, log: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        self._log = log.open("wb")
        # sh moves the pipes from stdin/stdout to fds 3 and 4, where Chromium looks.
        self.process = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                'exec 3<&0 4>&1 </dev/null >&2; exec "$0" "$@"',
                str(CHROMIUM),
                *self.FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=commands_read,
            stdout=replies_write,
            stderr=self._log,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]
        deadline = time.monotonic() + 20
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise AssertionError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply["result"]
                    return result
                self.events.append(reply)

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise AssertionError("Chromium did not answer within 20 s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise AssertionError(f"Chromium exited: see {self._log.name}")
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(part) for part in complete]

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to the page."""
        return self.send(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        answer = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10) -> Any:
        """Poll until expression is truthy (navigations replace the page meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except AssertionError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.05)

    def goto(self, url: str, landing: str | None = None) -> None:
        """Open url and wait until landing (url unless it redirects) has loaded."""
        self.call("Page.navigate", {"url": url})
        expected = json.dumps(landing or url)
        self.wait_for(f"location.href === {expected} && document.readyState === 'complete'")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            if event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def close(self) -> None:
        with suppress(AssertionError):  # it may close before it answers
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)
        self._log.close()


@contextmanager
def chromium(root: Path) -> Iterator[Chromium]:
    browser = Chromium(root / "chromium-profile", root / "chromium.log")
    try:
        yield browser
    finally:
        browser.close()


IMAGES_LOADED = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium absent: apt-get install -y chromium"
)
def test_pages_in_headless_chromium(site: Site) -> None:
    started = time.monotonic()
    png = site.ids["png"]
    with serve(site.app) as base, chromium(site.root) as page:
        # Signing in through the form sets a cookie scripts cannot read.
        page.goto(f"{base}/ui", landing=f"{base}/ui/signin?next=%2Fui")
        page.evaluate(
            f"document.querySelector('input[name=token]').value = "
            f"{json.dumps(site.tokens['curator'])};"
            "document.querySelector('form.signin button').click()"
        )
        page.wait_for("location.pathname === '/ui' && document.readyState === 'complete'")
        assert page.evaluate("document.cookie") == ""
        shown = "[...document.querySelectorAll('#grid .thumb')].map(e => +e.dataset.imageId)"
        assert page.evaluate(shown) == sorted(site.ids.values())
        page.wait_for(IMAGES_LOADED)
        browse = page.call("Page.captureScreenshot", {"format": "png"})["data"]
        (site.root / "browse-page.png").write_bytes(base64.b64decode(browse))

        # Choosing a modality submits the filter; the grid holds exactly its images.
        page.evaluate(
            "const s = document.querySelector('select[name=modality]');"
            "s.value = 'MR'; s.dispatchEvent(new Event('change'))"
        )
        page.wait_for("location.search === '?modality=MR' && document.readyState === 'complete'")
        assert page.evaluate(shown) == [site.ids["MR"]]
        assert page.evaluate("document.getElementById('total').textContent") == "1"
        assert page.evaluate("document.getElementById('zip').href") == (
            f"{base}/images.zip?modality=MR"
        )
        page.wait_for(IMAGES_LOADED)
        page.evaluate(
            "document.getElementById('cohort-name').value = 'mr_only';"
            "document.getElementById('cohort-save').click()"
        )
        assert "Saved cohort mr_only" in page.wait_for(
            "document.getElementById('cohort-result').textContent"
        )
        with session_factory(site.lake.engine)() as session:
            saved = session.scalar(sql_select(Cohort).where(Cohort.name == "mr_only"))
            assert saved is not None and saved.selection == {"modality": "MR"}

        # A DICOM's window presets switch the render URL in place.
        page.goto(f"{base}/ui/images/{site.ids['CT']}")
        page.evaluate("document.querySelector('a.preset[data-window=\"-600,1500\"]').click()")
        rendering = "document.getElementById('rendering').src"
        page.wait_for(f"{IMAGES_LOADED} && {rendering}.includes('window=-600%2C1500')")
        assert page.evaluate("document.getElementById('download-rendering').href").endswith(
            "window=-600%2C1500"
        )

        # The labelled PNG: four boxes over the rendering, toggled per reader and origin.
        page.goto(f"{base}/ui/images/{png}")
        page.wait_for(IMAGES_LOADED)
        visible = "document.querySelectorAll('svg.overlay rect.box:not(.hidden)').length"
        assert page.evaluate("document.querySelectorAll('svg.overlay rect.box').length") == 4
        assert page.evaluate(visible) == 4
        page.evaluate("document.querySelector('input[data-toggle=reader][value=reader-a]').click()")
        assert page.evaluate(visible) == 2
        page.evaluate(
            "document.querySelector('input[data-toggle=origin][value=prediction]').click()"
        )
        assert page.evaluate(visible) == 1
        page.evaluate(
            "for (const box of document.querySelectorAll('input[data-toggle]:not(:checked)'))"
            " box.click()"
        )
        assert page.evaluate(visible) == 4
        frame = page.evaluate(
            "(() => { const a = document.getElementById('rendering').getBoundingClientRect(),"
            " b = document.querySelector('svg.overlay').getBoundingClientRect();"
            " return [a.width, a.height, b.width, b.height]; })()"
        )
        assert frame[0] == frame[2] > 100 and frame[1] == frame[3] > 50, frame  # overlay fits
        colour = page.evaluate(
            "document.querySelector('rect.box[data-class=Mass]').getAttribute('stroke')"
        )
        shot = base64.b64decode(page.call("Page.captureScreenshot", {"format": "png"})["data"])
        (site.root / "image-page.png").write_bytes(shot)

        # An upload through the form: a catalogued PNG, then a rejected text file.
        page.goto(f"{base}/ui/upload")
        upload = site.root / "new.png"
        gradient_png(upload, (40, 30), phase=90)
        junk = site.root / "junk.png"
        junk.write_bytes(b"hello, this is text")
        field = page.call(
            "Runtime.evaluate", {"expression": "document.querySelector('input[type=file]')"}
        )["result"]["objectId"]
        for path, expected in ((upload, "Catalogued as image"), (junk, "Rejected (422)")):
            page.call("DOM.setFileInputFiles", {"files": [str(path)], "objectId": field})
            page.evaluate("document.querySelector('#upload button').click()")
            assert expected in page.wait_for(
                "document.getElementById('upload-result').textContent.replace('Uploading…', '')"
            )
        # The one error the console saw is the rejected upload's answer.
        assert page.errors() == [
            "Failed to load resource: the server responded with a status of 422 "
            "(Unprocessable Entity)"
        ]

    pixels = np.asarray(PILImage.open(io.BytesIO(shot)).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (900, 1280, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1  # not blank
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    near = int((np.abs(pixels - target).sum(axis=2) <= 24).sum())
    assert near > 200, f"{near} pixels of the Mass box colour {colour}"
    assert time.monotonic() - started < 30
