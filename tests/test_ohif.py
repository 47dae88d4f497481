"""The OHIF Viewer (v2, the prebuilt app `make test` fetches into .ohif/) browsing and
retrieving from radlake's /dicomweb in headless Chromium, configured by the file
`radlake ohif-config` writes: its study list shows the lake's de-identified studies,
opening one retrieves series metadata and frames with the token and draws the image.
Also the command itself: the token it makes, the file it writes, and its refusals."""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.engine import Engine

from radlake.api.app import create_app
from radlake.api.ohif_config import dicomweb_root, ohif_app_config
from radlake.auth import Role, create_token, revoke_token
from radlake.catalog.db import make_engine, session_factory, transaction, upgrade
from radlake.catalog.deid_models import DeidInstance
from radlake.catalog.models import ApiToken
from radlake.config import Settings
from radlake.errors import ConfigError
from radlake.lake import Lake, load_settings, open_lake
from tests.conftest import run_radlake as radlake
from tests.test_api_live import serve
from tests.test_dicomweb import originals
from tests.test_dicomweb_backends import build_deid_lake, sample_file
from tests.test_web import CHROMIUM, Chromium, chromium

OHIF_DIST = Path(__file__).resolve().parents[1] / ".ohif" / "dist"


# ---------------------------------------------------------------- the command


def test_root_is_the_dicomweb_under_radlakes_base_url() -> None:
    assert dicomweb_root("http://127.0.0.1:8000") == "http://127.0.0.1:8000/dicomweb"
    assert dicomweb_root(" https://lake.example/radlake/ ") == (
        "https://lake.example/radlake/dicomweb"
    )
    assert dicomweb_root("http://h:1/dicomweb/") == "http://h:1/dicomweb"
    for bad in (
        "127.0.0.1:8000",
        "ftp://h",
        "http://",
        "http://h:99999",
        "http://h:port",
        "http://h/?a=1",
        "http://h/#x",
        "http://u:p@h",
        "",
    ):
        with pytest.raises(ConfigError):
            dicomweb_root(bad)


def test_config_writes_every_value_as_a_literal() -> None:
    hostile = "http://h/x'\"</script>\\\u2028"
    text = ohif_app_config(hostile, "rl_tok'en")
    # Each value appears only JSON-escaped: nothing closes its string early.
    assert json.dumps(hostile) in text and "'\"</" not in text.replace(json.dumps(hostile), "")
    assert '"rl_tok\'en"' in text and "\u2028" not in text


def test_ohif_config_command_makes_a_dicomweb_token_and_writes_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert radlake(home, "init").returncode == 0
    site = tmp_path / "site"
    site.mkdir()
    made = radlake(home, "ohif-config", "http://127.0.0.1:8042", "--out", str(site))
    assert made.returncode == 0, made.stderr
    written = (site / "app-config.js").read_text()
    token = re.search(r'access_token: "(rl_[^"]+)"', written)
    assert token is not None and '"qidoRoot": "http://127.0.0.1:8042/dicomweb"' in written
    assert "revoke" in made.stderr and "RADLAKE_DICOMWEB_CORS_ORIGINS" in made.stderr
    assert not [p for p in site.iterdir() if p.name != "app-config.js"], "temporary left"

    lake = open_lake(Settings(home=home))
    with session_factory(lake.engine)() as session:
        (stored,) = session.scalars(select(ApiToken))
    assert (stored.name, stored.role) == ("ohif", "dicomweb")
    # Anyone who loads the page can read the token: it reads /dicomweb, nothing else.
    client = TestClient(create_app(lake))
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    assert client.get("/dicomweb/studies", headers=bearer).status_code == 204  # empty lake
    for path in ("/images", "/studies/1.2.3", "/audit", "/openapi.json"):
        assert client.get(path, headers=bearer).status_code == 403, path

    again = radlake(home, "ohif-config", "http://127.0.0.1:8042", "--out", str(site))
    assert again.returncode == 1 and "exists" in again.stderr and "--name" not in again.stdout
    assert (site / "app-config.js").read_text() == written  # untouched
    printed = radlake(home, "ohif-config", "--name", "second", "--out", "-")
    assert printed.returncode == 0 and "window.config" in printed.stdout
    # A link to the served file is written through, the link kept.
    served = tmp_path / "served"
    served.mkdir()
    (served / "app-config.js").write_text("old")
    (site / "linked.js").symlink_to(served / "app-config.js")
    (site / "loop.js").symlink_to(site / "loop.js")
    linked = radlake(home, "ohif-config", "--name", "third", "--out", str(site / "linked.js"))
    assert linked.returncode == 0, linked.stderr
    assert (site / "linked.js").is_symlink() and "third" not in (
        served / "app-config.js"
    ).read_text()
    assert "window.config" in (served / "app-config.js").read_text()

    for args in (
        ["ftp://host"],
        ["http://h:70000"],
        ["http://h:0"],
        ["http://h:8042/?"],
        ["http://h ost:8042"],
        ["http://<script>/"],
        ["http://h/" + "a" * 3000],
        ["http://h", "--out", str(tmp_path / "missing" / "app-config.js")],
        ["http://h", "--out", "/dev/null"],  # a device is refused, not replaced
        ["http://h", "--out", str(site / "loop.js")],  # a link to itself
        ["http://h", "--out", str(site / ("x" * 300))],
    ):
        refused = radlake(home, "ohif-config", *args, "--name", "refused")
        assert refused.returncode == 1, args
        assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    with session_factory(lake.engine)() as session:
        names = set(session.scalars(select(ApiToken.name)))
    assert names == {"ohif", "second", "third"}, "a refused config left a token"
    assert Path("/dev/null").is_char_device()
    lake.engine.dispose()


def test_cors_origins_must_be_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    """An origin the browser can never send (a path, a trailing slash) or a list that
    is not JSON is a bad setting, not a viewer silently refused."""
    good = '["http://127.0.0.1:3000", "https://viewer.example", "http://[::1]:3000"]'
    monkeypatch.setenv("RADLAKE_DICOMWEB_CORS_ORIGINS", good)
    assert len(load_settings().dicomweb_cors_origins) == 3
    for bad in ('["http://x:3000/"]', '["not a url"]', '["http://x/ohif"]', "http://x:3000"):
        monkeypatch.setenv("RADLAKE_DICOMWEB_CORS_ORIGINS", bad)
        with pytest.raises(ConfigError, match="bad setting RADLAKE_DICOMWEB_CORS_ORIGINS"):
            load_settings()


# ---------------------------------------------------------------- OHIF in Chromium


@contextmanager
def static_site(folder: Path) -> Iterator[str]:
    """folder over HTTP on 127.0.0.1, answering index.html for the app's own routes
    (/viewer/..., as OHIF's history-based router expects)."""

    class AppFiles(http.server.SimpleHTTPRequestHandler):
        def send_head(self) -> Any:
            path = self.path.split("?", 1)[0].lstrip("/")
            if not path or not (folder / path).is_file():
                self.path = "/index.html"
            return super().send_head()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(AppFiles, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def ohif_site(folder: Path) -> Path:
    """OHIF's dist with our app-config.js. `make ohif` deleted the script tag of
    polyfill.io (a domain taken over in 2024) from its index.html."""
    folder.mkdir()
    page = (OHIF_DIST / "index.html").read_text()
    assert "polyfill.io" not in page
    (folder / "index.html").write_text(page)
    (folder / "index.umd.js").symlink_to(OHIF_DIST / "index.umd.js")
    return folder


def dicomweb_answers(page: Chromium) -> dict[str, int]:
    """Status of each GET to /dicomweb the page made (CORS preflights left out).

    The status is read from responseReceived or, as Chromium under load sometimes
    sends only that one, from responseReceivedExtraInfo."""
    urls = {
        event["params"]["requestId"]: event["params"]["request"]["url"]
        for event in page.events
        if event.get("method") == "Network.requestWillBeSent"
        and event["params"]["request"]["method"] == "GET"
        and "/dicomweb/" in event["params"]["request"]["url"]
    }
    answers: dict[str, int] = {}
    for event in page.events:
        method, params = event.get("method"), event.get("params", {})
        if params.get("requestId") not in urls:
            continue
        if method == "Network.responseReceived":
            answers[urls[params["requestId"]]] = params["response"]["status"]
        elif method == "Network.responseReceivedExtraInfo":
            answers[urls[params["requestId"]]] = params["statusCode"]
    return answers


ROWS = "[...document.querySelectorAll('tr')].filter(r => r.querySelector('td'))"


# Share of the viewport canvas's pixels that are not black once an image is drawn.
DRAWN = """(() => {
  const canvas = document.querySelector('.viewport-element canvas');
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 30) lit++;
  return lit / (data.length / 4);
})()"""


@contextmanager
def ohif_viewer(lake: Lake, token: str, tmp_path: Path) -> Iterator[tuple[str, Chromium]]:
    """OHIF served on one origin and configured by `ohif_app_config` for radlake's
    /dicomweb on another (CORS allowed for the first), open in headless Chromium at
    its study list. Yields the viewer's base URL and the page."""
    site = ohif_site(tmp_path / "ohif")
    with static_site(site) as viewer:
        app = create_app(lake, cors_origins=[viewer])
        with serve(app) as api, chromium(tmp_path) as page:
            (site / "app-config.js").write_text(ohif_app_config(dicomweb_root(api), token))
            page.call("Network.enable")
            page.goto(f"{viewer}/")
            yield viewer, page


# Both are needed by the browser tests: Chromium from Debian, OHIF from `make ohif`.
NEEDS_OHIF = pytest.mark.usefixtures("ohif_and_chromium")


@pytest.fixture
def ohif_and_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium absent: apt-get install -y chromium")
    if not (OHIF_DIST / "index.umd.js").exists():
        pytest.skip("OHIF absent: `make ohif` fetches it from the npm registry")


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def deid_lake(sqlite_catalog: Engine, tmp_path: Path) -> tuple[Lake, Engine]:
    return build_deid_lake(sqlite_catalog, tmp_path), sqlite_catalog


@NEEDS_OHIF
def test_ohif_browses_and_retrieves_the_de_identified_lake(
    deid_lake: tuple[Lake, Engine], tmp_path: Path
) -> None:
    lake, engine = deid_lake
    with transaction(engine) as session:
        token = create_token(session, name="ohif", role=Role.DICOMWEB)
        studies = {row.study_uid: row for row in session.scalars(select(DeidInstance))}
    pseudonyms = {lake.pseudonymizer(pid) for pid in ("1CT1", "4MR1", "8NM1")}
    ct_pseudonym = lake.pseudonymizer("1CT1")
    with ohif_viewer(lake, token, tmp_path) as (viewer, page):
        # The study list: one row per de-identified study, under its pseudonym.
        page.wait_for(f"{ROWS}.length === {len(studies)}", timeout=60)
        listed = "\n".join(page.evaluate(f"{ROWS}.map(r => r.innerText)"))
        assert all(p in listed for p in pseudonyms), listed
        assert not [o for o in originals() if o in listed], "an original identifier shown"

        # Opening the CT study: series metadata and frames retrieved, image drawn.
        page.evaluate(f"{ROWS}.find(r => r.innerText.includes({json.dumps(ct_pseudonym)})).click()")
        page.wait_for(f"{DRAWN} > 0.1", timeout=60)
        page.wait_for("document.body.innerText.includes('128 x 128')")
        answers = dicomweb_answers(page)
        frames = [url for url in answers if "/frames/" in url]
        metadata = [url for url in answers if url.endswith("/metadata")]
        assert frames and metadata, answers
        assert set(answers.values()) == {200}, answers
        ct = {uid for uid, row in studies.items() if row.modality == "CT"}
        assert all(any(f"/studies/{uid}/" in url for uid in ct) for url in frames)
        shown = page.evaluate("document.body.innerText")
        assert not [o for o in originals() if o in shown], "an original identifier shown"
        assert all("401" not in e for e in page.errors())

        # Revoked, the same page gets 401s and lists nothing.
        with transaction(engine) as session:
            revoke_token(session, name="ohif")
        page.events.clear()
        page.goto(f"{viewer}/")
        page.wait_for("document.readyState === 'complete'")
        deadline = time.monotonic() + 60
        while 401 not in dicomweb_answers(page).values():
            assert time.monotonic() < deadline, dicomweb_answers(page)
            page.evaluate("1")  # let events arrive
            time.sleep(0.1)
        assert page.evaluate(f"{ROWS}.length") == 0


JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
# pydicom's files in each transfer syntax a viewer meets, and the syntax each is in.
SYNTAXES = {
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "JPEG-LL.dcm": JPEG_LOSSLESS,
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "emri_small_jpeg_2k_lossless.dcm": "1.2.840.10008.1.2.4.90",
    "CT_small.dcm": "1.2.840.10008.1.2.1",
}


def one_study_each(folder: Path) -> list[Path]:
    """Each file of SYNTAXES as a study of its own patient; the CT also without its
    Modality (a Type 1 attribute that real files still lack)."""
    folder.mkdir()
    made = []
    for number, name in enumerate([*SYNTAXES, "CT_small.dcm"]):
        ds = pydicom.dcmread(sample_file(name))
        ds.PatientID = f"OHIF{number}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["ohif", "study", str(number)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["ohif", "series", str(number)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["ohif", "sop", str(number)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if number == len(SYNTAXES):
            del ds.Modality
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
        made.append(folder / f"{number}.dcm")
    return made


@NEEDS_OHIF
def test_ohif_lists_and_draws_every_transfer_syntax(sqlite_catalog: Engine, tmp_path: Path) -> None:
    """Compressed and big-endian frames go to OHIF as stored, labelled with their
    syntax, and it decodes them (all but JPEG Lossless, see below); a study without
    Modality still lists."""
    lake = build_deid_lake(sqlite_catalog, tmp_path, one_study_each(tmp_path / "files"))
    with transaction(sqlite_catalog) as session:
        token = create_token(session, name="ohif", role=Role.DICOMWEB)
        rows = list(session.scalars(select(DeidInstance)))
    assert {row.transfer_syntax for row in rows} == set(SYNTAXES.values())
    with ohif_viewer(lake, token, tmp_path) as (viewer, page):
        page.wait_for(f"{ROWS}.length === {len(rows)}", timeout=60)
        blank = {}
        for row in rows:
            page.events.clear()
            page.goto(f"{viewer}/viewer/{row.study_uid}")
            try:
                page.wait_for(f"{DRAWN} > 0.01", timeout=30)
            except AssertionError:
                blank[row.transfer_syntax] = page.errors()
            answers = dicomweb_answers(page)
            assert [url for url in answers if "/frames/" in url], row.transfer_syntax
            assert set(answers.values()) == {200}, (row.transfer_syntax, answers)
        # The npm package of OHIF v2 lacks the worker chunk of its JPEG Lossless
        # decoder: those frames are served (200 above) but the app cannot load it.
        assert list(blank) == [JPEG_LOSSLESS], blank
        assert any("worker.js" in error for error in blank[JPEG_LOSSLESS]), blank
