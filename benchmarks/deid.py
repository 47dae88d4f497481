"""De-identification throughput (issue 13): files/s on the real-size archive corpus.

The archive corpus of benchmarks/corpus.py (real MR 64^2..1368^2, CT 128^2..512^2,
CR ~2k^2 16-bit; uncompressed) is ingested once into a fresh embedded lake, then
`deidentify_images` runs over every image, one process, in three settings:

- header: the Basic Profile with keyed UIDs and the pseudonym, pixels not checked
  (CT/MR/CR are not text-prone: what `radlake deid run` does to them by default);
- pixels: the same with the burned-in text check on every image
  (RADLAKE_DEID_PIXEL_CHECK=all), the detector run on each frame set;
- the bound: pydicom reading and writing the same originals from the same store
  (get, dcmread, save_as, put), no de-identification: the floor of any
  rendition-writing de-identifier on this store.

Prints files/s, MB/s and the ratio to the bound. Usage:
    .venv/bin/python benchmarks/deid.py [--files 300] [--pixel-files 60]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import CACHE, BenchmarkError, build_archive, describe
from radlake.catalog.db import make_engine, session_factory, upgrade
from radlake.catalog.models import Image
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.deidentify import DeidPolicy, deidentify_images
from radlake.pipelines.executor import open_executor
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store


def _bound(lake: Lake, keys: list[str]) -> float:
    started = time.perf_counter()
    for key in keys:
        ds = pydicom.dcmread(io.BytesIO(lake.store.get_bytes(key)))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        lake.store.put_bytes(key.replace("raw/", "bound/"), buffer.getvalue())
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--pixel-files", type=int, default=60)
    args = parser.parse_args()
    try:
        files, _plan, _built = build_archive(CACHE / f"archive-{args.files}", args.files)
    except BenchmarkError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    corpus = describe(files)
    print(f"corpus: {corpus.files} files, {corpus.megabytes:.0f} MB")
    print("\n".join(corpus.lines()))
    with tempfile.TemporaryDirectory(prefix="radlake-deid-bench-") as folder:
        engine = make_engine(f"sqlite:///{folder}/catalog.sqlite")
        upgrade(engine)
        lake = Lake(engine, open_store(Path(folder, "store").as_uri()), Pseudonymizer(b"bench"))
        with open_executor(None, os.cpu_count() or 1) as pool:
            ingest(
                [Path(f) for f in files],
                engine=engine,
                store=lake.store,
                pseudonymizer=lake.pseudonymizer,
                executor=pool,
            )
        with session_factory(engine)() as session:
            rows = session.execute(
                select(Image.id, Image.original_key, Image.size_bytes).order_by(Image.id)
            ).all()
        ids = [row.id for row in rows]
        megabytes = sum(row.size_bytes for row in rows) / 1e6
        bound = _bound(lake, [row.original_key for row in rows])
        header = deidentify_images(lake, ids, policy=DeidPolicy(pixel_check="off"))
        sample = ids[:: max(1, len(ids) // args.pixel_files)][: args.pixel_files]
        sample_mb = sum(r.size_bytes for r in rows if r.id in set(sample)) / 1e6
        pixels = deidentify_images(lake, sample, policy=DeidPolicy(pixel_check="all"), redo=True)
        print(f"\n{'setting':<34}{'files':>7}{'files/s':>10}{'MB/s':>9}{'vs bound':>10}")
        bound_rate = len(ids) / bound
        for name, count, seconds, size in (
            ("bound: pydicom read+write", len(ids), bound, megabytes),
            ("header (Basic Profile, UIDs)", header.written, header.seconds, megabytes),
            ("header + burned-in text check", pixels.written, pixels.seconds, sample_mb),
        ):
            rate = count / seconds
            print(
                f"{name:<34}{count:>7}{rate:>10.1f}{size / seconds:>9.1f}{rate / bound_rate:>10.2f}"
            )
        failed = len(header.failed) + len(pixels.failed)
        print(f"\nfailed: {failed}; blanked: {pixels.blanked}; withheld: {pixels.withheld}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
