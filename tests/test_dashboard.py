"""The dashboard pages over a real lake: the 98 chest X-rays of the COVID-19 collection
with their lung boxes read by two readers (the collection's boxes as reader r1; reader
r2 agrees on some films, shifts or leaves out boxes on others), a dataset version, a
registered ONNX model's predictions, reviewed feedback and a real simulator run.

Every figure a page shows is checked against an independent computation here (pandas
over the catalog's own tables and the label CSV, numpy, scipy.stats).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from scipy import stats  # type: ignore[import-untyped]

from radlake.api.app import create_app
from radlake.auth import Role, create_token
from radlake.catalog.db import transaction
from radlake.catalog.models import Image
from radlake.catalog.stats_cache import clear
from radlake.config import Settings
from radlake.lake import Lake, open_lake
from tests.conftest import run_radlake
from tests.test_predict_batch import model_file
from tests.test_web import CHROMIUM, IMAGES_LOADED, chromium, serve

DATA = Path(__file__).resolve().parents[2] / "shared/data/cxr_ieee8023_lung_boxes_subset/data"
BOXES = DATA / "annotations/imageannotation_ai_lung_bounding_boxes.json"
pytestmark = [
    pytest.mark.skipif(not BOXES.is_file(), reason="../shared/data (the lung subset) is absent"),
    # One worker builds the module's lake once (make test runs --dist loadgroup).
    pytest.mark.xdist_group("dashboard"),
]
CUT = 0.3  # r2's cut boxes keep the top CUT of the box: IoU 0.3 < 0.4, never a match


@dataclass
class Lakeside:
    home: Path
    lake: Lake
    client: TestClient
    tokens: dict[str, str]
    labels: pd.DataFrame  # file, class, reader, x_min, y_min, x_max, y_max

    def page(self, url: str, role: str = "viewer") -> str:
        client = TestClient(self.client.app, follow_redirects=False)
        signed = client.post("/ui/signin", data={"token": self.tokens[role]})
        assert signed.status_code == 303, signed.text
        answer = client.get(url)
        assert answer.status_code == 200, answer.text[-2000:]
        assert "Server-Timing" in answer.headers
        return answer.text

    def sql(self, query: str) -> pd.DataFrame:
        with self.lake.engine.connect() as connection:
            return pd.read_sql_query(query, connection)


def figures_of(html: str) -> dict[str, Any]:
    block = re.search(r'<script id="figures" type="application/json">(.*?)</script>', html, re.S)
    assert block is not None
    found: dict[str, Any] = json.loads(block.group(1))
    return found


def ok(home: Path, *args: str) -> str:
    done = run_radlake(home, *args, timeout=600)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    return done.stdout


def two_readers(folder: Path) -> pd.DataFrame:
    """r1: the collection's lung boxes; r2: the same on films 0, 3, 6, ..., the top CUT
    of each box on films 1, 4, 7, ..., only the right lung on the rest."""
    document = json.loads(BOXES.read_text())
    names = {
        image["id"]: image["file_name"]
        for image in document["images"]
        if (DATA / "images" / image["file_name"]).is_file()
    }
    classes = {c["id"]: c["name"] for c in document["categories"]}
    rows = []
    order = {name: i for i, name in enumerate(sorted(set(names.values())))}
    for note in document["annotations"]:
        if note["image_id"] not in names or None in (note.get("bbox") or [None]):
            continue
        x, y, w, h = note["bbox"]
        name, cls = names[note["image_id"]], classes[note["category_id"]]
        rows.append((name, cls, "r1", x, y, x + w, y + h))
        kind = order[name] % 3
        if kind == 0:
            rows.append((name, cls, "r2", x, y, x + w, y + h))
        elif kind == 1:
            rows.append((name, cls, "r2", x, y, x + w, y + CUT * h))
        elif cls == "Right Lung":
            rows.append((name, cls, "r2", x, y, x + w, y + h))
    frame = pd.DataFrame(rows, columns=["file", "class", "reader", *CORNERS])
    frame.to_csv(folder / "readers.csv", index=False)
    return frame


CORNERS = ["x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def lakeside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lakeside]:
    root = tmp_path_factory.mktemp("dashboard")
    home = root / "lake"
    ok(home, "init")
    ok(home, "source", "covid", str(DATA))
    labels = two_readers(root)
    imported = ok(home, "labels", "import", str(root / "readers.csv"), "--format", "csv")
    ok(home, "dataset", "create", "lungs", "--splits", "train=0.6,val=0.2,test=0.2")
    (root / "lungs.onnx").write_bytes(model_file())
    ok(home, "model", "register", "lungmodel", str(root / "lungs.onnx"))
    ok(home, "predict", "--model", "lungmodel", "--dataset", "lungs", "--split", "test")
    # Bounded by time only (no --max-requests), so both stages always run.
    ok(
        home,
        "simulate",
        "--model", "lungmodel",
        "--dataset", "lungs",
        "--split", "val",
        "--pattern", "1,2",
        "--stage-seconds", "1",
    )  # fmt: skip
    lake = open_lake(Settings(home=home))
    with transaction(lake.engine) as session:
        tokens = {r.name.lower(): create_token(session, name=r.name.lower(), role=r) for r in Role}
    clear()
    client = TestClient(create_app(lake), follow_redirects=False)
    side = Lakeside(home, lake, client, tokens, labels)
    # A few of the collection's boxes lie outside their image; the import refuses them.
    sizes = side.sql("SELECT source_key, columns, rows FROM image")
    sizes["file"] = sizes["source_key"].str.rsplit("/", n=1).str[-1]
    placed = labels.merge(sizes, on="file")
    inside = (placed["x_max"] <= placed["columns"]) & (placed["y_max"] <= placed["rows"])
    assert f"{int((~inside).sum())} invalid" in imported
    side.labels = labels[inside.to_numpy()].reset_index(drop=True)
    yield side
    lake.engine.dispose()


def test_pages_need_a_session_and_serve_plotly_from_the_package(lakeside: Lakeside) -> None:
    for url in ("/ui/dashboard", "/ui/dashboard/dataset", "/ui/dashboard/drift"):
        answer = lakeside.client.get(url)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/signin")
    html = lakeside.page("/ui/dashboard")
    script = re.search(r'<script src="(/vendor/plotly-[^"]+\.min\.js)"', html)
    assert script is not None
    served = lakeside.client.get(script.group(1))
    assert served.status_code == 200 and served.headers["content-type"].startswith(
        "text/javascript"
    )
    assert b"plotly.js" in served.content[:2000] and len(served.content) > 1_000_000
    # Its base rules as a stylesheet: plotly.js would write them inline (CSP refuses).
    sheet = re.search(r'id="plotly.js-style-global" class="no-inline-styles" href="([^"]+)"', html)
    assert sheet is not None
    rules = lakeside.client.get(sheet.group(1))
    assert rules.status_code == 200 and rules.headers["content-type"].startswith("text/css")
    assert ".js-plotly-plot .plotly .main-svg{position:absolute;top:0;left:0;" in rules.text
    assert "https://" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', html))


def test_overview_counts_match_the_catalog(lakeside: Lakeside) -> None:
    html = lakeside.page("/ui/dashboard")
    figures = figures_of(html)
    images = lakeside.sql("SELECT id, format, modality, view_position, size_bytes FROM image")
    assert int(re.search(r'id="image-total">(\d+)<', html).group(1)) == len(images)  # type: ignore[union-attr]
    shown = dict(
        zip(figures["by-view"]["data"][0]["x"], figures["by-view"]["data"][0]["y"], strict=True)
    )
    expected = images["view_position"].fillna("unknown").value_counts().to_dict()
    assert shown == expected
    shown_format = dict(
        zip(figures["bytes"]["data"][0]["x"], figures["bytes"]["data"][0]["y"], strict=True)
    )
    assert {k: v for k, v in shown_format.items() if k != "quarantined"} == (
        images.groupby("format")["size_bytes"].sum().to_dict()
    )
    per_day = figures["per-day"]["data"][0]
    assert sum(per_day["y"]) == len(images)
    jobs = lakeside.sql("SELECT kind, status FROM job")
    stacked = {t["name"]: dict(zip(t["x"], t["y"], strict=True)) for t in figures["jobs"]["data"]}
    for (kind, status), n in jobs.value_counts().items():
        assert stacked[status][kind] == n
    assert "simulate" in jobs["kind"].tolist()


def test_quarantine_examples_are_for_curators_only(lakeside: Lakeside) -> None:
    viewer = lakeside.page("/ui/dashboard")
    curator = lakeside.page("/ui/dashboard", role="curator")
    assert "<th>examples</th>" in curator and "<th>examples</th>" not in viewer


def test_dataset_version_figures_match_pandas(lakeside: Lakeside) -> None:
    html = lakeside.page("/ui/dashboard/dataset?dataset=lungs&version=1")
    figures = figures_of(html)
    members = lakeside.sql(
        "SELECT m.image_id, m.split, i.source_key, i.columns, i.rows FROM dataset_member m "
        "JOIN image i ON i.id = m.image_id"
    )
    members["file"] = members["source_key"].str.rsplit("/", n=1).str[-1]
    splits = figures["splits"]["data"][0]
    assert (
        dict(zip(splits["x"], splits["y"], strict=True))
        == members["split"].value_counts().to_dict()
    )

    labels = lakeside.labels.merge(members, on="file")
    # The source's own image-level findings (COVID-19, ARDS, ...) beside the readers' boxes.
    findings = lakeside.sql(
        "SELECT image_id, class_name AS class FROM label WHERE reader IS NULL"
    ).merge(members, on="image_id")
    every = pd.concat(
        [labels[["image_id", "class", "split"]], findings[["image_id", "class", "split"]]]
    )
    boxes = labels.groupby(["class", "split"]).size()
    images = every.groupby(["class", "split"])["image_id"].nunique()
    assert {t["name"] for t in figures["class-boxes"]["data"]} == set(members["split"])
    for trace in figures["class-boxes"]["data"]:
        for cls, n in zip(trace["x"], trace["y"], strict=True):
            assert n == boxes.get((cls, trace["name"]), 0)
    for trace in figures["class-images"]["data"]:
        assert set(trace["x"]) == set(every["class"])
        for cls, n in zip(trace["x"], trace["y"], strict=True):
            assert n == images.get((cls, trace["name"]), 0)

    per_image = every.groupby("image_id").size().reindex(members["image_id"], fill_value=0)
    shown = figures["labels-per-image"]["data"][0]
    assert shown["y"] == np.bincount(per_image.to_numpy()).tolist()

    # The heatmap's cells: box centres over a 16 x 16 grid of the image, per class.
    right = labels[labels["class"] == "Right Lung"]
    cx = ((right["x_min"] + right["x_max"]) / 2 / right["columns"]).clip(0, 1)
    cy = ((right["y_min"] + right["y_max"]) / 2 / right["rows"]).clip(0, 1)
    expected, _, _ = np.histogram2d(cy, cx, bins=16, range=[[0, 1], [0, 1]])
    heat = re.search(r'id="chart-(heat-\d+)" data-class="Right Lung"', html)
    assert heat is not None
    assert np.array_equal(np.array(figures[heat.group(1)]["data"][0]["z"]), expected)
    assert int(expected.sum()) == len(right)


def agreement_expected(labels: pd.DataFrame) -> dict[str, tuple[float, float, float | None]]:
    """Per class: (image agreement, box F1, Fleiss kappa) computed from the readers' CSV."""
    readers = labels.groupby("file")["reader"].nunique()
    both = labels[labels["file"].isin(readers[readers == 2].index)]
    files = sorted(both["file"].unique())
    out = {}
    for cls in sorted(both["class"].unique()):
        present = both[both["class"] == cls].groupby("file")["reader"].nunique()
        present = present.reindex(files, fill_value=0).to_numpy()
        reported = present > 0
        agreement = float((present[reported] == 2).mean())
        # Fleiss: 2 raters per image, categories present / absent.
        table = np.stack([present, 2 - present], axis=1).astype(float)
        p_i = ((table**2).sum(axis=1) - 2) / 2
        p_j = table.sum(axis=0) / table.sum()
        chance = float((p_j**2).sum())
        # Every image rated alike by chance alone (a class on every film): kappa undefined.
        kappa = None if chance >= 1 - 1e-12 else (p_i.mean() - chance) / (1 - chance)
        # Box F1 per (image) with boxes of the class: identical boxes match, moved do not.
        f1 = []
        for _, group in both[both["class"] == cls].groupby("file"):
            r1 = group[group["reader"] == "r1"][CORNERS].to_numpy()
            r2 = group[group["reader"] == "r2"][CORNERS].to_numpy()
            matched = sum(any(np.allclose(a, b) for b in r2) for a in r1)
            f1.append(2 * matched / (len(r1) + len(r2)))
        out[cls] = (agreement, float(np.mean(f1)), kappa)
    return out


def test_reader_agreement_matches_an_independent_computation(lakeside: Lakeside) -> None:
    html = lakeside.page("/ui/dashboard/dataset?dataset=lungs")
    table = html.split('id="agreement"')[1].split("</table>")[0]
    rows = re.findall(
        r'<tr data-class="([^"]+)"><td>[^<]*</td><td>(\d+)</td>\s*'
        r"<td>([\d.]*)</td><td>([\d.]*)</td><td>([-\d.]*)</td>",
        table,
    )
    shown = {cls: tuple(float(v) if v else None for v in values[1:]) for cls, *values in rows}
    expected = agreement_expected(lakeside.labels)
    for cls, (agreement, f1, kappa) in expected.items():
        assert shown[cls][:2] == pytest.approx((agreement, f1), abs=5e-5), cls
        assert shown[cls][2] == (None if kappa is None else pytest.approx(kappa, abs=5e-5)), cls
    # r2 leaves out a third of the left lungs and cuts another third of all boxes.
    assert expected["Left Lung"][0] < expected["Right Lung"][0] == 1.0
    assert 0 < expected["Left Lung"][1] < 1 and expected["Left Lung"][2] is not None


def test_drift_statistics_match_scipy(lakeside: Lakeside) -> None:
    html = lakeside.page("/ui/dashboard/drift?a=lungs@1/train&b=lungs@1/test")
    members = lakeside.sql(
        "SELECT m.image_id, m.split, i.source_key, i.columns, i.view_position "
        "FROM dataset_member m JOIN image i ON i.id = m.image_id"
    )
    members["file"] = members["source_key"].str.rsplit("/", n=1).str[-1]
    labels = lakeside.labels.merge(members, on="file")
    width = (labels["x_max"] - labels["x_min"]) / labels["columns"]
    train, test = width[labels["split"] == "train"], width[labels["split"] == "test"]
    expected = stats.ks_2samp(train.to_numpy(), test.to_numpy())
    row = re.search(r'<tr data-feature="box_width" data-statistic="([^"]*)" data-p="([^"]*)"', html)
    assert row is not None
    assert float(row.group(1)) == pytest.approx(expected.statistic, abs=1e-12)
    assert float(row.group(2)) == pytest.approx(expected.pvalue, rel=1e-9)
    # View: chi-squared of test counts against train shares scaled to the test size.
    views = members.dropna(subset=["view_position"])
    a = views[views["split"] == "train"]["view_position"].value_counts()
    b = views[views["split"] == "test"]["view_position"].value_counts()
    keys = sorted(set(a.index) | set(b.index))
    if all(a.get(k, 0) > 0 for k in keys):
        f_exp = [a.get(k, 0) * b.sum() / a.sum() for k in keys]
        chi = stats.chisquare([b.get(k, 0) for k in keys], f_exp)
        view = re.search(r'<tr data-feature="view" data-statistic="([^"]*)" data-p="([^"]*)"', html)
        assert view is not None
        assert float(view.group(1)) == pytest.approx(chi.statistic, rel=1e-9)
    assert "<td>ks</td>" in html and "<td>chi_squared</td>" in html


def test_drift_sides_are_checked(lakeside: Lakeside) -> None:
    client = TestClient(lakeside.client.app, follow_redirects=False)
    client.post("/ui/signin", data={"token": lakeside.tokens["viewer"]})
    for side, says in (
        ("lungs@9", "no version 9"),
        ("lungs@1/nope", "has no split"),
        ("2026-02-30..2026-03-01", "not a window of real days"),
        ("<script>", "expected NAME@VERSION"),
    ):
        answer = client.get("/ui/dashboard/drift", params={"a": side, "b": "lungs@1"})
        assert answer.status_code == 422 and says in answer.text, side
        assert "<script>" not in answer.text.split("<main>")[1].split('<script id="figures"')[0]
    window = client.get(
        "/ui/dashboard/drift", params={"a": "2000-01-01..2099-12-31", "b": "lungs@1"}
    )
    assert window.status_code == 200 and 'data-feature="rows"' in window.text


def test_models_page_counts_match_the_catalog(lakeside: Lakeside) -> None:
    before = lakeside.page("/ui/dashboard/models")  # cached now: feedback must refresh it
    first = lakeside.sql("SELECT MIN(id) AS id FROM prediction")["id"][0]
    reviewer = {"Authorization": f"Bearer {lakeside.tokens['reviewer']}"}
    filed = lakeside.client.post(
        f"/predictions/{first}/feedback", json={"verdict": "reject"}, headers=reviewer
    )
    assert filed.status_code in (200, 201), filed.text
    html = lakeside.page("/ui/dashboard/models")
    assert html != before
    figures = figures_of(html)
    runs = lakeside.sql("SELECT id, image_id FROM inference_run")
    predictions = lakeside.sql(
        "SELECT p.score FROM prediction p JOIN inference_run r ON r.id = p.run_id"
    )
    row = re.search(
        r'<tr data-version="lungmodel:1"><td>[^<]*</td><td>[^<]*</td>'
        r"<td>(\d+)</td><td>(\d+)</td><td>(\d+)</td>",
        html,
    )
    assert row is not None
    assert int(row.group(1)) == len(runs) and int(row.group(2)) == len(predictions)
    # Every predicted image waits for review but the one reviewed.
    assert int(row.group(3)) == runs["image_id"].nunique() - 1
    verdicts = {t["name"]: t["y"] for t in figures["verdicts"]["data"]}
    assert verdicts == {"reject": [1]}
    scores = figures["scores"]["data"][0]
    expected, _ = np.histogram(predictions["score"].clip(0, 1), np.linspace(0, 1, 21))
    assert scores["y"] == expected.tolist()
    simulations = lakeside.sql("SELECT id, counts FROM job WHERE kind = 'simulate'")
    assert len(simulations) == 1
    stages = json.loads(simulations["counts"][0])["stages"]
    assert [s["workers"] for s in stages] == [1, 2]
    rate, p95 = figures[f"simulation-{simulations['id'][0]}"]["data"]
    assert rate["y"] == [s["requests_per_second"] for s in stages]
    assert p95["y"] == [s["p95_ms"] for s in stages] and p95["yaxis"] == "y2"


PAGES = (
    "/ui/dashboard",
    "/ui/dashboard/dataset?dataset=lungs&version=1",
    "/ui/dashboard/drift?a=lungs@1/train&b=lungs@1/test",
    "/ui/dashboard/models",
)
DRAWN = "document.body.dataset.charts"
# Every chart box plotly drew into holds its SVG; an empty box would mean a chart lost.
CHART_BOXES = "document.querySelectorAll('.chart').length"
PLOTTED = "document.querySelectorAll('.chart.js-plotly-plot .main-svg').length > 0"
UNPLOTTED = "[...document.querySelectorAll('.chart')].filter(c => !c.querySelector('svg')).length"


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium absent: apt-get install -y chromium"
)
def test_dashboard_in_headless_chromium(lakeside: Lakeside, tmp_path: Path) -> None:
    with serve(lakeside.client.app) as base, chromium(tmp_path) as page:
        page.goto(f"{base}/ui/dashboard", landing=f"{base}/ui/signin?next=%2Fui%2Fdashboard")
        page.evaluate(
            f"document.querySelector('input[name=token]').value = "
            f"{json.dumps(lakeside.tokens['viewer'])};"
            "document.querySelector('form.signin button').click()"
        )
        page.wait_for("location.pathname === '/ui/dashboard' && document.readyState === 'complete'")
        for number, url in enumerate(PAGES):
            page.goto(base + url)
            drawn = page.wait_for(DRAWN, timeout=30)
            assert drawn != "failed", url
            expected = len(figures_of(page.evaluate("document.documentElement.outerHTML")))
            assert int(drawn) == expected == page.evaluate(CHART_BOXES) > 0, url
            assert page.evaluate(PLOTTED), url
            assert page.evaluate(UNPLOTTED) == 0, url
            if "dataset" in url:  # samples load lazily: below the fold they would wait
                assert page.evaluate("document.querySelectorAll('figure.sample img').length") > 0
                page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
                page.wait_for(IMAGES_LOADED, timeout=30)
            shot = base64.b64decode(page.call("Page.captureScreenshot", {"format": "png"})["data"])
            (tmp_path / f"dashboard-{number}.png").write_bytes(shot)
            pixels = np.asarray(PILImage.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
            assert pixels.std() > 10, f"{url}: the screenshot is blank"
        # No CSP refusal, script error or failed load on any page.
        assert page.errors() == [], "\n".join(page.errors())


def test_hostile_drift_sides_and_empty_pages_answer_cleanly(
    lakeside: Lakeside, tmp_path: Path
) -> None:
    client = TestClient(lakeside.client.app, follow_redirects=False)
    client.post("/ui/signin", data={"token": lakeside.tokens["viewer"]})
    for a, status in (
        ("0001-01-01..9999-12-31", 422),  # the day after 9999-12-31 does not exist
        ("lungs@1\x00", 200),  # control characters are dropped
        ("lungs@99999999999", 422),
        ("@", 422),
        ("x@1/", 422),
    ):
        answer = client.get("/ui/dashboard/drift", params={"a": a, "b": "lungs@1"})
        assert answer.status_code == status, (a, answer.status_code)
        assert "\x00" not in answer.text
    # The default comparison is the version's first split (train) against its last.
    default = client.get("/ui/dashboard/drift")
    assert 'name="a" list="sides" value="lungs@1/train"' in default.text
    # A lake with nothing in it: every page renders and says what to do.
    ok(tmp_path / "empty", "init")
    empty = open_lake(Settings(home=tmp_path / "empty"))
    with transaction(empty.engine) as session:
        token = create_token(session, name="v", role=Role.VIEWER)
    bare = TestClient(create_app(empty), follow_redirects=False)
    bare.post("/ui/signin", data={"token": token})
    for url, says in (
        ("/ui/dashboard", "No jobs yet"),
        ("/ui/dashboard/dataset", "radlake dataset create"),
        ("/ui/dashboard/drift", "A side is NAME@VERSION"),
        ("/ui/dashboard/models", "radlake model register"),
    ):
        page = bare.get(url)
        assert page.status_code == 200 and says in page.text, url
        figures = figures_of(page.text)
        assert all(f'id="chart-{key}"' in page.text for key in figures), url
    empty.engine.dispose()


def test_samples_whose_pixels_a_viewer_may_not_see_are_named_not_shown(
    lakeside: Lakeside,
) -> None:
    url = "/ui/dashboard/dataset?dataset=lungs&version=1"
    before = lakeside.page(url)  # the figures are cached now; the flag must still apply
    shown = sorted(set(map(int, re.findall(r'<img src="/images/(\d+)/render"', before))))
    assert shown
    flagged = shown[0]
    with transaction(lakeside.lake.engine) as session:
        image = session.get_one(Image, flagged)
        image.attributes = {**image.attributes, "burned_in_annotation": "YES"}
    try:
        viewer = lakeside.page(url)
        assert f"image {flagged}: not shown to your role" in viewer
        assert f'src="/images/{flagged}/render"' not in viewer
        curator = lakeside.page(url, role="curator")
        assert f'src="/images/{flagged}/render"' in curator
    finally:
        with transaction(lakeside.lake.engine) as session:
            image = session.get_one(Image, flagged)
            image.attributes = {
                k: v for k, v in image.attributes.items() if k != "burned_in_annotation"
            }
