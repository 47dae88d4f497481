"""Catalog backup and restore (issue 12): Parquet snapshots of every table, restored
into an empty catalog on the same or another backend.

A real lake is built on each backend: pydicom's DICOM files and a generated
VinBigData-layout PNG source (labels, classes) ingested through the real pipelines,
a dataset version over it, and one row in every other table (models, predictions,
feedback, retrain set, tokens, sessions, audit, cohort, export) with values that test
the type mapping: reals that 4-byte floats would round, ids past 2**53, nested
Unicode JSON, booleans, NULLs, datetimes. After a restore every table holds the same
rows, real catalog queries give the same answers, every original is read from the
store by the restored keys, and new rows get new ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, inspect, select, text

from radlake.catalog.db import make_engine, session_factory, transaction, upgrade
from radlake.catalog.feedback_models import Feedback, RetrainSet, RetrainSetFeedback
from radlake.catalog.inference_models import (
    InferenceRun,
    Model,
    ModelAlias,
    ModelAliasEvent,
    ModelVersion,
    Prediction,
)
from radlake.catalog.models import (
    ApiToken,
    AuditEvent,
    Base,
    Cohort,
    DatasetVersion,
    Export,
    Image,
    Job,
    Label,
    Patient,
    Source,
    WebSession,
)
from radlake.catalog.queries import ImageFilter, count_images, finding_classes, image_counts
from radlake.cli.main import run
from radlake.config import Settings
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version, members
from radlake.errors import CatalogError
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake, init_lake
from radlake.pipelines.backup import (
    BackupError,
    backup_catalog,
    list_backups,
    locate_backup,
    read_manifest,
    restore_catalog,
)
from radlake.pipelines.backup.retention import INCOMPLETE_MIN_AGE
from radlake.pipelines.deidentify import deidentify_images
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from radlake.storage.store import ObjectStore, open_store
from tests.conftest import (
    MARIADB_URL,
    POSTGRES_URL,
    SECRET,
    pydicom_file,
    run_radlake,
    s3_options,
    server_database,
)

DICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm")
LATER_FILE = "MR_small_implicit.dcm"  # ingested after a restore: new ids
CLASSES = ["No finding", "Cardiomegaly", "Nodule/Mass"]
WHEN = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
BIG = 2**53 + 1  # a float64 would round it
REALS = (0.1 + 0.2, 1234.5678901234567, 1e-300, -0.0)


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database on backend (a new SQLite file, or a new server database)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'catalog-{time.monotonic_ns()}.sqlite'}"
        return
    databases = server_database(POSTGRES_URL if backend == "postgresql" else MARIADB_URL)
    try:
        yield next(databases)
    finally:
        databases.close()  # drops it


@contextmanager
def engine_on(url: str, *, migrate: bool) -> Iterator[Engine]:
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Built:
    engine: Engine
    store: ObjectStore


def write_vinbigdata(root: Path, count: int) -> None:
    """PNGs stored 256 x 200 from 2560 x 2000 originals, 2 readers each."""
    (root / "train").mkdir(parents=True)
    rows, meta = [], []
    for n in range(count):
        image_id = f"img{n:04d}"
        rng = np.random.default_rng(zlib.crc32(image_id.encode()))
        PILImage.fromarray(rng.integers(0, 256, (200, 256), dtype=np.uint8)).save(
            root / "train" / f"{image_id}.png"
        )
        meta.append(f"{image_id},2000,2560")
        name = CLASSES[n % 3]
        if n % 3 == 0:
            rows += [f"{image_id},No finding,14,R{r},,,," for r in (1, 2)]
        else:
            rows += [f"{image_id},{name},{n % 3},R{r},10.5,20.25,600.125,700" for r in (1, 2)]
    header = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
    (root / "train.csv").write_text(header + "\n".join(rows) + "\n")
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\n" + "\n".join(meta) + "\n")


def build_lake(engine: Engine, store: ObjectStore, folder: Path) -> Built:
    """Ingest real files, load a labelled source, make a dataset version, and put one
    row in every other table."""
    dicom = folder / "dicom"
    dicom.mkdir(parents=True)
    for name in DICOM_FILES:
        shutil.copy(pydicom_file(name), dicom / name)
    (dicom / "noise.dcm").write_bytes(b"not an image" * 100)  # quarantined
    pseudonymizer = Pseudonymizer(SECRET)
    ingest(
        [dicom], engine=engine, store=store, pseudonymizer=pseudonymizer, executor=SerialExecutor()
    )
    with session_factory(engine)() as session:
        dicom_ids = list(session.scalars(select(Image.id)))
    # deid_instance rows (their JSON header as well): the real pipeline's objects.
    assert deidentify_images(Lake(engine, store, pseudonymizer), dicom_ids).written
    write_vinbigdata(folder / "vin", 9)
    load_source(
        read_vinbigdata(folder / "vin"),
        engine=engine,
        store=store,
        pseudonymizer=pseudonymizer,
        executor=SerialExecutor(),
    )
    with transaction(engine) as session:
        version, _ = create_version(
            session,
            VersionRequest(
                dataset="vin",
                selection=ImageFilter(source="vinbigdata"),
                spec=SplitSpec.parse("training=0.6,validation=0.2,test=0.2"),
            ),
        )
        version_id = version.id
    add_other_rows(engine, version_id)
    return Built(engine, store)


def add_other_rows(engine: Engine, version_id: int) -> None:
    with transaction(engine) as session:
        image = session.scalars(select(Image).order_by(Image.id)).first()
        assert image is not None
        job = session.scalars(select(Job).order_by(Job.id)).first()
        assert job is not None
        model = Model(name="detector", created_at=WHEN)
        session.add(model)
        session.flush()
        mv = ModelVersion(
            model_id=model.id,
            version=1,
            store_key="models/detector/1/model.onnx",
            sha256="a" * 64,
            size_bytes=BIG,
            contract={"size": 640, "mean": [0.485, 0.456, 0.406], "note": "Größe ✓ 尺寸"},
            decoder="yolov8",
            class_names=["Cardiomegaly", "Nodule/Mass"],
            metrics={"map50": REALS[1], "nested": {"list": [1, None, True, "x"]}},
            trained_on_id=version_id,
            created_at=WHEN,
        )
        session.add(mv)
        session.flush()
        session.add(ModelAlias(model_id=model.id, alias="production", version_id=mv.id))
        session.add(
            ModelAliasEvent(
                model_id=model.id, alias="production", action="promote", version_id=mv.id
            )
        )
        run = InferenceRun(
            model_version_id=mv.id,
            image_id=image.id,
            score_threshold=REALS[0],
            iou_threshold=0.45,
            latency_ms=REALS[2],
            caller="tester",
            created_at=WHEN,
        )
        session.add(run)
        session.flush()
        prediction = Prediction(
            run_id=run.id,
            class_id=1,
            class_name="Nodule/Mass",
            score=0.87654321,
            x_min=REALS[1],
            y_min=REALS[3],
            x_max=1500.0,
            y_max=1600.0,
        )
        session.add(prediction)
        session.flush()
        for n, simulated in enumerate((True, False)):
            session.add(
                Feedback(
                    image_id=image.id,
                    run_id=run.id,
                    prediction_id=prediction.id if simulated else None,
                    model_version_id=mv.id,
                    verdict="accept" if simulated else "add",
                    class_name="Nodule/Mass",
                    x_min=REALS[1],
                    y_min=2.5,
                    x_max=3.5,
                    y_max=4.5,
                    confidence=0.87654321 if simulated else None,
                    reviewer=f"reader{n}",
                    simulated=simulated,
                    channel="simulator" if simulated else "web",
                    fingerprint=f"{n}" * 64,
                    created_at=WHEN + timedelta(seconds=n),
                )
            )
        session.flush()
        retrain_version = DatasetVersion(
            dataset_id=session.get_one(DatasetVersion, version_id).dataset_id,
            version=2,
            selection={},
            split_spec={},
            seed=2**31 - 1,
            label_set="feedback",
            fusion=None,
            manifest_hash="b" * 64,
        )
        session.add(retrain_version)
        session.flush()
        retrain = RetrainSet(
            name="20260304t050607z",
            model_version_id=mv.id,
            base_version_id=version_id,
            dataset_version_id=retrain_version.id,
            job_id=job.id,
            store_prefix="retrain/20260304t050607z",
        )
        session.add(retrain)
        session.flush()
        for feedback_id in session.scalars(select(Feedback.id)):
            session.add(RetrainSetFeedback(retrain_set_id=retrain.id, feedback_id=feedback_id))
        token = ApiToken(name="ci", role="admin", token_hash="c" * 64, revoked_at=None)
        session.add(token)
        session.flush()
        session.add(
            WebSession(
                token_id=token.id,
                session_hash="d" * 64,
                csrf_hash="e" * 64,
                expires_at=WHEN + timedelta(hours=12),
            )
        )
        session.add(
            AuditEvent(
                token_id=token.id,
                actor="ci",
                action="download",
                target="image/1",
                detail={"bytes": BIG},
            )
        )
        session.add(Cohort(name="mr", selection={"modality": ["MR"]}, created_by="ci"))
        session.add(
            Export(
                version_id=version_id,
                format="yolo",
                location="exports/vin/1/yolo",
                parameters={"size": 1024, "ratio": REALS[1]},
                manifest_hash="f" * 64,
            )
        )


def table_rows(engine: Engine, *, whole_seconds: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Every catalog table's rows, in primary-key order, as the catalog's types read
    them. whole_seconds: MariaDB's DATETIME columns keep no fraction (the schema's
    limit, not the backup's), so a comparison with it drops fractions on both sides."""
    found = {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = connection.execute(select(table).order_by(*table.primary_key.columns))
            found[table.name] = [
                tuple(
                    value.replace(microsecond=0)
                    if whole_seconds and isinstance(value, datetime)
                    else value
                    for value in row
                )
                for row in rows
            ]
    return found


def catalog_answers(engine: Engine) -> dict[str, Any]:
    """A few real catalog queries."""
    with session_factory(engine)() as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        version_id = session.scalars(select(DatasetVersion.id).order_by(DatasetVersion.id)).first()
        assert version_id is not None
        return {
            "mr": count_images(session, selection=ImageFilter(modality=["MR"])),
            "vin": count_images(session, selection=ImageFilter(source=["vinbigdata"])),
            "findings": finding_classes(session, image_ids=ids),
            "counts": image_counts(session),
            "members": members(session, version_id),
        }


def assert_same_lake(
    source: Engine, restored: Engine, store: ObjectStore, *, every_table: bool = True
) -> None:
    whole = "mysql" in (source.dialect.name, restored.dialect.name)
    before, after = (
        table_rows(source, whole_seconds=whole),
        table_rows(restored, whole_seconds=whole),
    )
    assert set(before) == set(after)
    for name in before:
        assert after[name] == before[name], name
    if every_table:  # the lakes build_lake makes: a row in every table
        assert sum(len(rows) for rows in after.values()) > 100
        assert all(after[name] for name in after), [name for name in after if not after[name]]
        assert catalog_answers(restored) == catalog_answers(source)
    # The restored catalog's keys still find the original bytes in the store.
    with session_factory(restored)() as session:
        for sha, key in session.execute(select(Image.sha256, Image.original_key)):
            assert hashlib.sha256(store.get_bytes(key)).hexdigest() == sha


def assert_new_rows_get_new_ids(restored: Engine, store: ObjectStore, folder: Path) -> None:
    with session_factory(restored)() as session:
        largest = {
            model: session.scalar(select(func.max(model.id)))
            for model in (Image, Job, Label, Patient, Source)
        }
    later = folder / "later"
    later.mkdir()
    shutil.copy(pydicom_file(LATER_FILE), later / LATER_FILE)
    summary = ingest(
        [later],
        engine=restored,
        store=store,
        pseudonymizer=Pseudonymizer(SECRET),
        executor=SerialExecutor(),
    )
    assert summary.catalogued == 1
    with transaction(restored) as session:
        session.add(Source(name="after-restore", kind="folder"))
        session.add(Patient(pseudonym="after-restore"))
        session.add(Label(source_id=1, source_image_key="x", class_name="x", origin="ground_truth"))
    with session_factory(restored)() as session:
        for model, before in largest.items():
            newest = session.scalar(select(func.max(model.id)))
            assert before is not None and newest is not None and newest > before, model


def backup_to_folder(built: Built, folder: Path) -> tuple[ObjectStore, str]:
    destination = open_store(folder.as_uri())
    summary = backup_catalog(built.engine, destination, pseudonymizer=Pseudonymizer(SECRET))
    return destination, f"backups/{summary.manifest.name}"


@pytest.mark.parametrize(
    ("origin", "target"),
    [
        ("sqlite", "sqlite"),
        ("postgresql", "postgresql"),
        ("mariadb", "mariadb"),
        ("sqlite", "postgresql"),
        ("postgresql", "mariadb"),
        ("mariadb", "sqlite"),
    ],
)
def test_backup_restores_the_same_lake(origin: str, target: str, tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri())
    with (
        fresh_database(origin, tmp_path) as origin_url,
        engine_on(origin_url, migrate=True) as source,
        fresh_database(target, tmp_path) as target_url,
        engine_on(target_url, migrate=False) as restored,
    ):
        built = build_lake(source, store, tmp_path / "inputs")
        backups, folder = backup_to_folder(built, tmp_path / "backups")
        manifest = read_manifest(backups, folder)
        assert manifest.backend == source.dialect.name
        assert [t.table for t in manifest.tables] == [t.name for t in Base.metadata.sorted_tables]
        summary = restore_catalog(restored, backups, folder, pseudonymizer=Pseudonymizer(SECRET))
        assert summary.same_key is True
        assert summary.manifest.total_rows == manifest.total_rows
        assert_same_lake(source, restored, store)
        assert_new_rows_get_new_ids(restored, store, tmp_path / "inputs")


@pytest.fixture
def sqlite_lake(tmp_path: Path) -> Iterator[Built]:
    with engine_on(f"sqlite:///{tmp_path / 'origin.sqlite'}", migrate=True) as engine:
        yield build_lake(engine, open_store((tmp_path / "store").as_uri()), tmp_path / "inputs")


def assert_untouched(url: str) -> None:
    """The target holds no schema and no rows (nothing was loaded)."""
    with engine_on(url, migrate=False) as engine:
        assert inspect(engine).get_table_names() == []


def test_a_parquet_file_with_a_flipped_byte_is_refused(sqlite_lake: Built, tmp_path: Path) -> None:
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    path = tmp_path / "backups" / folder / "image.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target = f"sqlite:///{tmp_path / 'target.sqlite'}"
    with engine_on(target, migrate=False) as engine, pytest.raises(BackupError) as refused:
        restore_catalog(engine, backups, folder)
    assert "image.parquet does not match its manifest (SHA-256 differs)" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert_untouched(target)


def test_a_missing_file_or_manifest_is_refused(sqlite_lake: Built, tmp_path: Path) -> None:
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    target = f"sqlite:///{tmp_path / 'target.sqlite'}"
    (tmp_path / "backups" / folder / "label.parquet").unlink()
    with (
        engine_on(target, migrate=False) as engine,
        pytest.raises(BackupError, match=r"label\.parquet is missing"),
    ):
        restore_catalog(engine, backups, folder)
    (tmp_path / "backups" / folder / "manifest.json").unlink()
    with (
        engine_on(target, migrate=False) as engine,
        pytest.raises(BackupError, match=r"no manifest\.json"),
    ):
        restore_catalog(engine, backups, folder)
    assert_untouched(target)


def test_a_manifest_that_lies_is_refused(sqlite_lake: Built, tmp_path: Path) -> None:
    """A manifest that left a table out restored a catalog without it (every label
    gone, exit 0); one listing a table twice, or more rows than its file, is refused too."""
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    path = tmp_path / "backups" / folder / "manifest.json"
    original = json.loads(path.read_text())

    def without_label(document: dict[str, Any]) -> None:
        document["tables"] = [t for t in document["tables"] if t["table"] != "label"]

    def twice(document: dict[str, Any]) -> None:
        document["tables"].append(dict(document["tables"][0]))

    def more_rows(document: dict[str, Any]) -> None:
        next(t for t in document["tables"] if t["table"] == "image")["rows"] += 5

    for edit, says in (
        (without_label, "lists no file for table label"),
        (twice, "listed twice"),
        (more_rows, "image.parquet holds"),
    ):
        document = json.loads(json.dumps(original))
        edit(document)
        path.write_text(json.dumps(document))
        target = f"sqlite:///{tmp_path / f'target-{edit.__name__}.sqlite'}"
        with engine_on(target, migrate=False) as engine:
            with pytest.raises(BackupError, match=says) as refused:
                restore_catalog(engine, backups, folder)
            assert "nothing was restored" in str(refused.value)
            with engine.connect() as connection:
                for name in set(inspect(connection).get_table_names()) & set(Base.metadata.tables):
                    assert not connection.scalar(select(func.count()).select_from(text(name)))


def test_an_unknown_schema_revision_is_refused(sqlite_lake: Built, tmp_path: Path) -> None:
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    path = tmp_path / "backups" / folder / "manifest.json"
    document = json.loads(path.read_text())
    document["revision"] = "9999_from_the_future"
    path.write_text(json.dumps(document))
    target = f"sqlite:///{tmp_path / 'target.sqlite'}"
    with (
        engine_on(target, migrate=False) as engine,
        pytest.raises(BackupError, match="does not know"),
    ):
        restore_catalog(engine, backups, folder)
    assert_untouched(target)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_a_target_with_rows_is_refused_and_kept(
    backend: str, sqlite_lake: Built, tmp_path: Path
) -> None:
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    with fresh_database(backend, tmp_path) as url, engine_on(url, migrate=True) as engine:
        with transaction(engine) as session:
            session.add(Cohort(name="mine", selection={}, created_by="me"))
        with pytest.raises(BackupError, match="not empty \\(table cohort has rows\\)"):
            restore_catalog(engine, backups, folder)
        with session_factory(engine)() as session:
            assert list(session.scalars(select(Cohort.name))) == ["mine"]
            assert session.scalar(select(func.count(Image.id))) == 0


def test_an_empty_catalog_made_by_init_is_restored_into(sqlite_lake: Built, tmp_path: Path) -> None:
    """A target already migrated (by `radlake init`) but empty is a valid target."""
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    with fresh_database("postgresql", tmp_path) as url, engine_on(url, migrate=True) as engine:
        restore_catalog(engine, backups, folder)
        assert_same_lake(sqlite_lake.engine, engine, sqlite_lake.store)


def test_a_failing_load_leaves_nothing(sqlite_lake: Built, tmp_path: Path) -> None:
    """A row the target refuses (here: a name longer than PostgreSQL's column) rolls the
    whole load back."""
    with transaction(sqlite_lake.engine) as session:  # SQLite does not enforce VARCHAR(n)
        session.add(Cohort(name="x" * 300, selection={}, created_by="me"))
    backups, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    with fresh_database("postgresql", tmp_path) as url, engine_on(url, migrate=False) as engine:
        with pytest.raises(CatalogError, match="nothing loaded"):
            restore_catalog(engine, backups, folder)
        rows = table_rows(engine)
        assert all(not found for found in rows.values())


def test_backup_and_restore_through_s3(
    sqlite_lake: Built, tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    destination = open_store(f"s3://{s3_bucket}/catalog-backups", **s3_options(s3_endpoint))
    summary = backup_catalog(sqlite_lake.engine, destination, prefix="")
    assert summary.location.endswith(f"catalog-backups/{summary.manifest.name}")
    keys = set(destination.list(summary.manifest.name))
    assert f"{summary.manifest.name}/manifest.json" in keys
    with engine_on(f"sqlite:///{tmp_path / 'target.sqlite'}", migrate=False) as engine:
        restore_catalog(engine, destination, summary.manifest.name)
        assert_same_lake(sqlite_lake.engine, engine, sqlite_lake.store)


def test_keep_n_keeps_the_last_n_complete_backups(sqlite_lake: Built, tmp_path: Path) -> None:
    store = open_store((tmp_path / "backups").as_uri())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    names = []
    for day in range(4):
        summary = backup_catalog(sqlite_lake.engine, store, now=start + timedelta(days=day))
        names.append(summary.manifest.name)
    # An incomplete backup from a run that died long ago, one still being written,
    # and a folder that is no backup.
    store.put_bytes("backups/20260101t120000z/job.parquet", b"half")
    old = time.time() - INCOMPLETE_MIN_AGE - 60
    os.utime(tmp_path / "backups" / "backups/20260101t120000z/job.parquet", (old, old))
    store.put_bytes("backups/20260102t120000z/job.parquet", b"still writing")
    store.put_bytes("backups/notes/readme.txt", b"mine")
    summary = backup_catalog(sqlite_lake.engine, store, keep=2, now=start + timedelta(days=4))
    assert set(summary.removed) == {*names[:3], "20260101t120000z"}
    left = [(b.name, b.complete) for b in list_backups(store, "backups")]
    assert left == [("20260102t120000z", False), (names[3], True), (summary.manifest.name, True)]
    assert store.exists("backups/notes/readme.txt")
    # The one just written stays even when its name is older than the others.
    again = backup_catalog(sqlite_lake.engine, store, keep=1, now=start)
    assert again.manifest.name == "20260101t000000z"
    assert again.removed == (names[3],)  # the newest (by name) stays as the last 1
    complete = [b.name for b in list_backups(store, "backups") if b.complete]
    assert complete == [again.manifest.name, summary.manifest.name]


def test_two_backups_in_one_second_get_two_names(sqlite_lake: Built, tmp_path: Path) -> None:
    store = open_store((tmp_path / "backups").as_uri())
    first = backup_catalog(sqlite_lake.engine, store, now=WHEN)
    second = backup_catalog(sqlite_lake.engine, store, now=WHEN)
    assert (first.manifest.name, second.manifest.name) == ("20260304t050607z", "20260304t050607z-2")


def test_backups_running_at_once_never_share_a_folder(sqlite_lake: Built, tmp_path: Path) -> None:
    """Runs started in one second all found the same name free, then wrote into one
    folder: one manifest naming the others' files (a damaged backup)."""
    store = open_store((tmp_path / "backups").as_uri())
    runs = 3
    # Every run waits here once it has chosen its folder, before its first upload.
    chosen = threading.Barrier(runs, timeout=120)

    def at_first_upload(phase: str, done: int, _total: int | None) -> None:
        if phase == "uploading" and done == 0:
            chosen.wait()

    def one_backup() -> str:
        return backup_catalog(
            sqlite_lake.engine, store, now=WHEN, progress=at_first_upload
        ).manifest.name

    with ThreadPoolExecutor(runs) as pool:
        names = sorted(pool.map(lambda _: one_backup(), range(runs)))
    assert names == ["20260304t050607z", "20260304t050607z-2", "20260304t050607z-3"]
    for name in names:
        keys = {key.rsplit("/", 1)[1] for key in store.list(f"backups/{name}")}
        manifest = read_manifest(store, f"backups/{name}")
        assert keys == {"manifest.json", *(table.file for table in manifest.tables)}
        for table in manifest.tables:
            data = store.get_bytes(f"backups/{name}/{table.file}")
            assert hashlib.sha256(data).hexdigest() == table.sha256


def test_parquet_files_carry_exact_types(sqlite_lake: Built, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, folder = backup_to_folder(sqlite_lake, tmp_path / "backups")
    root = tmp_path / "backups" / folder
    version = pq.read_table(root / "model_version.parquet")
    assert version.schema.field("size_bytes").type == pa.int64()
    assert version.column("size_bytes").to_pylist() == [BIG]
    assert version.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert version.column("created_at").to_pylist() == [WHEN]
    assert json.loads(version.column("contract")[0].as_py())["note"] == "Größe ✓ 尺寸"
    feedback = pq.read_table(root / "feedback.parquet")
    assert feedback.column("simulated").type == pa.bool_()
    assert feedback.column("x_min").to_pylist() == [REALS[1], REALS[1]]
    assert feedback.column("confidence").null_count == 1
    assert (
        pq.ParquetFile(root / "image.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    )


def test_a_backup_is_found_by_name_latest_url_or_folder(sqlite_lake: Built, tmp_path: Path) -> None:
    lake_store = open_store((tmp_path / "lake-store").as_uri())
    older = backup_catalog(sqlite_lake.engine, lake_store, now=WHEN)
    newer = backup_catalog(sqlite_lake.engine, lake_store, now=WHEN + timedelta(days=1))
    opened: list[str] = []

    def open_url(url: str) -> ObjectStore:
        opened.append(url)
        return open_store(url)

    assert locate_backup(older.manifest.name, lake_store, open_url) == (
        lake_store,
        f"backups/{older.manifest.name}",
    )
    assert locate_backup("latest", lake_store, open_url)[1] == f"backups/{newer.manifest.name}"
    folder = tmp_path / "lake-store" / "backups" / older.manifest.name
    _, key = locate_backup(str(folder), lake_store, open_url)
    assert (key, opened[-1]) == ("", folder.as_uri())
    _, key = locate_backup("memory://somewhere/b", lake_store, open_url)
    assert (key, opened[-1]) == ("", "memory://somewhere/b")
    with pytest.raises(BackupError, match="no backup at"):
        locate_backup(str(tmp_path / "nowhere"), lake_store, open_url)
    with pytest.raises(BackupError, match="no complete backup"):
        locate_backup("latest", open_store((tmp_path / "empty").as_uri()), open_url)


def test_cli_backup_then_restore(tmp_path: Path) -> None:
    """`radlake backup` and `radlake restore` as a user runs them (one process each)."""
    home, copy = tmp_path / "home", tmp_path / "copy"
    settings = Settings(home=home)
    lake, _ = init_lake(settings)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in DICOM_FILES:
        shutil.copy(pydicom_file(name), inputs / name)
    ingest([inputs], engine=lake.engine, store=lake.store, pseudonymizer=lake.pseudonymizer)
    done = run_radlake(home, "backup", "--keep", "3")
    assert done.returncode == 0, done.stderr
    tables = len(Base.metadata.tables)
    assert re.fullmatch(
        rf"backup \d{{8}}t\d{{6}}z: {tables} tables, [\d,]+ rows, [\d.]+ [KM]?B in [\d.]+ s -> "
        rf"{re.escape((home / 'store').resolve().as_uri())}/backups/\S+\n",
        done.stdout,
    ), done.stdout
    assert [b.complete for b in list_backups(lake.store, "backups")] == [True]
    out = tmp_path / "elsewhere"
    second = run_radlake(home, "backup", "--to", str(out), "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["tables"] == tables and report["rows"] > 0 and report["bytes"] > 0
    # Into a new home: the catalog is made, loaded, and answers as the original.
    restored = run_radlake(copy, "restore", str(out / report["name"]))
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"restored {report['name']} (schema ")
    assert f"{report['rows']:,} rows" in restored.stdout
    assert "secret key differs" in restored.stderr  # the new home made its own key
    with engine_on(Settings(home=copy).resolved_catalog_url(), migrate=False) as engine:
        assert_same_lake(lake.engine, engine, lake.store, every_table=False)
    # Again into the now non-empty lake, a missing backup, a bad --keep: one line each.
    for home_, args, code, says in (
        (copy, ("restore", str(out / report["name"])), 1, "not empty"),
        (copy, ("restore", str(tmp_path / "nowhere")), 1, "no backup at"),
        (home, ("backup", "--keep", "0"), 2, "--keep expects a whole number"),
    ):
        failed = run_radlake(home_, *args)
        assert failed.returncode == code, failed.stderr
        assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
        assert says in failed.stderr
    lake.engine.dispose()


def run_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path, *args: str
) -> tuple[int, str, str]:
    """The console script's own entry point in this process: exit code, stdout, stderr."""
    for name in [k for k in os.environ if k.startswith("RADLAKE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RADLAKE_HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["radlake", *args])
    code = 0
    try:
        run()
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folders_with_spaces_and_unicode_are_used_as_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to "my backups/ünï" was written under my%20backups/%C3%BCn%C3%AF (a file URL
    fsspec does not unquote), and an empty --to wrote into the working folder."""
    home, copy = tmp_path / "home", tmp_path / "copy"
    init_lake(Settings(home=home))[0].engine.dispose()
    out = tmp_path / "my backups" / "ünï"
    code, stdout, stderr = run_in_process(
        monkeypatch, capsys, home, "backup", "--to", str(out), "--json"
    )
    assert code == 0, stderr
    name = json.loads(stdout)["name"]
    assert (out / name / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "my backups"]
    code, stdout, stderr = run_in_process(monkeypatch, capsys, copy, "restore", str(out / name))
    assert code == 0 and stdout.startswith(f"restored {name} "), stderr
    a_file = home / "secret.key"
    monkeypatch.chdir(tmp_path)
    for home_, args, says in (
        (home, ("backup", "--to", ""), "got an empty value"),
        (home, ("backup", "--to", "http://host/x"), "got a 'http' URL"),
        (home, ("backup", "--to", str(a_file)), "which is a file"),
        (home, ("backup", "--to", "/proc/self/no/such"), "cannot create the folder"),
        (copy, ("restore", ""), "got an empty value"),
        (copy, ("restore", "http://host/x"), "got a 'http' URL"),
    ):
        code, stdout, stderr = run_in_process(monkeypatch, capsys, home_, *args)
        assert code == 1 and stdout == "", (args, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, (args, stderr)
        assert says in stderr, (args, stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "home", "my backups"]
