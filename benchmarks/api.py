"""REST API latency and throughput over a real server, against targets.

Run it from the repository root (after `make test` or any install of radlake):

    .venv/bin/python benchmarks/api.py
    .venv/bin/python benchmarks/api.py --images 2000 --seconds 10 --corpus /tmp/corpus
    .venv/bin/python benchmarks/api.py --catalog-rows 0      # leave the 100,000 out

What it does (about 2-3 minutes on a 2-core machine):

1. Lake: a fresh temporary RADLAKE_HOME (SQLite catalog, local store). --images real
   DICOM files (default 1,000) replicated from the shared GE and Siemens MR series by
   benchmarks/ingest.py's corpus builder (fresh study, series and SOP UIDs per copy),
   and --jpegs real JPEG files (default 300): MR slices of that series rendered at
   512 px and saved by Pillow (quality 95). Both go through the normal ingest pipeline,
   as the sources bench-dicom and bench-jpeg; then a viewer token is created.
2. Server: `python -m uvicorn radlake.api.app:create_app --factory` in its own
   process (one worker, access log off) on 127.0.0.1, RADLAKE_HOME pointing at the lake.
3. Clients: this process drives it over HTTP with 1 and with 4 threads, each with its
   own keep-alive httpx.Client, for --seconds per scenario after a short warm-up:
   - preview: GET /images/{id}/render with default parameters, ids in turn: the
     preview made at ingest, served from the store (cached);
   - query: GET /images?modality=MR&manufacturer=GE&min_rows=64 (a page of 100 and
     the total);
   - zip: GET /images.zip?content=original&source=bench-dicom (every DICOM file),
     and the same for the stored JPEGs (source=bench-jpeg), a few downloads each.
4. Catalog growth: the catalog is grown to --catalog-rows images (default 100,000)
   with SQLAlchemy Core bulk inserts: copies of the real DICOM rows (and their
   preview renditions) with new ids and sha256; no blobs, as queries do not read
   them. Then the query scenario runs again.

Latencies are per request, from sending it to the last byte of the body; zips also
report time to first byte (TTFB) and MB/s (the archive's bytes over the whole
download; with 4 clients, all bytes over the wall time). Targets: cached preview
p95 < 20 ms at 4 clients; filtered query p95 < 50 ms with 100,000 images (1 client);
zip of stored JPEG originals >= 50 MB/s (1 client).
Exit status: 0 when every target is met, 1 when one is missed or a count is wrong,
2 when the shared data is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, insert, select

from ingest import SOURCE, BenchmarkError, build_corpus
from radlake.auth import Role, create_token
from radlake.catalog.db import transaction
from radlake.catalog.models import Image, Rendition, Source
from radlake.config import Settings
from radlake.domain import ImageFormat
from radlake.imaging.formats import reader_for
from radlake.imaging.render import render
from radlake.lake import Lake, init_lake
from radlake.pipelines.ingest import ingest

QUERY = {"modality": "MR", "manufacturer": "GE", "min_rows": "64"}
DICOM_SOURCE, JPEG_SOURCE = "bench-dicom", "bench-jpeg"
PREVIEW_P95_MS = 20.0
QUERY_P95_MS = 50.0
JPEG_ZIP_MBPS = 50.0
INSERT_BATCH = 5000
WARM_UP_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Timing:
    """One request: seconds to the first body byte and to the last, and body bytes."""

    first_byte: float
    total: float
    size: int


@dataclass(frozen=True, slots=True)
class Result:
    """One scenario at one client count."""

    name: str
    clients: int
    timings: list[Timing]
    wall: float
    target: str = ""
    met: bool | None = None

    @property
    def requests_per_second(self) -> float:
        return len(self.timings) / self.wall

    @property
    def megabytes_per_second(self) -> float:
        return sum(t.size for t in self.timings) / 1e6 / self.wall

    def latency_ms(self, percent: float) -> float:
        return 1000 * percentile([t.total for t in self.timings], percent)

    def first_byte_ms(self, percent: float) -> float:
        return 1000 * percentile([t.first_byte for t in self.timings], percent)


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (the smallest value with percent % at or below it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


# -- lake --------------------------------------------------------------------------


def make_jpegs(originals: Sequence[Path], folder: Path, count: int) -> list[Path]:
    """count JPEG files: MR slices spread over the series, rendered at 512 px."""
    folder.mkdir(parents=True)
    step = max(1, len(originals) // count)
    reader = reader_for(ImageFormat.DICOM)
    made = []
    for number, path in enumerate(originals[::step][:count]):
        picture = render(reader.open_pixels(path.read_bytes()), size=512).image
        target = folder / f"slice-{number:04d}.jpg"
        picture.save(target, format="JPEG", quality=95)
        made.append(target)
    return made


def fill_lake(lake: Lake, dicom: Sequence[Path], jpegs: Sequence[Path]) -> tuple[int, int]:
    """Ingest both sets as their own sources; returns the images catalogued of each."""
    counts = []
    for paths, source in ((dicom, DICOM_SOURCE), (jpegs, JPEG_SOURCE)):
        summary = ingest(
            list(paths),
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            source=source,
        )
        say(f"ingest {source}: {summary.line()}")
        counts.append(summary.catalogued)
    return counts[0], counts[1]


def image_ids(engine: Engine, source: str) -> list[int]:
    with transaction(engine) as session:
        return list(
            session.scalars(
                select(Image.id).join(Source).where(Source.name == source).order_by(Image.id)
            )
        )


def grow_catalog(engine: Engine, target_rows: int) -> int:
    """Bulk-insert copies of the DICOM rows until the catalog holds target_rows images.

    Copies keep every column but id and sha256 (and get a fresh SOP instance UID);
    each gets a copy of its model's preview rendition. Returns the rows inserted.
    """
    image_table, rendition_table = Image.__table__, Rendition.__table__
    copied = [c for c in image_table.columns if c.key not in ("id", "sha256", "sop_instance_uid")]
    with engine.begin() as connection:
        existing = int(connection.scalar(select(func.count(Image.id))) or 0)
        models = list(
            connection.execute(
                select(*copied, Image.id.label("model_id"))
                .join(Source, Image.source_id == Source.id)
                .where(Source.name == DICOM_SOURCE)
                .order_by(Image.id)
            ).mappings()
        )
        previews = {
            row.image_id: row
            for row in connection.execute(
                select(rendition_table).where(Rendition.name == "preview")
            ).mappings()
        }
        next_id = int(connection.scalar(select(func.max(Image.id))) or 0) + 1
        needed = max(0, target_rows - existing)
        for start in range(0, needed, INSERT_BATCH):
            images: list[dict[str, Any]] = []
            renditions: list[dict[str, Any]] = []
            for number in range(start, min(start + INSERT_BATCH, needed)):
                model = models[number % len(models)]
                image_id = next_id + number
                row = {c.key: model[c.key] for c in copied}
                images.append(
                    row
                    | {
                        "id": image_id,
                        "sha256": hashlib.sha256(f"synthetic-{number}".encode()).hexdigest(),
                        "sop_instance_uid": generate_uid(),
                    }
                )
                preview = previews.get(model["model_id"])
                if preview is not None:
                    copy = {k: v for k, v in preview.items() if k != "id"}
                    renditions.append(copy | {"image_id": image_id})
            connection.execute(insert(Image), images)
            if renditions:
                connection.execute(insert(Rendition), renditions)
    return needed


def viewer_token(engine: Engine) -> str:
    with transaction(engine) as session:
        return create_token(session, name="bench-viewer", role=Role.VIEWER)


# -- server and clients --------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def api_server(home: Path) -> Iterator[str]:
    """uvicorn serving the lake at home in a child process; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "radlake.api.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with status {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /health within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


Request = Callable[[httpx.Client, int], Timing]


def get(path: Callable[[int], str], params: dict[str, str] | None = None) -> Request:
    """A request that reads the whole body; path(n) gives the n-th request's path."""

    def send(client: httpx.Client, number: int) -> Timing:
        started = time.perf_counter()
        first_byte = None
        size = 0
        with client.stream("GET", path(number), params=params) as response:
            if response.status_code != 200:
                raise RuntimeError(f"GET {response.url} answered {response.status_code}")
            for chunk in response.iter_raw():
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                size += len(chunk)
        total = time.perf_counter() - started
        return Timing(total if first_byte is None else first_byte, total, size)

    return send


def drive(
    url: str,
    headers: dict[str, str],
    clients: int,
    request: Request,
    *,
    seconds: float | None = None,
    per_client: int | None = None,
) -> tuple[list[Timing], float]:
    """Run request from `clients` threads for `seconds`, or `per_client` times each."""
    counter = itertools.count()
    timings: list[Timing] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    stop = [math.inf]

    def work() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            request(client, 0)  # open the keep-alive connection before timing
            barrier.wait()
            done = 0
            try:
                while time.perf_counter() < stop[0] and (per_client is None or done < per_client):
                    timings.append(request(client, next(counter)))
                    done += 1
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    if seconds is not None:
        stop[0] = started + seconds
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a request failed: {errors[0]}") from errors[0]
    return timings, wall


def scenario(
    name: str,
    url: str,
    headers: dict[str, str],
    clients: int,
    request: Request,
    *,
    seconds: float | None = None,
    per_client: int | None = None,
) -> Result:
    if seconds is not None:
        drive(url, headers, clients, request, seconds=min(WARM_UP_SECONDS, seconds))
    timings, wall = drive(url, headers, clients, request, seconds=seconds, per_client=per_client)
    result = Result(name, clients, timings, wall)
    say(
        f"{name}, {clients} client(s): {len(timings)} requests in {wall:.1f} s, "
        f"p95 {result.latency_ms(95):.1f} ms"
    )
    return result


def judged(result: Result, target: str, met: bool) -> Result:
    return Result(result.name, result.clients, result.timings, result.wall, target, met)


# -- report ------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    header = (
        "scenario",
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "TTFB p50 ms",
        "MB/s",
        "target",
        "met",
    )
    rows = [header]
    for r in results:
        is_zip = r.name.startswith("zip")  # TTFB and MB/s mean something for archives
        rows.append(
            (
                r.name,
                str(r.clients),
                str(len(r.timings)),
                f"{r.requests_per_second:.1f}",
                f"{r.latency_ms(50):.1f}",
                f"{r.latency_ms(95):.1f}",
                f"{r.latency_ms(99):.1f}",
                f"{r.first_byte_ms(50):.1f}" if is_zip else "-",
                f"{r.megabytes_per_second:.1f}" if is_zip else "-",
                r.target or "-",
                "-" if r.met is None else ("yes" if r.met else "no"),
            )
        )
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows as text columns: the first left-aligned, the rest right-aligned, a rule
    under the first row (the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def say(message: str) -> None:
    # Progress goes to stderr, so stdout holds only the report.
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="REST API latency and throughput of radlake.")
    parser.add_argument("--images", type=int, default=1000, help="DICOM files (>= 1000)")
    parser.add_argument("--jpegs", type=int, default=300, help="JPEG files (default 300)")
    parser.add_argument(
        "--catalog-rows",
        type=int,
        default=100_000,
        help="grow the catalog to this many images for the last query run (0: skip)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per timed scenario")
    parser.add_argument("--zips", type=int, default=3, help="zip downloads per client")
    parser.add_argument("--corpus", type=Path, help="build the DICOM corpus here once, reuse it")
    args = parser.parse_args(argv)
    if args.images < 1000:
        parser.error("--images must be at least 1000")
    if args.jpegs < 1 or args.seconds <= 0 or args.zips < 1:
        parser.error("--jpegs, --seconds and --zips must be positive")
    return args


@dataclass(frozen=True, slots=True)
class Prepared:
    """The benchmark lake, its viewer token and what it holds."""

    lake: Lake
    token: str
    dicom_ids: list[int]
    jpeg_ids: list[int]
    dicom_mean_bytes: float
    jpeg_mean_bytes: float


def prepare(args: argparse.Namespace, home: Path, corpus: Path) -> Prepared:
    """Corpus, JPEGs, a fresh lake with both ingested, and a viewer token."""
    started = time.perf_counter()
    files, built = build_corpus(corpus, args.images, SOURCE)
    say(f"corpus: {len(files)} DICOM files ({'built' if built else 'reused'}) in {corpus}")
    jpegs = make_jpegs(sorted(SOURCE.rglob("*.dcm")), home.parent / "jpegs", args.jpegs)
    lake, _ = init_lake(Settings(home=home, catalog_url=None, store_url=None, secret_key=None))
    dicom_count, jpeg_count = fill_lake(lake, files, jpegs)
    if dicom_count != args.images:
        lake.engine.dispose()
        raise RuntimeError(f"catalogued {dicom_count} DICOM files, expected {args.images}")
    say(f"lake ready in {time.perf_counter() - started:.1f} s ({jpeg_count} distinct JPEGs)")
    return Prepared(
        lake,
        viewer_token(lake.engine),
        image_ids(lake.engine, DICOM_SOURCE),
        image_ids(lake.engine, JPEG_SOURCE),
        sum(path.stat().st_size for path in files) / len(files),
        sum(path.stat().st_size for path in jpegs) / len(jpegs),
    )


def check_zip(url: str, headers: dict[str, str], params: dict[str, str], entries: int) -> None:
    """One untimed download, opened: every image and metadata.csv, each entry intact."""
    answer = httpx.get(f"{url}/images.zip", params=params, headers=headers, timeout=300)
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    if len(archive.namelist()) != entries + 1 or archive.testzip() is not None:
        raise RuntimeError(f"the zip for {params} is not the {entries} images + metadata.csv")


def measure(args: argparse.Namespace, home: Path, lake: Prepared) -> list[Result]:
    """Every scenario at 1 and 4 clients, against the server over home."""
    headers = {"Authorization": f"Bearer {lake.token}"}
    seconds, zips = float(args.seconds), int(args.zips)
    ids, images = lake.dicom_ids, len(lake.dicom_ids) + len(lake.jpeg_ids)
    health = get(lambda n: "/health")
    preview = get(lambda n: f"/images/{ids[n % len(ids)]}/render")
    query = get(lambda n: "/images", QUERY)
    dicom_params = {"content": "original", "source": DICOM_SOURCE}
    jpeg_params = {"content": "original", "source": JPEG_SOURCE}
    dicom_zip = get(lambda n: "/images.zip", dicom_params)
    jpeg_zip = get(lambda n: "/images.zip", jpeg_params)
    results = []
    with api_server(home) as url:
        check_zip(url, headers, dicom_params, len(lake.dicom_ids))
        check_zip(url, headers, jpeg_params, len(lake.jpeg_ids))
        for clients in (1, 4):
            results.append(
                scenario("health (floor)", url, headers, clients, health, seconds=seconds)
            )
        for clients in (1, 4):
            result = scenario("preview (cached)", url, headers, clients, preview, seconds=seconds)
            if clients == 4:
                p95 = result.latency_ms(95)
                result = judged(result, f"p95 < {PREVIEW_P95_MS:.0f} ms", p95 < PREVIEW_P95_MS)
            results.append(result)
        for clients in (1, 4):
            name = f"query, {images} images"
            results.append(scenario(name, url, headers, clients, query, seconds=seconds))
        for clients in (1, 4):
            name = f"zip {len(lake.dicom_ids)} DICOM originals"
            results.append(scenario(name, url, headers, clients, dicom_zip, per_client=zips))
        for clients in (1, 4):
            name = f"zip {len(lake.jpeg_ids)} stored JPEGs"
            result = scenario(name, url, headers, clients, jpeg_zip, per_client=zips)
            if clients == 1:
                rate = result.megabytes_per_second
                result = judged(result, f">= {JPEG_ZIP_MBPS:.0f} MB/s", rate >= JPEG_ZIP_MBPS)
            results.append(result)
        if args.catalog_rows > images:
            started = time.perf_counter()
            inserted = grow_catalog(lake.lake.engine, args.catalog_rows)
            say(f"catalog grown by {inserted} rows in {time.perf_counter() - started:.1f} s")
            for clients in (1, 4):
                name = f"query, {args.catalog_rows} images"
                result = scenario(name, url, headers, clients, query, seconds=seconds)
                if clients == 1:
                    p95 = result.latency_ms(95)
                    result = judged(result, f"p95 < {QUERY_P95_MS:.0f} ms", p95 < QUERY_P95_MS)
                results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="radlake-bench-api-"))
    corpus = (args.corpus or work / "corpus").resolve()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        lake = prepare(args, work / "home", corpus)
        try:
            results = measure(args, work / "home", lake)
        finally:
            lake.lake.engine.dispose()
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a wrong count or a failed request: no figures
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nradlake API on 127.0.0.1 (uvicorn, 1 worker, SQLite catalog, local store), "
        f"{os.cpu_count()} CPUs, load average {load:.2f} at start; "
        f"{args.seconds:g} s per timed scenario after {WARM_UP_SECONDS:g} s warm-up, "
        f"{args.zips} zip(s) per client; total run {time.perf_counter() - started:.0f} s\n"
        f"originals: {len(lake.dicom_ids)} DICOM, "
        f"{lake.dicom_mean_bytes / 1e3:.1f} kB each on average; "
        f"{len(lake.jpeg_ids)} JPEG (MR slices, 512 px, quality 95), "
        f"{lake.jpeg_mean_bytes / 1e3:.1f} kB each on average"
    )
    print(table(results))
    return 0 if all(result.met is not False for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
