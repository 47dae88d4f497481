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
The modes run in `--repeat` interleaved rounds (default 3) and the fastest run of each
is reported, which filters out other load on a shared machine. The CPU columns do not
depend on such load: "CPU ms/file" counts this process and every pool worker (Linux;
the PostgreSQL server's own CPU is not counted), "CPU % of bound" is the bound's CPU
time over the mode's, and "main CPU s" is this (the parent) process alone: discovery,
result unpickling, catalog writes.
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
import multiprocessing.forkserver
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
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
from radlake.pipelines.worker import encode_preview
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
BOUND = "bound (read+hash+decode+preview)"
SQLITE = "ingest sqlite + local store"
POSTGRES = "ingest postgresql + local store"


@dataclass(frozen=True, slots=True)
class Result:
    """One timed mode; percentages are of the bound's files/s."""

    mode: str
    files: int
    seconds: float
    megabytes: float
    main_cpu_seconds: float
    cpu_seconds: float | None
    percent_of_bound: float | None = None
    target_percent: float | None = None
    cpu_percent_of_bound: float | None = None

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_file(self) -> float | None:
        return None if self.cpu_seconds is None else 1000 * self.cpu_seconds / self.files

    @property
    def met(self) -> bool | None:
        if self.target_percent is None or self.percent_of_bound is None:
            return None
        return self.percent_of_bound >= self.target_percent

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "seconds": round(self.seconds, 3),
            "megabytes": round(self.megabytes, 3),
            "main_cpu_seconds": round(self.main_cpu_seconds, 3),
            "cpu_seconds": _rounded(self.cpu_seconds, 3),
            "cpu_ms_per_file": _rounded(self.cpu_ms_per_file, 3),
            "files_per_second": round(self.files_per_second, 2),
            "megabytes_per_second": round(self.megabytes_per_second, 2),
            "percent_of_bound": _rounded(self.percent_of_bound, 1),
            "cpu_percent_of_bound": _rounded(self.cpu_percent_of_bound, 1),
            "met": self.met,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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
        if [entry.name for entry in corpus.iterdir()] != [FILES_DIR]:
            raise BenchmarkError(f"{corpus} is not empty and holds no {MARKER}: give another")
        shutil.rmtree(corpus / FILES_DIR)  # an interrupted build of ours: start again
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


# -- CPU accounting ----------------------------------------------------------------


def _pool_cpu() -> float | None:
    """CPU seconds of the forkserver's finished children (every pool worker), or None.

    Pool workers are children of the forkserver, which reaps them, so their CPU time
    lands in its cutime/cstime once a pool has shut down. Linux only (/proc).
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return 0.0  # not started yet: nothing counted so far
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class CpuClock:
    """CPU time of this process and of the pool workers between start and stop."""

    def __init__(self) -> None:
        self._main, self._pool = time.process_time(), _pool_cpu()

    def stop(self) -> tuple[float, float | None]:
        """(this process's CPU seconds, all processes' CPU seconds or None)."""
        main, pool = time.process_time() - self._main, _pool_cpu()
        if pool is None or self._pool is None:
            return main, None
        return main, main + pool - self._pool


# -- bound -------------------------------------------------------------------------


def _bound_one(path: str, pseudonymizer: Pseudonymizer) -> int:
    """The ingest worker's CPU work for one file, without store or catalog."""
    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    fmt = detect_format(data)
    _metadata, open_pixels = reader_for(fmt).read(data, pseudonymizer)
    rendered = render(open_pixels(), size=PREVIEW_SIZE)
    window = None if rendered.window is None else (rendered.window.center, rendered.window.width)
    encode_preview(rendered.image, window)
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
    started, clock = time.perf_counter(), CpuClock()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_bound_chunk, chunk) for chunk in chunks]
        total = sum(future.result() for future in as_completed(futures))
    seconds = time.perf_counter() - started
    return Result(BOUND, len(files), seconds, total / 1e6, *clock.stop())


# -- ingest ------------------------------------------------------------------------


def run_ingest(
    mode: str, corpus: Path, n: int, catalog_url: str, lake: Path, workers: int
) -> Result:
    """Ingest the corpus folder into a fresh lake (catalog_url + local store under lake)."""
    engine = make_engine(catalog_url)
    try:
        upgrade(engine)
        store = open_store((lake / "store").as_uri())
        clock = CpuClock()
        summary = ingest(
            [corpus / FILES_DIR],
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(KEY),
            workers=workers,
        )
        main_cpu, cpu = clock.stop()
    finally:
        engine.dispose()
    if summary.inputs != n or summary.catalogued != n:
        raise RuntimeError(f"{mode}: expected {n} catalogued, got {summary.line()}")
    return Result(mode, summary.inputs, summary.seconds, summary.bytes_read / 1e6, main_cpu, cpu)


def _unusable(admin_url: str, exc: Exception) -> BenchmarkError:
    where = make_url(admin_url).render_as_string(hide_password=True)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return BenchmarkError(
        f"PostgreSQL at {where} is not usable ({reason}); start it or pass --skip-postgres"
    )


def check_postgres(admin_url: str) -> None:
    """Fail early (before building the corpus) when the server cannot be reached."""
    admin = create_engine(normalize_url(admin_url))
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise _unusable(admin_url, exc) from exc
    finally:
        admin.dispose()


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
        raise _unusable(admin_url, exc) from exc
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
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
    """result with its files/s as a percentage of the bound's, and its target."""
    percent = 100.0 * result.files_per_second / bound.files_per_second
    cpu_percent = None
    if result.cpu_seconds and bound.cpu_seconds:
        cpu_percent = 100.0 * bound.cpu_seconds / result.cpu_seconds
    return replace(
        result, percent_of_bound=percent, target_percent=target, cpu_percent_of_bound=cpu_percent
    )


def fastest(runs: Sequence[Result]) -> Result:
    return min(runs, key=lambda run: run.seconds)


def table(results: Sequence[Result]) -> str:
    header = (
        "mode",
        "files",
        "seconds",
        "files/s",
        "MB/s",
        "% of bound",
        "target",
        "met",
        "CPU ms/file",
        "CPU % of bound",
        "main CPU s",
    )
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
                "-" if r.cpu_ms_per_file is None else f"{r.cpu_ms_per_file:.2f}",
                "-" if r.cpu_percent_of_bound is None else f"{r.cpu_percent_of_bound:.1f}%",
                f"{r.main_cpu_seconds:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest throughput of radlake against this machine's CPU bound."
    )
    parser.add_argument("--n", type=int, default=2400, help="files in the corpus (>= 2000)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)"
    )
    parser.add_argument("--corpus", type=Path, help="build the corpus here once and reuse it")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of (bound, sqlite, postgresql), interleaved; the fastest run of each "
        "mode is reported, which filters out other load on the machine (default 3)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="a database URL on the PostgreSQL server; a fresh database is created beside it",
    )
    parser.add_argument("--skip-postgres", action="store_true", help="leave PostgreSQL out")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.n < 2000:
        parser.error("--n must be at least 2000")
    if args.workers < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, workers, repeat = int(args.n), int(args.workers), int(args.repeat)

    def say(message: str) -> None:
        # Progress goes to stderr, so stdout holds only the table (or the JSON).
        print(message, file=sys.stderr, flush=True)

    corpus = (args.corpus or Path(tempfile.mkdtemp(prefix="radlake-bench-corpus-"))).resolve()
    runs: dict[str, list[Result]] = {BOUND: [], SQLITE: []}
    if not args.skip_postgres:
        runs[POSTGRES] = []
    load = os.getloadavg()[0]
    try:
        if not args.skip_postgres:
            check_postgres(args.postgres_url)
        started = time.perf_counter()
        files, built = build_corpus(corpus, n, SOURCE)
        say(
            f"corpus: {n} DICOM files in {corpus} "
            + (f"(built in {time.perf_counter() - started:.1f} s)" if built else "(reused)")
        )
        total_bytes = warm_read(files)
        say(
            f"warm page cache: every file was read once before timing "
            f"({total_bytes / 1e6:.1f} MB); {workers} worker processes on "
            f"{os.cpu_count()} CPUs; load average {load:.2f} at start"
        )
        for round_number in range(1, repeat + 1):
            for mode in runs:
                if mode == BOUND:
                    result = run_bound(files, workers)
                else:
                    url = args.postgres_url if mode == POSTGRES else None
                    result = ingest_mode(mode, corpus, n, workers, url)
                runs[mode].append(result)
                say(
                    f"round {round_number}/{repeat}: {mode}: {result.seconds:.2f} s "
                    f"({result.files_per_second:.1f} files/s)"
                )
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a wrong count: the figures would mean nothing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.corpus is None:
            shutil.rmtree(corpus, ignore_errors=True)
    bound = fastest(runs[BOUND])
    results = [bound, relative(fastest(runs[SQLITE]), bound, SQLITE_TARGET)]
    if POSTGRES in runs:
        results.append(relative(fastest(runs[POSTGRES]), bound, POSTGRES_TARGET))
    if args.json:
        report = {
            "files": n,
            "megabytes": round(total_bytes / 1e6, 3),
            "workers": workers,
            "cpus": os.cpu_count(),
            "repeat": repeat,
            "warm_cache": True,
            "load_average_at_start": round(load, 2),
            "corpus": str(args.corpus) if args.corpus else None,
            "results": [result.as_dict() for result in results],
            "runs": {
                mode: [run.as_dict() for run in mode_runs] for mode, mode_runs in runs.items()
            },
        }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"\n{n} DICOM files ({total_bytes / 1e6:.1f} MB), {workers} workers, "
            f"fastest of {repeat} interleaved run(s) per mode, warm page cache "
            "(every file read once before timing)"
        )
        print(table(results))
    return 0 if all(result.met is not False for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
