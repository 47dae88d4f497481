"""What durable local writes cost: the store's fsync of each file and its folder.

Run it from the repository root:

    .venv/bin/python benchmarks/store_write.py                  # 300 files, 1 writer
    .venv/bin/python benchmarks/store_write.py --n 500 --workers 2 --dir /data/tmp

The pattern is ingest's: per input file, put_if_absent of a 500 KB original under
raw/<sha[:2]>/<sha>.dcm and put_bytes of a 100 KB preview under derived/<sha>/ (a new
folder per file), on a fresh local store in --dir (default: the system's temporary
folder; use a folder on the disk the lake will live on, since tmpfs makes fsync free).
Modes: "fsync" is the store as shipped; "no fsync" is the same code with os.fsync
replaced by a no-op, i.e. the writes as they were before. The modes run in --repeat
interleaved rounds (default 3) and the fastest run of each is reported. With
--workers N, N processes each write n/N files at once, as ingest's pool does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from radlake.storage.keys import derived_key, raw_key
from radlake.storage.store import open_store

ORIGINAL_BYTES = 500 * 1024
PREVIEW_BYTES = 100 * 1024


def write_files(folder: str, start: int, count: int, durable: bool) -> float:
    """Write count ingest-like files into the store at folder; seconds taken."""
    if not durable:
        os.fsync = lambda descriptor: None  # this worker process only
    store = open_store(Path(folder).as_uri())
    original, preview = os.urandom(ORIGINAL_BYTES), os.urandom(PREVIEW_BYTES)
    started = time.perf_counter()
    for index in range(start, start + count):
        sha = hashlib.sha256(index.to_bytes(8, "big")).hexdigest()
        store.put_if_absent(raw_key(sha, "dcm"), original)
        store.put_bytes(derived_key(sha, "preview", "png"), preview)
    return time.perf_counter() - started


def run(parent: Path, n: int, workers: int, durable: bool) -> float:
    """Wall seconds for n files over workers processes, on a fresh store."""
    folder = Path(tempfile.mkdtemp(prefix="radlake-store-bench-", dir=parent))
    try:
        share = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        starts = [sum(share[:i]) for i in range(workers)]
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(write_files, str(folder), start, count, durable)
                for start, count in zip(starts, share, strict=True)
            ]
            for future in futures:
                future.result()
        return time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="input files (two objects each)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for mode, durable in (("no fsync", False), ("fsync", True)):
            seconds = run(args.dir, args.n, args.workers, durable)
            best[mode] = min(best.get(mode, seconds), seconds)

    per_file = {mode: 1000 * seconds / args.n for mode, seconds in best.items()}
    rate = {mode: args.n / seconds for mode, seconds in best.items()}
    cost = per_file["fsync"] - per_file["no fsync"]
    result = {
        "files": args.n,
        "workers": args.workers,
        "folder": str(args.dir),
        "ms_per_file": {mode: round(value, 2) for mode, value in per_file.items()},
        "files_per_second": {mode: round(value, 1) for mode, value in rate.items()},
        "fsync_cost_ms_per_file": round(cost, 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.n} files (500 KB original + 100 KB preview), {args.workers} writer(s),"
        f" in {args.dir}; fastest of {args.repeat} rounds"
    )
    for mode in ("no fsync", "fsync"):
        print(f"  {mode:>8}: {per_file[mode]:6.2f} ms/file  {rate[mode]:8.1f} files/s")
    print(f"  fsync costs {cost:.2f} ms per file ({100 * cost / per_file['no fsync']:.0f} %)")


if __name__ == "__main__":
    main()
