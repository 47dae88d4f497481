"""Ingest throughput against the CPU bound of this machine.

Run it from the repository root (after `make test` or any install of radlake):

    .venv/bin/python benchmarks/ingest.py                  # N=2400, one worker per CPU
    .venv/bin/python benchmarks/ingest.py --n 5000 --workers 4 --corpus /tmp/corpus
    .venv/bin/python benchmarks/ingest.py --skip-postgres --json

What it measures:

1. Corpus: N real DICOM files, replicated from the shared GE and Siemens MR series in
   ../shared/data/dicom_dcm_qa_nih_ge_siemens_mr/data/In (or RADLAKE_SHARED_DATA).
   Copy k gives every original study and series a fresh StudyInstanceUID and
   SeriesInstanceUID (the same within the copy, so series grouping stays real) and
   every file a fresh SOPInstanceUID, so all N files have distinct content. `--corpus
   DIR` keeps the corpus there and reuses it on the next run.
2. Bound: the same files only read, hashed (sha256), sniffed, their metadata read,
   rendered to a 512-px preview and PNG-encoded exactly as the ingest worker does, in
   a forkserver process pool of the same size with chunks of 8, with no store and no
   catalog. This is the CPU work ingest cannot avoid.
3. Ingest with the default settings (a SQLite catalog and a local store in a fresh
   temporary lake), then the same with a fresh PostgreSQL database (`--postgres-url`,
   dropped afterwards; `--skip-postgres` to leave it out).

Every corpus file is read once before any timing, so every mode sees a warm page cache.
Targets: ingest reaches >= 70% of the bound's files/s on SQLite, >= 60% on PostgreSQL.
Exit status: 0 when every target is met, 1 when one is missed or a count is wrong,
2 when the shared data or the PostgreSQL server is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from radlake.catalog.db import make_engine, normalize_url, upgrade
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.formats import detect_format, reader_for
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.pipelines.ingest import ingest
from radlake.pipelines.worker import _preview_png
from radlake.storage.store import open_store

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADLAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
SOURCE = SHARED_DATA / "dicom_dcm_qa_nih_ge_siemens_mr" / "data" / "In"
DEFAULT_POSTGRES_URL = os.environ.get(
    "RADLAKE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MARKER = "corpus.json"
FILES_DIR = "files"
CHUNK_SIZE = 8
SQLITE_TARGET = 70.0
POSTGRES_TARGET = 60.0
KEY = b"radlake-benchmark-key"


@dataclass(frozen=True, slots=True)
class Result:
    """One timed mode; percentages are of the bound's files/s."""

    mode: str
    files: int
    seconds: float
    megabytes: float
    percent_of_bound: float | None = None
    target_percent: float | None = None

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def met(self) -> bool | None:
        if self.target_percent is None or self.percent_of_bound is None:
            return None
        return self.percent_of_bound >= self.target_percent

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "seconds": round(self.seconds, 3),
            "megabytes": round(self.megabytes, 3),
            "files_per_second": round(self.files_per_second, 2),
            "megabytes_per_second": round(self.megabytes_per_second, 2),
            "percent_of_bound": (
                None if self.percent_of_bound is None else round(self.percent_of_bound, 1)
            ),
            "met": self.met,
        }


class BenchmarkError(Exception):
    """A precondition is missing (shared data, database server): exit status 2."""


# -- corpus ------------------------------------------------------------------------


def source_files(source: Path) -> list[Path]:
    """The DICOM files of the shared GE/Siemens series, in a stable order."""
    if not source.is_dir():
        raise BenchmarkError(
            f"shared DICOM data not found at {source}; the benchmark replicates those files "
            "(set RADLAKE_SHARED_DATA to the folder holding dicom_dcm_qa_nih_ge_siemens_mr)"
        )
    files = sorted(path for path in source.rglob("*.dcm") if path.is_file())
    if not files:
        raise BenchmarkError(f"no .dcm files under {source}")
    return files


def corpus_files(corpus: Path) -> list[Path]:
    """The replicated files of a corpus folder, sorted."""
    return sorted(path for path in (corpus / FILES_DIR).rglob("*.dcm") if path.is_file())


def build_corpus(corpus: Path, n: int, source: Path) -> tuple[list[Path], bool]:
    """N replicated files under corpus/files; returns them and whether they were built.

    A corpus folder holding the right count (and this script's marker) is reused.
    """
    marker = corpus / MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        files = corpus_files(corpus)
        if recorded.get("files") == n and len(files) == n:
            return files, False
        shutil.rmtree(corpus / FILES_DIR, ignore_errors=True)
        marker.unlink()
    elif corpus.exists() and any(corpus.iterdir()):
        raise BenchmarkError(f"{corpus} is not empty and holds no {MARKER}; give an empty folder")
    originals = source_files(source)
    out_root = corpus / FILES_DIR
    for copy in range(math.ceil(n / len(originals))):
        study_uids: dict[str, str] = {}
        series_uids: dict[str, str] = {}
        for original in originals[: n - copy * len(originals)]:
            ds = pydicom.dcmread(original)
            ds.StudyInstanceUID = study_uids.setdefault(str(ds.StudyInstanceUID), generate_uid())
            ds.SeriesInstanceUID = series_uids.setdefault(str(ds.SeriesInstanceUID), generate_uid())
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = out_root / f"copy-{copy:04d}" / original.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target)
    marker.write_text(json.dumps({"files": n, "source": str(source)}) + "\n")
    files = corpus_files(corpus)
    if len(files) != n:
        raise RuntimeError(f"built {len(files)} corpus files, expected {n}")
    return files, True


def warm_read(files: Sequence[Path]) -> int:
    """Read every file once (page cache warm for every mode); returns the total bytes."""
    return sum(len(path.read_bytes()) for path in files)


# -- bound -------------------------------------------------------------------------


def _bound_one(path: str, pseudonymizer: Pseudonymizer) -> int:
    """The ingest worker's CPU work for one file, without store or catalog."""
    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    fmt = detect_format(data)
    reader = reader_for(fmt)
    reader.read_metadata(data, pseudonymizer)
    rendered = render(reader.open_pixels(data), size=PREVIEW_SIZE)
    window = None if rendered.window is None else (rendered.window.center, rendered.window.width)
    _preview_png(rendered.image, window)
    return len(data)


def _bound_chunk(paths: Sequence[str]) -> int:
    pseudonymizer = Pseudonymizer(KEY)
    return sum(_bound_one(path, pseudonymizer) for path in paths)


def run_bound(files: Sequence[Path], workers: int) -> Result:
    """Time the unavoidable per-file work in a pool like the ingest executor's."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["radlake.pipelines.worker"])
    paths = [str(path) for path in files]
    chunks = [paths[i : i + CHUNK_SIZE] for i in range(0, len(paths), CHUNK_SIZE)]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_bound_chunk, chunk) for chunk in chunks]
        total = sum(future.result() for future in as_completed(futures))
    seconds = time.perf_counter() - started
    return Result("bound (read+hash+decode+preview)", len(files), seconds, total / 1e6)


# -- ingest ------------------------------------------------------------------------


def run_ingest(
    mode: str, corpus: Path, n: int, catalog_url: str, lake: Path, workers: int
) -> Result:
    """Ingest the corpus folder into a fresh lake (catalog_url + local store under lake)."""
    engine = make_engine(catalog_url)
    try:
        upgrade(engine)
        store = open_store((lake / "store").as_uri())
        summary = ingest(
            [corpus / FILES_DIR],
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(KEY),
            workers=workers,
        )
    finally:
        engine.dispose()
    if summary.inputs != n or summary.catalogued != n:
        raise RuntimeError(f"{mode}: expected {n} catalogued, got {summary.line()}")
    return Result(mode, summary.inputs, summary.seconds, summary.bytes_read / 1e6)


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of admin_url, dropped afterwards; yields its URL."""
    name = f"radlake_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        admin.dispose()
        raise BenchmarkError(
            f"PostgreSQL at {make_url(admin_url).render_as_string(hide_password=True)} is not "
            f"usable ({str(exc).splitlines()[0]}); start it or pass --skip-postgres"
        ) from exc
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def ingest_mode(
    mode: str, corpus: Path, n: int, workers: int, postgres_url: str | None = None
) -> Result:
    """One ingest run into a fresh temporary lake (SQLite file, or a new PG database)."""
    lake = Path(tempfile.mkdtemp(prefix="radlake-bench-lake-"))
    try:
        if postgres_url is None:
            return run_ingest(
                mode, corpus, n, f"sqlite:///{lake / 'catalog.sqlite'}", lake, workers
            )
        with postgres_database(postgres_url) as url:
            return run_ingest(mode, corpus, n, url, lake, workers)
    finally:
        shutil.rmtree(lake, ignore_errors=True)


# -- report ------------------------------------------------------------------------


def relative(result: Result, bound: Result, target: float) -> Result:
    percent = 100.0 * result.files_per_second / bound.files_per_second
    return Result(result.mode, result.files, result.seconds, result.megabytes, percent, target)


def table(results: Sequence[Result]) -> str:
    header = ("mode", "files", "seconds", "files/s", "MB/s", "% of bound", "target", "met")
    rows = [header]
    for r in results:
        rows.append(
            (
                r.mode,
                str(r.files),
                f"{r.seconds:.2f}",
                f"{r.files_per_second:.1f}",
                f"{r.megabytes_per_second:.2f}",
                "-" if r.percent_of_bound is None else f"{r.percent_of_bound:.1f}%",
                "-" if r.target_percent is None else f">= {r.target_percent:.0f}%",
                "-" if r.met is None else ("yes" if r.met else "no"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2400, help="files in the corpus (>= 2000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--corpus", type=Path, help="keep the corpus here and reuse it")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="admin database URL")
    parser.add_argument("--skip-postgres", action="store_true", help="leave PostgreSQL out")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.n < 2000:
        parser.error("--n must be at least 2000")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, workers = int(args.n), int(args.workers)

    def say(message: str) -> None:
        # Progress goes to stderr, so stdout holds only the table (or the JSON).
        print(message, file=sys.stderr, flush=True)

    corpus: Path = args.corpus or Path(tempfile.mkdtemp(prefix="radlake-bench-corpus-"))
    try:
        started = time.perf_counter()
        files, built = build_corpus(corpus.resolve(), n, SOURCE)
        say(
            f"corpus: {n} DICOM files in {corpus} "
            + (f"(built in {time.perf_counter() - started:.1f} s)" if built else "(reused)")
        )
        total_bytes = warm_read(files)
        say(
            f"warm cache: every file read once before timing ({total_bytes / 1e6:.1f} MB); "
            f"{workers} worker processes on {os.cpu_count()} CPUs"
        )
        bound = run_bound(files, workers)
        say(f"bound done in {bound.seconds:.1f} s")
        results = [bound]
        sqlite = ingest_mode("ingest sqlite + local store", corpus.resolve(), n, workers)
        say(f"sqlite ingest done in {sqlite.seconds:.1f} s")
        results.append(relative(sqlite, bound, SQLITE_TARGET))
        if not args.skip_postgres:
            postgres = ingest_mode(
                "ingest postgresql + local store", corpus.resolve(), n, workers, args.postgres_url
            )
            say(f"postgresql ingest done in {postgres.seconds:.1f} s")
            results.append(relative(postgres, bound, POSTGRES_TARGET))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.corpus is None:
            shutil.rmtree(corpus, ignore_errors=True)
    if args.json:
        report = {
            "files": n,
            "megabytes": round(total_bytes / 1e6, 3),
            "workers": workers,
            "cpus": os.cpu_count(),
            "warm_cache": True,
            "corpus": str(args.corpus) if args.corpus else None,
            "results": [result.as_dict() for result in results],
        }
        print(json.dumps(report, indent=2))
    else:
        print()
        print(table(results))
    return 0 if all(result.met is not False for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
