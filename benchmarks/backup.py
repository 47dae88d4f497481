"""Catalog backup and restore against pg_dump -Fc / pg_restore, on PostgreSQL.

Run it from the repository root (PostgreSQL at 127.0.0.1:5432, user postgres, trust):

    .venv/bin/python benchmarks/backup.py                  # 100,000 images
    .venv/bin/python benchmarks/backup.py --images 10000   # a quicker look

What it measures:

1. Setup (not timed against anything): a fresh database migrated to head, filled by
   COPY with realistically shaped synthetic rows: 1 source, images/10 patients, 2
   studies each, 2 series per study, the images spread over them (40 columns each,
   a JSON attributes column), one preview rendition per image, 2.5 labels per image
   (findings and boxes from 3 readers), 15 label classes, one dataset version with
   every image as a member, one job.
2. `radlake backup` (backup_catalog) to a local folder: seconds, bytes of Parquet.
3. `radlake restore` (restore_catalog) into another fresh database: seconds.
4. `pg_dump -Fc` of the same database: seconds, bytes; `pg_restore` of it into a
   third fresh database: seconds (both run as processes, as an operator would).

Both restores are checked: every table's row count equals the source's. Databases
are dropped at the end. Figures depend on the machine's load; run it on a quiet one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, column, create_engine, func, select, text
from sqlalchemy import table as table_
from sqlalchemy.engine import make_url

from radlake.catalog.db import make_engine, normalize_url, upgrade
from radlake.catalog.models import Base
from radlake.pipelines.backup import backup_catalog, restore_catalog
from radlake.storage.store import open_store

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
START = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
FINDINGS = ["Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Nodule/Mass", "Other lesion"]
FINDINGS += ["Pulmonary fibrosis", "Lung Opacity", "Infiltration", "ILD", "Consolidation"]
FINDINGS += ["Calcification", "Atelectasis", "Pleural thickening", "Pneumothorax", "No finding"]


def sha(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def create_database(admin: Engine) -> str:
    name = f"radlake_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    return name


def url_of(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def copy_rows(
    engine: Engine, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]
) -> int:
    """COPY rows into table (the setup's fast path); returns how many."""
    count = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
                count += 1
        raw.commit()
    finally:
        raw.close()
    return count


def fill(engine: Engine, images: int) -> None:
    """Realistically shaped rows, by COPY, in foreign-key order."""
    patients, studies_per, series_per = max(1, images // 10), 2, 2
    studies = patients * studies_per
    series = studies * series_per
    copy_rows(
        engine,
        "source",
        ["id", "name", "kind", "created_at"],
        iter([(1, "vinbigdata", "vinbigdata", START)]),
    )
    copy_rows(
        engine,
        "job",
        [
            "id",
            "kind",
            "parameters",
            "status",
            "host",
            "pid",
            "counts",
            "started_at",
            "finished_at",
            "seconds",
        ],
        iter(
            [
                (
                    1,
                    "source",
                    json.dumps({"paths": ["/data/vin"], "workers": 2}),
                    "succeeded",
                    "host1",
                    4242,
                    json.dumps({"catalogued": images, "quarantined": 0}),
                    START,
                    START + timedelta(hours=2),
                    7200.5,
                )
            ]
        ),
    )
    copy_rows(
        engine,
        "label_class",
        ["id", "source_id", "class_id", "name"],
        ((n + 1, 1, n, name) for n, name in enumerate(FINDINGS)),
    )
    copy_rows(
        engine,
        "patient",
        ["id", "pseudonym", "created_at"],
        ((n, sha("patient", n)[:32], START + timedelta(seconds=n)) for n in range(1, patients + 1)),
    )
    copy_rows(
        engine,
        "study",
        ["id", "study_uid", "patient_id", "created_at"],
        (
            (n, f"1.2.826.0.1.3680043.8.498.{n}", (n - 1) // studies_per + 1, START)
            for n in range(1, studies + 1)
        ),
    )
    copy_rows(
        engine,
        "series",
        ["id", "series_uid", "study_id", "modality", "series_number", "description", "created_at"],
        (
            (
                n,
                f"1.2.826.0.1.3680043.8.499.{n}",
                (n - 1) // series_per + 1,
                "DX",
                n % 7,
                "CHEST PA",
                START,
            )
            for n in range(1, series + 1)
        ),
    )
    image_columns = [
        "id",
        "sha256",
        "size_bytes",
        "format",
        "source_id",
        "source_key",
        "original_key",
        "series_id",
        "sop_instance_uid",
        "sop_class_uid",
        "instance_number",
        "modality",
        "body_part",
        "view_position",
        "manufacturer",
        "manufacturer_model",
        "rows",
        "columns",
        "frames",
        "slices",
        "volumes",
        "pixel_spacing_row",
        "pixel_spacing_col",
        "slice_thickness",
        "slice_location",
        "slice_position",
        "photometric",
        "bits_allocated",
        "bits_stored",
        "transfer_syntax",
        "dtype",
        "orientation",
        "attributes",
        "job_id",
        "created_at",
    ]

    def image_rows() -> Iterator[tuple[Any, ...]]:
        for n in range(1, images + 1):
            digest = sha("image", n)
            yield (
                n,
                digest,
                8_000_000 + n % 997 * 1013,
                "dicom",
                1,
                f"train/{digest[:16]}.dicom",
                f"raw/{digest[:2]}/{digest}.dcm",
                (n - 1) % series + 1,
                f"1.2.826.0.1.3680043.8.500.{n}",
                "1.2.840.10008.5.1.4.1.1.1.1",
                n % 3,
                "DX",
                "CHEST",
                "PA" if n % 2 else "AP",
                "GE Healthcare" if n % 3 else "Philips",
                "Thunder Platform",
                2800 + n % 400,
                2300 + n % 300,
                1,
                1,
                1,
                0.139 + n % 5 * 0.001,
                0.139 + n % 5 * 0.001,
                None,
                None,
                None,
                "MONOCHROME2",
                16,
                12 + n % 3,
                "1.2.840.10008.1.2.4.90",
                "uint16",
                "portrait",
                json.dumps(
                    {"image_id": digest[:32], "license": "CC BY 4.0", "site": n % 3, "dim0": 2800}
                ),
                1,
                START + timedelta(milliseconds=n * 37),
            )

    copy_rows(engine, "image", image_columns, image_rows())
    copy_rows(
        engine,
        "rendition",
        [
            "id",
            "image_id",
            "name",
            "key",
            "width",
            "height",
            "window_center",
            "window_width",
            "created_at",
        ],
        (
            (
                n,
                n,
                "preview",
                f"derived/{sha('image', n)}/preview.png",
                512,
                421,
                2047.5 + n % 11,
                4095.0,
                START,
            )
            for n in range(1, images + 1)
        ),
    )

    def label_rows() -> Iterator[tuple[Any, ...]]:
        label_id = 0
        for n in range(1, images + 1):
            for reader in range(
                1 + (n % 4 == 0) + (n % 2 == 0) * 2
            ):  # 1, 3, 1, 4 ... = 2.25 + rest
                label_id += 1
                finding = FINDINGS[(n + reader) % len(FINDINGS)]
                box = finding != "No finding"
                x = 100.0 + (n * 7 + reader * 13) % 1500 + 0.25
                y = 200.0 + (n * 11 + reader * 3) % 1400 + 0.5
                yield (
                    label_id,
                    1,
                    sha("image", n)[:32],
                    n,
                    finding,
                    FINDINGS.index(finding),
                    f"R{reader + 8}",
                    "ground_truth",
                    None,
                    x if box else None,
                    y if box else None,
                    x + 321.125 if box else None,
                    y + 287.75 if box else None,
                    1,
                    START,
                )

    copy_rows(
        engine,
        "label",
        [
            "id",
            "source_id",
            "source_image_key",
            "image_id",
            "class_name",
            "class_id",
            "reader",
            "origin",
            "confidence",
            "x_min",
            "y_min",
            "x_max",
            "y_max",
            "job_id",
            "created_at",
        ],
        label_rows(),
    )
    copy_rows(engine, "dataset", ["id", "name", "created_at"], iter([(1, "vin", START)]))
    copy_rows(
        engine,
        "dataset_version",
        [
            "id",
            "dataset_id",
            "version",
            "selection",
            "split_spec",
            "seed",
            "label_set",
            "fusion",
            "classes",
            "counts",
            "leakage",
            "manifest_hash",
            "created_at",
        ],
        iter(
            [
                (
                    1,
                    1,
                    1,
                    json.dumps({"source": ["vinbigdata"]}),
                    json.dumps({"training": 0.8, "validation": 0.1, "test": 0.1}),
                    0,
                    "readers",
                    None,
                    json.dumps(FINDINGS),
                    json.dumps({"training": images}),
                    json.dumps({"ok": True}),
                    sha("version"),
                    START,
                )
            ]
        ),
    )
    splits = ("training",) * 8 + ("validation", "test")
    copy_rows(
        engine,
        "dataset_member",
        ["version_id", "image_id", "split"],
        ((1, n, splits[n % 10]) for n in range(1, images + 1)),
    )
    with engine.begin() as connection:  # the ids were given: move the sequences on
        for table in (
            "source",
            "job",
            "label_class",
            "patient",
            "study",
            "series",
            "image",
            "rendition",
            "label",
            "dataset",
            "dataset_version",
        ):
            largest = connection.scalar(select(func.max(column("id"))).select_from(table_(table)))
            connection.execute(
                text("SELECT setval(pg_get_serial_sequence(:table, 'id'), :largest)"),
                {"table": table, "largest": largest},
            )
        connection.execute(text("ANALYZE"))


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            t.name: int(connection.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=100_000, help="images in the catalog (default 100,000)"
    )
    args = parser.parse_args()
    admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    names = [create_database(admin) for _ in range(3)]
    source, target, dumped = (make_engine(url_of(name)) for name in names)
    try:
        upgrade(source)
        started = time.perf_counter()
        fill(source, args.images)
        expected = counts(source)
        setup = time.perf_counter() - started
        print(f"setup: {args.images:,} images, {sum(expected.values()):,} rows in {setup:.1f} s")
        with tempfile.TemporaryDirectory(prefix="radlake-bench-") as work:
            store = open_store(Path(work, "backups").as_uri())
            summary = backup_catalog(source, store)
            backup_seconds, backup_bytes = summary.seconds, summary.manifest.total_bytes
            restored = restore_catalog(target, store, f"backups/{summary.manifest.name}")
            restore_seconds = restored.seconds
            assert counts(target) == expected, "radlake restore lost rows"
            dump = Path(work, "catalog.dump")
            connect = ["-h", "127.0.0.1", "-U", "postgres", "--no-password"]
            dump_seconds = timed(["pg_dump", *connect, "-Fc", "-f", str(dump), names[0]])
            dump_bytes = dump.stat().st_size
            pg_restore_seconds = timed(["pg_restore", *connect, "-d", names[2], str(dump)])
            assert counts(dumped) == expected, "pg_restore lost rows"
        rows = [
            ("backup", backup_seconds, backup_bytes, "pg_dump -Fc", dump_seconds, dump_bytes),
            ("restore", restore_seconds, None, "pg_restore", pg_restore_seconds, None),
        ]
        print(f"{'step':<8} {'radlake s':>10} {'pg s':>8} {'ratio':>6}", end="   ")
        print(f"{'radlake bytes':>14} {'pg bytes':>12} {'ratio':>6}")
        for step, ours, ours_bytes, _, theirs, theirs_bytes in rows:
            size = (
                f"{ours_bytes:>14,} {theirs_bytes:>12,} {ours_bytes / theirs_bytes:>6.2f}"
                if ours_bytes is not None and theirs_bytes is not None
                else f"{'':>14} {'':>12} {'':>6}"
            )
            print(f"{step:<8} {ours:>10.1f} {theirs:>8.1f} {ours / theirs:>6.2f}   {size}")
        total = sum(expected.values())
        print(f"rows {total:,}; image {expected['image']:,}, label {expected['label']:,}")
    finally:
        for engine in (source, target, dumped):
            engine.dispose()
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


if __name__ == "__main__":
    main()
