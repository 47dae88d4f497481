"""Ingest throughput on real-size images against the CPU bound of this machine.

Run it from the repository root (after `make test` or any install of radlake):

    .venv/bin/python benchmarks/ingest.py                    # 2,000 files, both corpora
    .venv/bin/python benchmarks/ingest.py --files 200 --repeat 1 --profile 60   # develop
    .venv/bin/python benchmarks/ingest.py --corpora archive --skip-postgres --json
    .venv/bin/python benchmarks/ingest.py --orthanc          # add the Orthanc peer row

What it measures, for each corpus (benchmarks/corpus.py; built once into
$RADLAKE_BENCH_CACHE, default /tmp/radlake-bench-cache, and reused):

- archive: --files real DICOM files (default 2,000, about 3 GB) in the mix of a real
  archive, MR 50 % (64^2 .. 1368x1350), CT 35 % (128^2, 512^2), CR 15 % (~2k x 2k,
  16-bit), every file a replica of a real image with fresh Study/Series/SOP UIDs.
- small-mr: the former benchmark's corpus (shared GE/Siemens MR, 64^2 and 216^2).

1. Bound: read + sha256 + sniff + header + decode + 512-px preview render + PNG encode,
   with the library's own detect_format/reader_for/render/encode_preview, nothing
   stored, in a forkserver pool of --workers processes (chunks of 8). This is the
   CPU work ingest cannot avoid.
2. ingest() into a fresh SQLite catalog + local store (the default lake).
3. ingest() into a fresh PostgreSQL database (created beside --postgres-url, dropped
   afterwards; --skip-postgres leaves it out) + local store.
4. Optional peer (--orthanc): Orthanc's REST ingest of the same files, 4 clients.
5. A profiling pass (--profile files, a sample keeping the corpus mix): CPU ms per
   file per stage and modality, in one process (see benchmarks/stages.py).

Every corpus file is read once before timing (warm page cache). The modes run in
--repeat interleaved rounds (default 3), each in a fresh lake, and the fastest run of
each is reported, which filters out other load on a shared machine. "CPU ms/file"
counts this process and every pool worker (Linux; PostgreSQL's own CPU is the
separate "PG CPU" column, from its backends' /proc entries), "busy" is that CPU over
(seconds x CPUs), the share of the machine the mode kept busy, and "main CPU s" is
this process alone: discovery, result unpickling, catalog writes.

Targets: ingest >= 0.70 of the bound's files/s on SQLite, >= 0.60 on PostgreSQL
(both corpora). Moonshot: faster than Orthanc's REST ingest of the same files (the
issue measured Orthanc 1.10 at 170-184 files/s with 4 clients).
On a working tree that others are editing, measure a committed snapshot (workers
import radlake afresh, and a half-saved change would quarantine every file):

    rm -rf /tmp/radlake-snap && mkdir /tmp/radlake-snap
    git archive HEAD src | tar -x -C /tmp/radlake-snap
    PYTHONPATH=/tmp/radlake-snap/src .venv/bin/python benchmarks/ingest.py

Exit status: 0 when every target is met, 1 when one is missed or a count is wrong,
2 when the shared data, pydicom-data or the PostgreSQL server is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import orthanc
import radlake
import stages
from corpus import (
    CACHE,
    FILES_DIR,
    SOURCE,
    BenchmarkError,
    Description,
    build_archive,
    build_corpus,
    describe,
)
from radlake.catalog.db import make_engine, normalize_url, upgrade
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.render import PREVIEW_SIZE, render
from radlake.pipelines.ingest import ingest
from radlake.pipelines.worker import encode_preview
from radlake.storage.store import open_store

__all__ = ["SOURCE", "BenchmarkError", "build_corpus"]  # benchmarks/api.py uses them

DEFAULT_POSTGRES_URL = os.environ.get(
    "RADLAKE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ISSUE_FILES = 2000
CHUNK_SIZE = 8
SQLITE_TARGET = 0.70
POSTGRES_TARGET = 0.60
ORTHANC_ISSUE = (170.0, 184.0)  # files/s, Orthanc 1.10, 4 REST clients (the issue)
KEY = b"radlake-benchmark-key"
BOUND = "bound (read+hash+decode+preview)"
SQLITE = "ingest sqlite + local store"
POSTGRES = "ingest postgresql + local store"
SQLITE_MORE = "ingest sqlite + local store, {} workers (diagnostic)"
ORTHANC = "orthanc REST /instances"
CORPORA = ("archive", "small-mr")


@dataclass(frozen=True, slots=True)
class Result:
    """One timed mode; ratios are of the bound's files/s."""

    corpus: str
    mode: str
    files: int
    seconds: float
    megabytes: float
    main_cpu_seconds: float | None
    cpu_seconds: float | None
    server_cpu_seconds: float | None = None
    ratio: float | None = None
    target: float | None = None

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
    def server_ms_per_file(self) -> float | None:
        if self.server_cpu_seconds is None:
            return None
        return 1000 * self.server_cpu_seconds / self.files

    @property
    def busy(self) -> float | None:
        """Share of the machine's CPUs this run kept busy (its processes only)."""
        if self.cpu_seconds is None or self.seconds <= 0:
            return None
        return self.cpu_seconds / (self.seconds * (os.cpu_count() or 1))

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "files_per_second": round(self.files_per_second, 2),
            "megabytes_per_second": round(self.megabytes_per_second, 2),
            "cpu_ms_per_file": _rounded(self.cpu_ms_per_file),
            "server_cpu_ms_per_file": _rounded(self.server_ms_per_file),
            "busy": _rounded(self.busy),
            "met": self.met,
        }


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- CPU accounting ----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pool_cpu() -> float | None:
    """CPU seconds of the forkserver's finished children (every pool worker), or None.

    Pool workers are children of the forkserver, which reaps them, so their CPU time
    lands in its cutime/cstime once a pool has shut down. Linux only (/proc).
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return 0.0  # not started yet: nothing counted so far
    fields = _stat_fields(pid)
    if fields is None:
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


def postgres_backend_cpu(engine: Engine) -> float | None:
    """CPU seconds of the server backends connected to engine's (fresh) database.

    A lower bound (backends that ended earlier are not counted); None when the server
    is not on this host or /proc is not readable.
    """
    try:
        with engine.connect() as connection:
            pids = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()
            total = 0.0
            for pid in pids:
                fields = _stat_fields(int(pid))
                if fields is None:
                    return None
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return total
    except Exception:
        return None


# -- bound -------------------------------------------------------------------------


def _bound_one(path: str, pseudonymizer: Pseudonymizer) -> int:
    """The ingest worker's CPU work for one file, without store or catalog."""
    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    _fmt, _metadata, open_pixels = stages.read_image(data, pseudonymizer)
    rendered = render(open_pixels(), size=PREVIEW_SIZE)
    window = None if rendered.window is None else (rendered.window.center, rendered.window.width)
    encode_preview(rendered.image, window)
    return len(data)


def _bound_chunk(paths: Sequence[str]) -> int:
    pseudonymizer = Pseudonymizer(KEY)
    return sum(_bound_one(path, pseudonymizer) for path in paths)


def run_bound(corpus: str, files: Sequence[Path], workers: int) -> Result:
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
    return Result(corpus, BOUND, len(files), seconds, total / 1e6, *clock.stop())


# -- ingest ------------------------------------------------------------------------


def run_ingest(
    corpus: str, mode: str, folder: Path, n: int, catalog_url: str, lake: Path, workers: int
) -> Result:
    """Ingest the corpus folder into a fresh lake (catalog_url + local store under lake)."""
    engine = make_engine(catalog_url)
    try:
        upgrade(engine)
        store = open_store((lake / "store").as_uri())
        clock = CpuClock()
        summary = ingest(
            [folder / FILES_DIR],
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(KEY),
            workers=workers,
        )
        main_cpu, cpu = clock.stop()
        server_cpu = postgres_backend_cpu(engine) if engine.dialect.name == "postgresql" else None
    finally:
        engine.dispose()
    if summary.inputs != n or summary.catalogued != n:
        raise RuntimeError(f"{corpus} {mode}: expected {n} catalogued, got {summary.line()}")
    megabytes = summary.bytes_read / 1e6
    return Result(corpus, mode, n, summary.seconds, megabytes, main_cpu, cpu, server_cpu)


def _unusable(admin_url: str, exc: Exception) -> BenchmarkError:
    where = make_url(admin_url).render_as_string(hide_password=True)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return BenchmarkError(
        f"PostgreSQL at {where} is not usable ({reason}); start it or pass --skip-postgres"
    )


def check_postgres(admin_url: str) -> None:
    """Fail early (before building a corpus) when the server cannot be reached."""
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


@contextmanager
def sqlite_database(lake: Path) -> Iterator[str]:
    """A fresh SQLite catalog file in the lake folder."""
    yield f"sqlite:///{lake / 'catalog.sqlite'}"


def ingest_mode(
    corpus: str, mode: str, folder: Path, n: int, workers: int, postgres_url: str | None
) -> Result:
    """One ingest run into a fresh temporary lake (SQLite file, or a new PG database)."""
    lake = Path(tempfile.mkdtemp(prefix="radlake-bench-lake-"))
    try:
        catalog = sqlite_database(lake) if postgres_url is None else postgres_database(postgres_url)
        with catalog as url:
            return run_ingest(corpus, mode, folder, n, url, lake, workers)
    finally:
        shutil.rmtree(lake, ignore_errors=True)


def run_orthanc(corpus: str, files: Sequence[Path], clients: int) -> Result:
    """The peer: a fresh Orthanc fed the same files over REST by `clients` threads."""
    run = orthanc.post_corpus(files, clients)
    if run.failures:
        raise RuntimeError(f"{corpus} Orthanc {run.version}: {run.failures} uploads failed")
    # CPU: Orthanc's process and this one's client threads.
    server = run.server_cpu_seconds
    cpu = None if server is None else server + run.client_cpu_seconds
    mode = f"{ORTHANC} ({clients} clients, Orthanc {run.version})"
    return Result(corpus, mode, run.files, run.seconds, run.megabytes, None, cpu)


# -- report ------------------------------------------------------------------------


def relative(result: Result, bound: Result, target: float | None) -> Result:
    """result with its files/s as a ratio of the bound's, and its target."""
    return replace(result, ratio=result.files_per_second / bound.files_per_second, target=target)


def fastest(runs: Sequence[Result]) -> Result:
    return min(runs, key=lambda run: run.seconds)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: Sequence[Result]) -> str:
    header = (
        "corpus",
        "mode",
        "files",
        "seconds",
        "files/s",
        "MB/s",
        "x bound",
        "target",
        "met",
        "CPU ms/file",
        "busy",
        "main CPU s",
        "PG CPU ms/file",
    )
    rows = [header]
    for r in results:
        rows.append(
            (
                r.corpus,
                r.mode,
                str(r.files),
                f"{r.seconds:.2f}",
                f"{r.files_per_second:.1f}",
                f"{r.megabytes_per_second:.1f}",
                _cell(r.ratio, ".2f"),
                "-" if r.target is None else f">= {r.target:.2f}",
                "-" if r.met is None else ("yes" if r.met else "NO"),
                _cell(r.cpu_ms_per_file, ".2f"),
                "-" if r.busy is None else f"{100 * r.busy:.0f} %",
                _cell(r.main_cpu_seconds, ".2f"),
                _cell(r.server_ms_per_file, ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def moonshot_line(results: Sequence[Result]) -> str:
    """Ingest (SQLite) of the archive against Orthanc: measured here, else the issue's."""
    ours = [r for r in results if r.corpus == "archive" and r.mode == SQLITE]
    peers = [r for r in results if r.corpus == "archive" and r.mode.startswith("orthanc")]
    if not ours:
        return "moonshot (faster than Orthanc's REST ingest): archive not measured"
    mine = ours[0].files_per_second
    if peers:
        theirs, where = peers[0].files_per_second, f"{peers[0].files_per_second:.1f} measured here"
    else:
        theirs, where = ORTHANC_ISSUE[1], "170-184 files/s in the issue, not measured here"
    verdict = "yes" if mine > theirs else "NO"
    return (
        f"moonshot: archive ingest (SQLite) {mine:.1f} files/s vs Orthanc REST ingest "
        f"({where}): faster: {verdict}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest throughput of radlake on real-size images against the CPU bound."
    )
    parser.add_argument(
        "--files",
        "--n",
        dest="files",
        type=int,
        default=ISSUE_FILES,
        help=f"files per corpus (default {ISSUE_FILES}; fewer is a development run)",
    )
    parser.add_argument(
        "--corpora",
        default=",".join(CORPORA),
        help=f"comma-separated, of {', '.join(CORPORA)} (default: both)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)"
    )
    parser.add_argument(
        "--cache", type=Path, default=CACHE, help=f"corpus cache folder (default {CACHE})"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="interleaved rounds of every mode; the fastest run of each is reported (default 3)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=200,
        help="files in the per-stage profiling pass (a sample of each corpus; 0: skip)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="a database URL on the PostgreSQL server; a fresh database is created beside it",
    )
    parser.add_argument("--skip-postgres", action="store_true", help="leave PostgreSQL out")
    parser.add_argument(
        "--orthanc", action="store_true", help="add Orthanc's REST ingest (skipped if absent)"
    )
    parser.add_argument("--orthanc-clients", type=int, default=4, help="REST clients (4)")
    parser.add_argument(
        "--also-workers",
        type=int,
        default=0,
        help="add a diagnostic SQLite ingest row with this many workers (e.g. 2 x CPUs: "
        "does overlapping disk waits close the gap to the bound?)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    args.corpora = [name.strip() for name in args.corpora.split(",") if name.strip()]
    if not args.corpora or any(name not in CORPORA for name in args.corpora):
        parser.error(f"--corpora takes names of {', '.join(CORPORA)}")
    if args.files < 1 or args.workers < 1 or args.repeat < 1 or args.profile < 0:
        parser.error("--files, --workers and --repeat must be at least 1, --profile at least 0")
    return args


def prepare(name: str, cache: Path, n: int, say: Callable[[str], None]) -> tuple[Path, list[Path]]:
    """The corpus's folder and files, built into the cache the first time."""
    started = time.perf_counter()
    folder = cache / f"{name}-n{n}"
    if name == "archive":
        files, plan, built = build_archive(folder, n, say)
        if plan.left_out:
            say(f"archive: sources not found here, their share went to the rest: {plan.left_out}")
    else:
        files, built = build_corpus(folder, n, SOURCE)
    how = f"built in {time.perf_counter() - started:.1f} s" if built else "reused"
    say(f"{name}: {len(files)} files in {folder} ({how})")
    return folder, files


def measure(
    name: str,
    folder: Path,
    files: Sequence[Path],
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> tuple[list[Result], list[dict[str, object]]]:
    """Every mode on one corpus, interleaved rounds; (fastest per mode, every run)."""
    n, workers = len(files), int(args.workers)
    modes: dict[str, Callable[[], Result]] = {
        BOUND: lambda: run_bound(name, files, workers),
        SQLITE: lambda: ingest_mode(name, SQLITE, folder, n, workers, None),
    }
    if not args.skip_postgres:
        modes[POSTGRES] = lambda: ingest_mode(name, POSTGRES, folder, n, workers, args.postgres_url)
    if args.also_workers:
        more = int(args.also_workers)
        modes[SQLITE_MORE.format(more)] = lambda: ingest_mode(
            name, SQLITE_MORE.format(more), folder, n, more, None
        )
    if args.orthanc and orthanc.binary():
        modes[ORTHANC] = lambda: run_orthanc(name, files, int(args.orthanc_clients))
    mode_runs: dict[str, list[Result]] = {mode: [] for mode in modes}
    for round_number in range(1, int(args.repeat) + 1):
        for mode, run in modes.items():
            result = run()
            mode_runs[mode].append(result)
            say(
                f"{name} round {round_number}/{args.repeat}: {result.mode}: "
                f"{result.seconds:.2f} s ({result.files_per_second:.1f} files/s, "
                f"load {os.getloadavg()[0]:.2f})"
            )
    targets = {SQLITE: SQLITE_TARGET, POSTGRES: POSTGRES_TARGET, ORTHANC: None}
    bound = fastest(mode_runs[BOUND])
    results = [bound]
    for mode in list(modes)[1:]:
        results.append(relative(fastest(mode_runs[mode]), bound, targets.get(mode)))
    return results, [run.as_dict() for runs in mode_runs.values() for run in runs]


def library() -> str:
    """Where radlake was imported from, and its commit when that is a git checkout."""
    folder = Path(radlake.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{folder} (not a git checkout)"
    return f"{folder} at {commit}" + (" with uncommitted changes" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n = int(args.files)

    def say(message: str) -> None:
        # Progress goes to stderr, so stdout holds only the tables (or the JSON).
        print(message, file=sys.stderr, flush=True)

    load_start = os.getloadavg()
    results: list[Result] = []
    runs: dict[str, list[dict[str, object]]] = {}
    descriptions: dict[str, Description] = {}
    profiles: dict[str, stages.Profile] = {}
    notes: list[str] = []
    try:
        if not args.skip_postgres:
            check_postgres(args.postgres_url)
        if args.orthanc and (reason := orthanc.unavailable_reason()):
            notes.append(f"orthanc row skipped: {reason}")
            say(notes[-1])
        for name in args.corpora:
            folder, files = prepare(name, args.cache.resolve(), n, say)
            description = descriptions[name] = describe(files)
            say("\n".join([f"{name} corpus:", *description.lines()]))
            warm = sum(len(path.read_bytes()) for path in files)
            say(f"warm page cache: {warm / 1e6:.0f} MB read once; load {os.getloadavg()[0]:.2f}")
            corpus_results, runs[name] = measure(name, folder, files, args, say)
            results.extend(corpus_results)
            if args.profile:
                profiles[name] = profile(name, files, description, args, say)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a wrong count: the figures would mean nothing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    load_end = os.getloadavg()
    report(args, results, runs, descriptions, profiles, notes, load_start, load_end)
    return 0 if all(result.met is not False for result in results) else 1


def profile(
    name: str,
    files: Sequence[Path],
    description: Description,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> stages.Profile:
    chosen = stages.sample(files, int(args.profile))
    catalogs: dict[str, Callable[[Path], Any]] = {"sqlite": sqlite_database}
    if not args.skip_postgres:
        catalogs["postgresql"] = lambda _lake: postgres_database(args.postgres_url)
    started = time.perf_counter()
    result = stages.profile_stages(chosen, description.modality_of, KEY, catalogs)
    say(f"{name}: profiled {len(chosen)} files in {time.perf_counter() - started:.1f} s")
    return result


def report(
    args: argparse.Namespace,
    results: Sequence[Result],
    runs: dict[str, list[dict[str, object]]],
    descriptions: dict[str, Description],
    profiles: dict[str, stages.Profile],
    notes: Sequence[str],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
) -> None:
    n, workers, repeat = int(args.files), int(args.workers), int(args.repeat)
    machine = (
        f"radlake {library()}\n{os.cpu_count()} CPUs, {workers} workers; load average (1/5/15 min) "
        f"{'/'.join(f'{v:.2f}' for v in load_start)} at start, "
        f"{'/'.join(f'{v:.2f}' for v in load_end)} at end"
    )
    if args.json:
        document = {
            "files": n,
            "library": library(),
            "workers": workers,
            "cpus": os.cpu_count(),
            "repeat": repeat,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "corpora": {name: d.as_dict() for name, d in descriptions.items()},
            "results": [r.as_dict() for r in results],
            "runs": runs,
            "profiles": {name: p.as_dict() for name, p in profiles.items()},
            "moonshot": moonshot_line(results),
            "notes": list(notes),
        }
        print(json.dumps(document, indent=2))
        return
    if n < ISSUE_FILES:
        print(f"NOTE: {n} files per corpus, below the issue's {ISSUE_FILES}: a development run")
    print(f"\nmachine: {machine}")
    for name, description in descriptions.items():
        print(f"\n{name} corpus: {description.files} files, {description.megabytes / 1e3:.2f} GB")
        print("\n".join(description.lines()))
    print(
        f"\nfastest of {repeat} interleaved run(s) per mode, each in a fresh lake, "
        "warm page cache; x bound = files/s over the bound's files/s"
    )
    print(table(results))
    print(moonshot_line(results))
    for note in notes:
        print(note)
    for name, result in profiles.items():
        print()
        print(stages.table(result, name))


if __name__ == "__main__":
    sys.exit(main())
