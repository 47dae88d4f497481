"""Ingest on the Dask executor against the local process pool, at equal cores.

Run it from the repository root:

    .venv/bin/python benchmarks/dask_ingest.py                 # 2,000 files, 2 workers, 3 rounds
    .venv/bin/python benchmarks/dask_ingest.py --files 600     # a shorter run
    .venv/bin/python benchmarks/dask_ingest.py --scheduler tcp://HOST:8786   # a running cluster

The corpus is benchmarks/corpus.py's archive (real DICOM in a real archive's mix,
MR 50 %, CT 35 %, CR 15 %; built once into $RADLAKE_BENCH_CACHE and reused), read
once before timing (warm page cache). Both modes run the library's ingest() into a
fresh SQLite catalog and local store with --workers workers:

- pool: LocalProcessExecutor (forkserver, chunks of 8), as `radlake ingest` runs.
- dask: DaskExecutor on a LocalCluster of --workers single-threaded worker processes
  (or the --scheduler given), chunks of 8. The cluster is started once, before the
  rounds, and its workers import radlake then, as a long-running cluster would have:
  its start is printed apart and not counted in the files/s (nor is the start of
  the pool's forkserver, which preloads radlake once per process).

The modes alternate in --repeat rounds; the fastest run of each is reported with
every run's figure, and the ratio dask/pool of the fastest runs (target >= 0.9).
Exit status: 0 target met, 1 missed or a wrong count, 2 shared data missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from corpus import CACHE, FILES_DIR, BenchmarkError, build_archive
from radlake.catalog.db import make_engine, upgrade
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.dask_executor import DaskExecutor
from radlake.pipelines.executor import Executor, LocalProcessExecutor
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store

KEY = b"radlake-benchmark-key"
CHUNK_SIZE = 8
TARGET = 0.9


def _preload() -> None:
    """In every Dask worker: what the pool's forkserver preloads."""
    import radlake.pipelines.worker  # noqa: F401


def ingest_once(folder: Path, n: int, executor: Executor) -> float:
    """Seconds to ingest the corpus into a fresh lake (SQLite + local store)."""
    lake = Path(tempfile.mkdtemp(prefix="radlake-bench-dask-"))
    engine = make_engine(f"sqlite:///{lake / 'catalog.sqlite'}")
    try:
        upgrade(engine)
        summary = ingest(
            [folder / FILES_DIR],
            engine=engine,
            store=open_store((lake / "store").as_uri()),
            pseudonymizer=Pseudonymizer(KEY),
            executor=executor,
        )
    finally:
        engine.dispose()
        shutil.rmtree(lake, ignore_errors=True)
    if summary.inputs != n or summary.catalogued != n:
        raise RuntimeError(f"expected {n} catalogued, got {summary.line()}")
    return summary.seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="archive files (2000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes each (2)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"corpus cache ({CACHE})")
    parser.add_argument(
        "--scheduler", default=None, help="a running scheduler (tcp://HOST:PORT) for the dask mode"
    )
    args = parser.parse_args(argv)
    if args.files < 1 or args.workers < 1 or args.repeat < 1:
        parser.error("--files, --workers and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    folder = args.cache.resolve() / f"archive-n{args.files}"
    try:
        files, _plan, built = build_archive(folder, args.files, say)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(files)
    megabytes = sum(len(path.read_bytes()) for path in files) / 1e6  # warms the page cache
    say(f"archive: {n} files, {megabytes:.0f} MB in {folder} ({'built' if built else 'reused'})")

    pool = LocalProcessExecutor(args.workers, chunk_size=CHUNK_SIZE, item_seconds=300)
    list(pool.map_unordered(abs, [0]))  # starts the forkserver (it preloads radlake) untimed
    started = time.perf_counter()
    with DaskExecutor(
        args.scheduler, workers=args.workers, chunk_size=CHUNK_SIZE, item_seconds=300
    ) as dask:
        assert dask.client is not None
        dask.client.run(_preload)
        cluster_seconds = time.perf_counter() - started
        say(f"dask: {dask.workers} worker threads ready in {cluster_seconds:.1f} s")
        runs: dict[str, list[float]] = {"pool": [], "dask": []}
        modes: dict[str, Executor] = {"pool": pool, "dask": dask}
        try:
            for round_number in range(1, args.repeat + 1):
                for mode, executor in modes.items():
                    seconds = ingest_once(folder, n, executor)
                    runs[mode].append(seconds)
                    say(
                        f"round {round_number}/{args.repeat}: {mode}: {seconds:.2f} s "
                        f"({n / seconds:.1f} files/s, load {os.getloadavg()[0]:.2f})"
                    )
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    where = args.scheduler or f"LocalCluster, {args.workers} single-threaded workers"
    print(
        f"archive {n} files ({megabytes:.0f} MB), {args.workers} workers each, {os.cpu_count()} "
        f"CPUs, fastest of {args.repeat} interleaved rounds, fresh SQLite lake each"
    )
    for mode in runs:
        best = min(runs[mode])
        every = ", ".join(f"{n / s:.1f}" for s in runs[mode])
        label = "process pool" if mode == "pool" else f"dask ({where})"
        print(f"  {label:<50} {n / best:7.1f} files/s  (runs: {every})")
    ratio = min(runs["pool"]) / min(runs["dask"])
    # Per round (the two modes ran back to back): less sensitive to a busy machine.
    paired = sorted(p / d for p, d in zip(runs["pool"], runs["dask"], strict=True))
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(f"  dask / pool: {ratio:.2f} fastest runs (target >= {TARGET}: {verdict})")
    print(
        f"  dask / pool per round: {', '.join(f'{r:.2f}' for r in paired)} "
        f"(median {statistics.median(paired):.2f})"
    )
    print(f"  dask cluster start (not counted): {cluster_seconds:.1f} s")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
