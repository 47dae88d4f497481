"""Label ingest, six-way split and YOLO + COCO label export on a VinBigData-shaped set.

Run from the repository root:

    .venv/bin/python benchmarks/labels.py            # 15,000 images x 3 readers
    .venv/bin/python benchmarks/labels.py --images 3000

What it does: writes train.csv in VinBigData's layout (one row per box per reader,
three readers per image, about two thirds "No finding" with empty coordinates, the
rest with 1-3 boxes per reader: ~68,000 rows at 15,000 images) and train_meta.csv,
with tiny 8x8 PNGs as the images. The images are ingested first (untimed set-up);
then it times, on the default SQLite catalog and local store:

1. label ingest: `radlake source vinbigdata` as a library call (parse the CSV, see
   that every image is already present, link, write the labels);
2. a six-way split: a dataset version with the default spec (training/validation/
   test/staging/canary/production = 11500/750/750/1000/500/500 scaled), including
   the leakage check and the manifest hash;
3. YOLO + COCO label export of that version (images excluded) into folders.

Target: the three together under 10 s. It also times the original projects'
approach to the same label work (per-row pandas loops: building per-image label
lists with iterrows and writing YOLO lines row by row) for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from radlake.catalog.db import make_engine, transaction, upgrade
from radlake.catalog.queries import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.formats.sink import FolderSink
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.export import export_version
from radlake.pipelines.ingest import ingest
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from radlake.storage.store import open_store

CLASSES = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
]
TARGET_SECONDS = 10.0


def write_dataset(root: Path, images: int, seed: int = 0) -> int:
    """train.csv + train_meta.csv + tiny PNGs; returns the number of CSV rows."""
    rng = np.random.default_rng(seed)
    train = root / "train"
    train.mkdir(parents=True)
    lines = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    meta = ["image_id,dim0,dim1"]
    for n in range(images):
        image_id = f"{n:032x}"
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        PILImage.fromarray(pixels).save(train / f"{image_id}.png", compress_level=1)
        meta.append(f"{image_id},2048,2048")
        readers = rng.choice(17, 3, replace=False) + 1
        if rng.random() < 2 / 3:
            lines += [f"{image_id},No finding,14,R{r},,,," for r in readers]
            continue
        classes = rng.choice(14, rng.integers(1, 5), replace=False)  # ~68k rows at 15k
        for r in readers:
            for c in classes:
                x, y = rng.uniform(0, 1500, 2)
                w, h = rng.uniform(50, 500, 2)
                lines.append(
                    f"{image_id},{CLASSES[c]},{c},R{r},{x:.1f},{y:.1f},{x + w:.1f},{y + h:.1f}"
                )
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "train_meta.csv").write_text("\n".join(meta) + "\n")
    return len(lines) - 1


def pandas_baseline(csv_path: Path, out: Path) -> float:
    """The replaced projects' way: per-row loops over a DataFrame."""
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(csv_path)
    per_image: dict[str, list[str]] = {}
    for _, row in frame.iterrows():
        lines = per_image.setdefault(row["image_id"], [])
        if row["class_name"] != "No finding":
            xc = (row["x_min"] + row["x_max"]) / 2 / 2048
            yc = (row["y_min"] + row["y_max"]) / 2 / 2048
            w = (row["x_max"] - row["x_min"]) / 2048
            h = (row["y_max"] - row["y_min"]) / 2048
            lines.append(f"{row['class_id']} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
    out.mkdir(parents=True)
    for image_id, lines in per_image.items():
        (out / f"{image_id}.txt").write_text("\n".join(lines))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=15_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="radlake-bench-labels-"))
    try:
        source = work / "vin"
        rows = write_dataset(source, args.images)
        engine = make_engine(f"sqlite:///{work / 'catalog.sqlite'}")
        upgrade(engine)
        store = open_store((work / "store").as_uri())
        pseudonymizer = Pseudonymizer(b"benchmark")
        started = time.perf_counter()
        ingest(
            [source / "train"],
            engine=engine,
            store=store,
            pseudonymizer=pseudonymizer,
            workers=args.workers,
        )
        setup = time.perf_counter() - started
        print(
            f"set-up: {args.images} images, {rows} CSV rows; images ingested in {setup:.1f} s"
            " (untimed)"
        )

        timings: dict[str, float] = {}
        started = time.perf_counter()
        summary = load_source(
            read_vinbigdata(source),
            engine=engine,
            store=store,
            pseudonymizer=pseudonymizer,
            workers=args.workers,
        )
        timings["label ingest"] = time.perf_counter() - started
        assert summary.linked == args.images, summary.line()

        started = time.perf_counter()
        request = VersionRequest("bench", ImageFilter(source="vinbigdata"), SplitSpec.default())
        with transaction(engine) as session:
            version, _ = create_version(session, request)
            counts = dict(version.counts)
        timings["six-way split (version)"] = time.perf_counter() - started

        started = time.perf_counter()
        for fmt in ("yolo", "coco"):
            export_version(
                engine=engine,
                store=store,
                dataset="bench",
                version=None,
                fmt=fmt,  # type: ignore[arg-type]
                sink=FolderSink(work / fmt),
                location=str(work / fmt),
                labels_only=True,
            )
        timings["YOLO + COCO label export"] = time.perf_counter() - started

        total = sum(timings.values())
        print(f"{'step':28} {'seconds':>8}")
        for step, seconds in timings.items():
            print(f"{step:28} {seconds:8.2f}")
        verdict = "met" if total < TARGET_SECONDS else "MISSED"
        print(f"{'total':28} {total:8.2f}   target < {TARGET_SECONDS:.0f} s: {verdict}")
        print(f"splits: {counts}")
        if not args.skip_baseline:
            baseline = pandas_baseline(source / "train.csv", work / "baseline")
            print(
                f"{'pandas per-row baseline':28} {baseline:8.2f}   (CSV -> YOLO label files only)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
