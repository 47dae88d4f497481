"""The dashboard pages' time and size on a lake of 100,000 images, against targets.

Run it from the repository root:

    .venv/bin/python benchmarks/dashboard.py
    .venv/bin/python benchmarks/dashboard.py --images 2000 --repeats 5
    .venv/bin/python benchmarks/dashboard.py --home /tmp/dash-lake   # build once, reuse
    .venv/bin/python benchmarks/dashboard.py --page /ui --page /ui/review

What it does (about 3 minutes on a 2-core machine, the build one of them):

1. Lake: benchmarks/dashboard_lake.py builds a fresh RADLAKE_HOME (SQLite catalog, no
   store objects: the pages read only the catalog) with SQLAlchemy Core bulk inserts:
   --images chest X-rays (default 100,000) from three sources over 90 days, ~1.5
   ground-truth labels per image from three readers, dataset `cxr` v1 (train/val/test
   70/15/15), two models with two versions each, runs on 30 % of the images with 1-3
   boxes, ~5,000 feedback rows, two retraining sets, ~20 jobs (3 simulator runs),
   ~500 quarantined inputs. With --home, a lake already there is used as it is.
2. Server: `python -m uvicorn radlake.api.app:create_app --factory` in its own
   process (benchmarks/api.py's api_server); a curator token (--role), signed in
   through the web form (POST /ui/signin), the session cookie kept.
3. Pages, each GET over one keep-alive connection:
   - overview  /ui/dashboard
   - dataset   /ui/dashboard/dataset?dataset=cxr&version=1
   - drift     /ui/dashboard/drift?a=cxr@1/train&b=cxr@1/test
   - drift by day  the same with a = the 30 days of ingest before b, b = the last 30
   - models    /ui/dashboard/models
   First each page once (cold: the first request after the server started), then
   --repeats times each (cached: the catalog did not change, the figures come from
   catalog.stats_cache), then --repeats times each with the catalog changed before
   every request (uncached: a label row for an image not yet in the lake, which no
   page shows, moves the catalog's stamp, so the figures are computed again as after
   any ingest, review or job; the rows are deleted at the end).
   Per request: client time (sending to the last byte), server time (the page's
   `Server-Timing: app;dur=...`, "-" when absent), body bytes and status. A request
   fails unless it answers 200 with the page's <h1> in the body.

Target (issue 14): p95 < 1 s for every page, judged on the uncached requests (client
time; the cached ones can only be faster). Exit status: 0 when every page meets it, 1
when one misses it or a request fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import httpx
from sqlalchemy import Engine, delete, func, insert, select

from api import aligned, api_server, percentile  # benchmarks/api.py: uvicorn in a child process
from dashboard_lake import DATASET, build_lake
from radlake.api.deps import COOKIE_NAME
from radlake.auth import Role, create_token
from radlake.catalog.db import transaction
from radlake.catalog.models import Image, Label, Source
from radlake.config import Settings
from radlake.domain import LabelOrigin
from radlake.lake import open_lake

TARGET_MS = 1000.0
WINDOW_DAYS = 30
TOUCH_KEY = "bench-dashboard-touch"  # source_image_key of the stamp-moving labels
SERVER_TIMING = re.compile(r"(?:^|,)\s*app\s*;[^,]*?\bdur=([0-9.]+)")


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    path: str
    params: dict[str, str]
    expect: str  # text the body must hold (its <h1>)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: client ms, server ms (None without Server-Timing), bytes, status."""

    client_ms: float
    server_ms: float | None
    size: int
    status: int
    ok: bool


@dataclass
class PageResult:
    page: Page
    cold: Sample | None = None
    cached: list[Sample] = field(default_factory=list)
    uncached: list[Sample] = field(default_factory=list)

    def samples(self) -> list[Sample]:
        return [s for s in (self.cold, *self.cached, *self.uncached) if s is not None]

    @property
    def failures(self) -> int:
        return sum(not s.ok for s in self.samples())

    def p95(self) -> float | None:
        """The judged figure: client p95 of the uncached requests (else the cached)."""
        judged = self.uncached or self.cached
        return percentile([s.client_ms for s in judged], 95) if judged else None


def say(message: str) -> None:
    # Progress goes to stderr, so stdout holds only the report.
    print(message, file=sys.stderr, flush=True)


def dashboard_pages(engine: Engine, dataset: str, version: int) -> list[Page]:
    """The four pages, drift twice: two splits, and two windows of ingest days."""
    with transaction(engine) as session:
        last = session.scalar(select(func.max(Image.created_at)))
    end = last.date() if last is not None else date.today()
    b_start = end - timedelta(days=WINDOW_DAYS - 1)
    a_end = b_start - timedelta(days=1)
    a_start = a_end - timedelta(days=WINDOW_DAYS - 1)
    ref = f"{dataset}@{version}"
    return [
        Page("overview", "/ui/dashboard", {}, "<h1>Overview"),
        Page(
            "dataset",
            "/ui/dashboard/dataset",
            {"dataset": dataset, "version": str(version)},
            f"<h1>{ref}",
        ),
        Page(
            "drift splits",
            "/ui/dashboard/drift",
            {"a": f"{ref}/train", "b": f"{ref}/test"},
            "<h1>Drift",
        ),
        Page(
            "drift days",
            "/ui/dashboard/drift",
            {"a": f"{a_start}..{a_end}", "b": f"{b_start}..{end}"},
            "<h1>Drift",
        ),
        Page("models", "/ui/dashboard/models", {}, "<h1>Models"),
    ]


def other_pages(paths: Sequence[str]) -> list[Page]:
    """--page PATH[?QUERY]: any signed-in page; it must answer 200 with a whole page."""
    pages = []
    for text in paths:
        path, _, query = text.partition("?")
        params = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
        pages.append(Page(text, path, params, "</html>"))
    return pages


def sign_in(client: httpx.Client, token: str) -> None:
    """The web form's sign-in; the client keeps the session cookie it sets.

    Raises:
        RuntimeError: no 303 to the next page, or no session cookie.
    """
    answer = client.post("/ui/signin", data={"token": token, "next": "/ui/dashboard"})
    if answer.status_code != 303 or COOKIE_NAME not in client.cookies:
        raise RuntimeError(
            f"sign-in answered {answer.status_code} without the {COOKIE_NAME} cookie"
        )


def fetch(client: httpx.Client, page: Page) -> Sample:
    started = time.perf_counter()
    answer = client.get(page.path, params=page.params)
    body = answer.content  # read whole before the clock stops
    client_ms = (time.perf_counter() - started) * 1000
    match = SERVER_TIMING.search(answer.headers.get("server-timing", ""))
    ok = answer.status_code == 200 and page.expect.encode() in body
    if not ok:
        snippet = re.sub(r"\s+", " ", answer.text)[:300]
        say(f"FAILED {page.name}: GET {answer.url} answered {answer.status_code}: {snippet}")
    return Sample(
        client_ms,
        None if match is None else float(match[1]),
        len(body),
        answer.status_code,
        ok,
    )


class StampMover:
    """Changes the catalog before a request, unseen by every page: a ground-truth label
    of an image that has not arrived (no image id), so stats_cache computes again."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with transaction(engine) as session:
            self.source_id = session.scalar(select(func.min(Source.id)))
        self.made = 0

    def move(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(Label),
                {
                    "source_id": self.source_id,
                    "source_image_key": f"{TOUCH_KEY}-{self.made}",
                    "class_name": "No finding",
                    "reader": "bench",
                    "origin": LabelOrigin.GROUND_TRUTH.value,
                },
            )
        self.made += 1

    def clean(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(Label).where(Label.source_image_key.like(f"{TOUCH_KEY}-%")))


def measure(
    url: str, token: str, pages: Sequence[Page], repeats: int, engine: Engine
) -> list[PageResult]:
    results = [PageResult(page) for page in pages]
    mover = StampMover(engine)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            sign_in(client, token)
            for result in results:
                result.cold = fetch(client, result.page)
                say(f"{result.page.name}: cold {result.cold.client_ms:.0f} ms")
            for result in results:
                result.cached = [fetch(client, result.page) for _ in range(repeats)]
                say(f"{result.page.name}: cached p95 {p95(result.cached):.0f} ms")
            for result in results:
                for _ in range(repeats):
                    mover.move()
                    result.uncached.append(fetch(client, result.page))
                say(f"{result.page.name}: uncached p95 {p95(result.uncached):.0f} ms")
    finally:
        mover.clean()
    return results


def p95(samples: Sequence[Sample]) -> float:
    return percentile([s.client_ms for s in samples], 95)


# -- report ------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _server(samples: Sequence[Sample], percent: float) -> str:
    values = [s.server_ms for s in samples if s.server_ms is not None]
    return _ms(percentile(values, percent)) if values and len(values) == len(samples) else "-"


def table(results: Sequence[PageResult]) -> str:
    header = (
        "page",
        "requests",
        "status",
        "kB",
        "client p50",
        "client p95",
        "server p50",
        "server p95",
    )
    rows = [header]
    for result in results:
        kinds: list[tuple[str, list[Sample]]] = [
            ("cold", [result.cold] if result.cold else []),
            ("cached", result.cached),
            ("uncached", result.uncached),
        ]
        for kind, samples in kinds:
            if not samples:
                continue
            statuses = sorted({s.status for s in samples})
            cold = kind == "cold"
            rows.append(
                (
                    f"{result.page.name}, {kind}",
                    str(len(samples)),
                    ",".join(map(str, statuses)),
                    f"{max(s.size for s in samples) / 1000:.1f}",
                    _ms(percentile([s.client_ms for s in samples], 50)),
                    "" if cold else _ms(percentile([s.client_ms for s in samples], 95)),
                    _server(samples, 50),
                    "" if cold else _server(samples, 95),
                )
            )
    return aligned(rows)


def verdicts(results: Sequence[PageResult]) -> tuple[list[str], bool]:
    """A line per page against the target, and whether every page met it."""
    lines, all_met = [], True
    width = max(len(r.page.name) for r in results)
    for result in results:
        value = result.p95()
        if result.failures:
            all_met = False
            verdict = f"FAILED: {result.failures} of {len(result.samples())} requests"
        elif value is None:
            all_met = False
            verdict = "no figure"
        else:
            met = value < TARGET_MS
            all_met &= met
            verdict = (
                f"p95 {value:.0f} ms / {TARGET_MS:.0f} ms = {value / TARGET_MS:.2f} "
                f"{'met' if met else 'MISSED'}"
            )
        lines.append(f"{result.page.name.ljust(width)}  {verdict}")
    return lines, all_met


# -- main --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="images (100,000)")
    parser.add_argument("--repeats", type=int, default=20, help="requests per page and kind (20)")
    parser.add_argument(
        "--home", type=Path, help="lake folder: built there unless a lake is there; kept"
    )
    parser.add_argument(
        "--role",
        choices=[r.name.lower() for r in Role],
        default="curator",
        help="the signed-in token's role (curator)",
    )
    parser.add_argument(
        "--page",
        action="append",
        default=[],
        metavar="PATH",
        help="time this signed-in page instead of the dashboards (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=14, help="the lake's random seed (14)")
    args = parser.parse_args(argv)
    if args.images < 100 or args.repeats < 1:
        parser.error("--images must be at least 100 and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="radlake-bench-dashboard-"))
    home = (args.home or work / "home").resolve()
    started = time.perf_counter()
    try:
        if (home / "catalog.sqlite").is_file():
            built = f"the lake in {home} as it is"
        else:
            say(f"building a lake of {args.images:,} images in {home} ...")
            facts = build_lake(home, images=args.images, seed=args.seed)
            built = f"built in {facts.seconds:.1f} s: {facts.line()}"
            say(built)
        lake = open_lake(Settings(home=home, catalog_url=None, store_url=None, secret_key=None))
        try:
            with transaction(lake.engine) as session:
                images = int(session.scalar(select(func.count(Image.id))) or 0)
                name = f"bench-dashboard-{time.time_ns()}"
                token = create_token(session, name=name, role=Role.parse(args.role))
            pages = (
                other_pages(args.page) if args.page else dashboard_pages(lake.engine, DATASET, 1)
            )
            load = os.getloadavg()[0]
            with api_server(home) as url:
                results = measure(url, token, pages, args.repeats, lake.engine)
        finally:
            lake.engine.dispose()
    except RuntimeError as exc:  # the server did not start, or sign-in failed
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the lake itself only when it is in work
    print(
        f"\nradlake dashboard pages on 127.0.0.1 (uvicorn, 1 worker, SQLite catalog), "
        f"{images:,} images ({built}); signed in as a {args.role}; {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at start; {args.repeats} requests per page and kind; "
        f"total run {time.perf_counter() - started:.0f} s\n"
        "times in ms (client: sending to the last byte; server: Server-Timing app;dur), "
        "kB: the largest body\n"
    )
    print(table(results))
    lines, all_met = verdicts(results)
    print(f"\ntarget: uncached client p95 < {TARGET_MS:.0f} ms per page (ratio = p95 / target)")
    print("\n".join(lines))
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
