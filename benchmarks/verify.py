"""Verify throughput: images/s checked and MB/s re-hashed on a local lake.

Run it from the repository root:

    .venv/bin/python benchmarks/verify.py                 # N=300, SQLite + local store
    .venv/bin/python benchmarks/verify.py --n 1000 --repeat 5 --json

What it measures:

1. Corpus: N distinct DICOM files, alternately pydicom-data's MR2_UNCR.dcm (2.1 MB)
   and pydicom's CT_small.dcm (39 KB), each with a fresh SOPInstanceUID, ingested once
   into a fresh temporary lake (a SQLite catalog and a local store).
2. `verify`: every original's size checked and sha256 recomputed (4 MiB reads),
   every preview decoded, the store listed for orphans.
3. `verify --sample 10`: sizes of all, hashes of ten.

The page cache is warm (ingest has just written every object), so this is the CPU and
catalog cost of verify, not a disk's. Each mode runs --repeat times; the fastest run is
reported. Exit status: 0 when every report is sound, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from radlake.catalog.db import make_engine, upgrade
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.ingest import ingest
from radlake.pipelines.verify import VerifyReport, verify_lake
from radlake.storage.store import open_store

SOURCES = ("MR2_UNCR.dcm", "CT_small.dcm")


def write_corpus(folder: Path, count: int) -> int:
    """count distinct DICOM files; returns their total size in bytes."""
    templates = []
    for name in SOURCES:
        path = get_testdata_file(name)
        if path is None:
            sys.exit(f"pydicom test file {name} not found (install pydicom-data)")
        templates.append(pydicom.dcmread(path))
    folder.mkdir(parents=True)
    total = 0
    for n in range(count):
        dataset = templates[n % len(templates)]
        uid = generate_uid()
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        target = folder / f"{n:05d}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        total += target.stat().st_size
    return total


def fastest(runs: list[tuple[float, VerifyReport]]) -> tuple[float, VerifyReport]:
    return min(runs, key=lambda run: run[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images in the lake")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="radlake-verify-") as scratch:
        root = Path(scratch)
        corpus_bytes = write_corpus(root / "corpus", args.n)
        engine = make_engine(f"sqlite:///{root / 'catalog.sqlite'}")
        upgrade(engine)
        store = open_store((root / "store").as_uri())
        summary = ingest(
            [root / "corpus"],
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(b"benchmark-key"),
        )
        modes: dict[str, dict[str, float | int | bool]] = {}
        for mode, sample in (("full", None), ("sample10", 10)):
            runs = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                report = verify_lake(engine=engine, store=store, sample=sample)
                runs.append((time.perf_counter() - started, report))
            seconds, report = fastest(runs)
            modes[mode] = {
                "seconds": round(seconds, 3),
                "images_per_second": round(report.images / seconds, 1),
                "images_hashed": report.images_hashed,
                "megabytes_hashed": round(report.bytes_hashed / 1e6, 1),
                "hash_megabytes_per_second": round(report.megabytes_per_second, 1),
                "sound": report.sound,
            }
        engine.dispose()

    result = {
        "images": summary.catalogued,
        "corpus_megabytes": round(corpus_bytes / 1e6, 1),
        "modes": modes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['images']} images, {result['corpus_megabytes']} MB of originals")
        for mode, figures in modes.items():
            print(
                f"  {mode:9s} {figures['seconds']:7.2f} s  {figures['images_per_second']:8.1f} "
                f"images/s  {figures['megabytes_hashed']:7.1f} MB hashed at "
                f"{figures['hash_megabytes_per_second']:7.1f} MB/s"
            )
    sys.exit(0 if all(figures["sound"] for figures in modes.values()) else 1)


if __name__ == "__main__":
    main()
