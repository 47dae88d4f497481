"""Warehouse build and `radlake sql` on a 100,000-image catalog.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, database `test`, trust,
as the tests use; --catalog sqlite runs on a SQLite file instead):

    .venv/bin/python benchmarks/warehouse.py                  # 100,000 images
    .venv/bin/python benchmarks/warehouse.py --images 10000

What it does: bulk-inserts realistically shaped synthetic rows into a fresh catalog
(untimed set-up): patients (about 4 images each), one study and series per image,
images with a preview rendition, an image-level finding on 60 % of images and ~2
boxes on the other 40 % (one reader), one inference run with 2 predicted boxes on
10 % and a verdict on 2 %, and dataset `bench` v1 with a training/validation/test
split of every image. The store is a local folder. Then it times:

1. a full warehouse build (Parquet);
2. an incremental build after a new box on 1 % of the images (must write 1 %);
3. an incremental build with nothing changed;
4. "boxes per class per split of a dataset version": DuckDB over the warehouse
   (connection and views included, then the query alone on an open connection)
   against the same question in SQL on the catalog.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url

from radlake.catalog.db import WRITE_BATCH, batches, make_engine, normalize_url, upgrade
from radlake.catalog.feedback_models import Feedback
from radlake.catalog.inference_models import InferenceRun, Model, ModelVersion, Prediction
from radlake.catalog.models import (
    Base,
    Dataset,
    DatasetMember,
    DatasetVersion,
    Image,
    Label,
    Patient,
    Rendition,
    Series,
    Source,
    Study,
)
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.storage.store import open_store
from radlake.warehouse.build import build_warehouse
from radlake.warehouse.sql import connect, run_query

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
CLASSES = ["Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Nodule/Mass", "ILD"]
MANUFACTURERS = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "FUJIFILM", "Carestream"]
SPLITS = [("training", 0.8), ("validation", 0.1), ("test", 0.1)]
DUCKDB_QUESTION = (
    "SELECT m.split, l.class_name, count(*) AS boxes FROM memberships m "
    "JOIN labels l USING (image_id) WHERE m.dataset = 'bench' AND m.version = 1 "
    "AND l.x_min IS NOT NULL AND l.origin = 'ground_truth' GROUP BY ALL ORDER BY 1, 2"
)
CATALOG_QUESTION = text(
    "SELECT dm.split, l.class_name, count(*) FROM dataset_member dm "
    "JOIN dataset_version v ON v.id = dm.version_id JOIN dataset d ON d.id = v.dataset_id "
    "JOIN label l ON l.image_id = dm.image_id WHERE d.name = 'bench' AND v.version = 1 "
    "AND l.x_min IS NOT NULL AND l.origin = 'ground_truth' "
    "GROUP BY dm.split, l.class_name ORDER BY 1, 2"
)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    name = f"radlake_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(POSTGRES_ADMIN), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(POSTGRES_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _insert(engine: Engine, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        for batch in batches(rows, WRITE_BATCH):
            connection.execute(insert(model), list(batch))


def _box(rng: random.Random) -> dict[str, float]:
    x, y = rng.uniform(0, 1500), rng.uniform(0, 1500)
    return {
        "x_min": x,
        "y_min": y,
        "x_max": x + rng.uniform(20, 400),
        "y_max": y + rng.uniform(20, 400),
    }


def populate(engine: Engine, images: int, seed: int = 0) -> None:
    """The synthetic catalog (explicit ids, then each sequence moved past them)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    pseudonymize = Pseudonymizer(b"bench")
    patients = max(1, images // 4)
    _insert(engine, Source, [{"id": 1, "name": "synthetic", "kind": "vinbigdata"}])
    _insert(
        engine,
        Patient,
        [{"id": p, "pseudonym": pseudonymize(f"P{p}")} for p in range(1, patients + 1)],
    )
    _insert(
        engine,
        Study,
        [
            {"id": n, "study_uid": f"1.2.826.0.1.{n}", "patient_id": rng.randint(1, patients)}
            for n in range(1, images + 1)
        ],
    )
    _insert(
        engine,
        Series,
        [
            {
                "id": n,
                "series_uid": f"1.2.826.0.2.{n}",
                "study_id": n,
                "modality": "DX",
                "series_number": 1,
                "description": "CHEST PA",
            }
            for n in range(1, images + 1)
        ],
    )
    image_rows, renditions = [], []
    for n in range(1, images + 1):
        sha = hashlib.sha256(f"image-{n}".encode()).hexdigest()
        image_rows.append(
            {
                "id": n,
                "sha256": sha,
                "size_bytes": rng.randint(2_000_000, 9_000_000),
                "format": "dicom",
                "source_id": 1,
                "source_key": f"train/{sha[:32]}.dicom",
                "original_key": f"raw/{sha[:2]}/{sha}.dcm",
                "series_id": n,
                "sop_instance_uid": f"1.2.826.0.3.{n}",
                "instance_number": 1,
                "modality": "DX",
                "body_part": "CHEST",
                "view_position": rng.choice(["PA", "AP"]),
                "manufacturer": rng.choice(MANUFACTURERS),
                "rows": 2048,
                "columns": 2048,
                "pixel_spacing_row": 0.175,
                "pixel_spacing_col": 0.175,
                "photometric": "MONOCHROME2",
                "bits_stored": 12,
                "attributes": {"dataset": "synthetic", "patient_sex": rng.choice("MF")},
                "created_at": now,
            }
        )
        renditions.append(
            {
                "image_id": n,
                "name": "preview",
                "key": f"derived/{sha}/preview.png",
                "width": 512,
                "height": 512,
            }
        )
    _insert(engine, Image, image_rows)
    _insert(engine, Rendition, renditions)
    labels, runs, predictions, feedback = [], [], [], []
    for n in range(1, images + 1):
        if rng.random() < 0.6:
            labels.append(_label(n, "No finding", None))
        else:
            for _ in range(rng.choice((1, 2, 2, 3))):
                labels.append(_label(n, rng.choice(CLASSES), _box(rng)))
        if rng.random() < 0.1:
            run_id = len(runs) + 1
            runs.append(
                {
                    "id": run_id,
                    "model_version_id": 1,
                    "image_id": n,
                    "score_threshold": 0.25,
                    "iou_threshold": 0.45,
                    "latency_ms": 40.0,
                    "caller": "bench",
                }
            )
            for _ in range(2):
                predictions.append(
                    {
                        "id": len(predictions) + 1,
                        "run_id": run_id,
                        "class_id": 0,
                        "class_name": rng.choice(CLASSES),
                        "score": rng.random(),
                        **_box(rng),
                    }
                )
            if rng.random() < 0.2:
                box = predictions[-1]
                feedback.append(
                    {
                        "id": len(feedback) + 1,
                        "image_id": n,
                        "run_id": run_id,
                        "prediction_id": box["id"],
                        "model_version_id": 1,
                        "verdict": "accept",
                        "class_name": box["class_name"],
                        "x_min": box["x_min"],
                        "y_min": box["y_min"],
                        "x_max": box["x_max"],
                        "y_max": box["y_max"],
                        "confidence": box["score"],
                        "reviewer": "alice",
                        "simulated": False,
                        "channel": "api",
                        "fingerprint": hashlib.sha256(f"fb-{n}".encode()).hexdigest(),
                    }
                )
    for number, label in enumerate(labels, start=1):
        label["id"] = number
    _insert(engine, Label, labels)
    _insert(engine, Model, [{"id": 1, "name": "bench"}])
    _insert(
        engine,
        ModelVersion,
        [
            {
                "id": 1,
                "model_id": 1,
                "version": 1,
                "store_key": "models/bench/1/model.onnx",
                "sha256": "0" * 64,
                "size_bytes": 1,
                "contract": {},
                "decoder": "yolov8",
                "class_names": CLASSES,
                "metrics": {},
            }
        ],
    )
    _insert(engine, InferenceRun, runs)
    _insert(engine, Prediction, predictions)
    _insert(engine, Feedback, feedback)
    _insert(engine, Dataset, [{"id": 1, "name": "bench"}])
    _insert(
        engine,
        DatasetVersion,
        [
            {
                "id": 1,
                "dataset_id": 1,
                "version": 1,
                "selection": {},
                "split_spec": {},
                "seed": 0,
                "label_set": "readers",
                "classes": {"names": CLASSES},
                "counts": {},
                "leakage": {},
                "manifest_hash": "0" * 64,
            }
        ],
    )
    members = []
    for n in range(1, images + 1):
        draw, split = rng.random(), SPLITS[-1][0]
        for name, share in SPLITS:
            if draw < share:
                split = name
                break
            draw -= share
        members.append({"version_id": 1, "image_id": n, "split": split})
    _insert(engine, DatasetMember, members)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            for table in (
                "source",
                "patient",
                "study",
                "series",
                "image",
                "rendition",
                "label",
                "model",
                "model_version",
                "inference_run",
                "prediction",
                "feedback",
                "dataset",
                "dataset_version",
            ):
                connection.execute(
                    text(
                        # Table names from the list above, never input.
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                        f"(SELECT coalesce(max(id), 1) FROM {table}))"
                    )
                )
            connection.execute(text("ANALYZE"))


def _label(image_id: int, class_name: str, box: dict[str, float] | None) -> dict[str, Any]:
    corners = box or {"x_min": None, "y_min": None, "x_max": None, "y_max": None}
    return {
        "source_id": 1,
        "source_image_key": str(image_id),
        "image_id": image_id,
        "class_name": class_name,
        "class_id": None,
        "reader": "R1",
        "origin": "ground_truth",
        "confidence": None,
        **corners,
    }


def change_one_percent(engine: Engine, images: int) -> int:
    """A new box on 1 % of the images (through the sequence, as a user's import)."""
    chosen = random.Random(1).sample(range(1, images + 1), max(1, images // 100))
    rng = random.Random(2)
    rows = [_label(n, rng.choice(CLASSES), _box(rng)) for n in chosen]
    _insert(engine, Label, rows)
    return len(chosen)


def timed(seconds: list[float]) -> Any:
    class Timer:
        def __enter__(self) -> None:
            self.started = time.perf_counter()

        def __exit__(self, *args: object) -> None:
            seconds.append(time.perf_counter() - self.started)

    return Timer()


def run(engine: Engine, images: int, backend: str) -> None:
    upgrade(engine)
    started = time.perf_counter()
    populate(engine, images)
    print(
        f"catalog ({backend}): {images:,} images populated in "
        f"{time.perf_counter() - started:.1f} s (untimed set-up)"
    )
    # pyarrow imports pandas on its first conversion when pandas is installed (the
    # [test] extra): seconds a command pays once; not part of a build's own cost.
    pa.array([0])
    with tempfile.TemporaryDirectory(prefix="radlake-warehouse-") as folder:
        lake = Lake(engine, open_store(Path(folder).as_uri()), Pseudonymizer(b"bench"))
        full = build_warehouse(lake)
        size = sum(part.size_bytes for part in _parts(lake))
        print(
            f"full build: {full.images_written:,} images, {full.parts} parts, "
            f"{size / 1e6:.1f} MB Parquet in {full.seconds:.1f} s "
            f"({full.images_written / full.seconds:,.0f} images/s)"
        )
        changed = change_one_percent(engine, images)
        incremental = build_warehouse(lake)
        assert incremental.images_written == changed, (incremental.images_written, changed)
        print(
            f"incremental build after a new box on {changed:,} images (1 %): "
            f"{incremental.images_written:,} written in {incremental.seconds:.2f} s"
        )
        idle = build_warehouse(lake)
        print(f"build with nothing changed: {idle.images_written} written in {idle.seconds:.2f} s")

        cold: list[float] = []
        with timed(cold):
            connection = connect(lake.store)
            answer = run_query(connection, DUCKDB_QUESTION).rows
        warm: list[float] = []
        for _ in range(3):
            with timed(warm):
                run_query(connection, DUCKDB_QUESTION)
        connection.close()
        on_catalog: list[float] = []
        for _ in range(3):
            with timed(on_catalog), engine.connect() as db:
                expected = [tuple(row) for row in db.execute(CATALOG_QUESTION)]
        assert [tuple(row) for row in answer] == expected, (answer, expected)
        print(
            f'"boxes per class per split" ({len(answer)} rows, equal answers): '
            f"DuckDB over the warehouse {cold[0] * 1000:.0f} ms with connect and views, "
            f"{min(warm) * 1000:.0f} ms the query alone; {backend} catalog "
            f"{min(on_catalog) * 1000:.0f} ms (best of 3)"
        )


def _parts(lake: Lake) -> Any:
    from radlake.warehouse.state import load_state

    state = load_state(lake.store, "parquet")
    return state.parts if state else ()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--catalog", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    if args.catalog == "sqlite":
        with tempfile.TemporaryDirectory(prefix="radlake-catalog-") as folder:
            engine = make_engine(f"sqlite:///{Path(folder) / 'catalog.sqlite'}")
            run(engine, args.images, "SQLite")
            engine.dispose()
        return
    with postgres_database() as url:
        engine = make_engine(url)
        try:
            run(engine, args.images, "PostgreSQL")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
