"""`radlake mart push` throughput: first push, re-push, and the plain export beside them.

Run it from the repository root:

    .venv/bin/python benchmarks/mart.py
    .venv/bin/python benchmarks/mart.py --images 500 --pixels 1024 --s3

What it does:

1. Lake: a temporary SQLite catalog and local store; a VinBigData-layout source of
   --images noise films (--pixels square, 8-bit PNG: incompressible, so bytes are real)
   with two boxes each, loaded; dataset `bench` v1 (training/test halves).
2. Baseline: `export_version` as COCO at the stored size into a folder (what
   `radlake dataset export --out` does): the cost of rendering and encoding.
3. Mart: `push_version` (COCO, stored size, 4 jobs) to a new folder (every file
   copied and read back), again (nothing copied: the export still runs, each file is
   hashed and stat'ed), and with --checksum (every destination file read back).
4. With --s3: the same first push and re-push to a moto S3 server on 127.0.0.1.

Prints files, the export's MB, seconds, MB/s of export through each step, and
what was copied. No targets: the figures go in commits.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from radlake.catalog.db import make_engine, transaction, upgrade
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.formats.sink import FolderSink
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.export import export_version
from radlake.pipelines.mart import MartSummary, push_version
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from radlake.storage.store import ObjectStore, open_store


def write_source(root: Path, count: int, pixels: int) -> None:
    (root / "train").mkdir(parents=True)
    rows, meta = [], []
    for n in range(count):
        name = f"film{n:05d}"
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        PILImage.fromarray(rng.integers(0, 256, (pixels, pixels), dtype=np.uint8)).save(
            root / "train" / f"{name}.png"
        )
        meta.append(f"{name},{pixels},{pixels}")
        quarter = pixels / 4
        rows.append(f"{name},Left Lung,0,R1,{quarter},{quarter},{2 * quarter},{3 * quarter}")
        rows.append(f"{name},Right Lung,1,R1,{2 * quarter},{quarter},{3 * quarter},{3 * quarter}")
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n" + "\n".join(rows) + "\n"
    )
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\n" + "\n".join(meta) + "\n")


def line(label: str, files: int, size: int, seconds: float, copied: str = "") -> None:
    """size: the export's bytes; MB/s of the export through this step."""
    rate = size / seconds / 1e6 if seconds else 0.0
    print(
        f"{label:<30} {files:>6} files {size / 1e6:>8.1f} MB {seconds:>8.2f} s "
        f"{rate:>7.1f} MB/s {copied}"
    )


def report(label: str, summary: MartSummary) -> None:
    copied = f"(copied {summary.copied} files, {summary.bytes_copied / 1e6:.1f} MB)"
    line(label, summary.files, summary.bytes_total, summary.seconds, copied)


def moto_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--s3", action="store_true", help="also push to a moto S3 server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radlake-mart-bench-") as folder:
        base = Path(folder)
        engine = make_engine(f"sqlite:///{base / 'catalog.sqlite'}")
        upgrade(engine)
        store = open_store((base / "store").as_uri())
        write_source(base / "src", args.images, args.pixels)
        load_source(
            read_vinbigdata(base / "src"),
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(b"bench"),
            executor=SerialExecutor(),
        )
        request = VersionRequest(
            dataset="bench",
            selection=ImageFilter(source="vinbigdata"),
            spec=SplitSpec.parse("training=0.5,test=0.5"),
        )
        with transaction(engine) as session:
            create_version(session, request)
        print(f"{args.images} films of {args.pixels} x {args.pixels}, COCO at stored size")

        started = time.monotonic()
        exported = export_version(
            engine=engine, store=store, dataset="bench", version=1, fmt="coco",
            sink=FolderSink(base / "export"), location="bench", size=None,
        )  # fmt: skip
        line("dataset export (baseline)", exported.files_written, exported.bytes_written,
             time.monotonic() - started)  # fmt: skip

        def push(destination: ObjectStore, checksum: bool = False) -> MartSummary:
            return push_version(
                engine=engine, lake_store=store, destination=destination, dataset="bench",
                version=1, fmt="coco", size=None, checksum=checksum, jobs=args.jobs,
            )  # fmt: skip

        folder_dest = open_store((base / "mart").as_uri())
        report("mart push, folder, first", push(folder_dest))
        report("mart push, folder, again", push(folder_dest))
        report("mart push, folder, --checksum", push(folder_dest, checksum=True))
        if args.s3:
            process, endpoint = moto_server()
            try:
                options = {
                    "key": "bench",
                    "secret": "bench",
                    "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
                bucket = open_store("s3://bench-mart", **options)
                bucket.fs.call_s3("create_bucket", Bucket="bench-mart")
                s3_dest = open_store("s3://bench-mart/coco", **options)
                report("mart push, S3 (moto), first", push(s3_dest))
                report("mart push, S3 (moto), again", push(s3_dest))
            finally:
                process.terminate()
                process.wait(timeout=10)
        engine.dispose()


if __name__ == "__main__":
    main()
