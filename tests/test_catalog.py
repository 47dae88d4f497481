"""The catalog on SQLite, PostgreSQL and MariaDB: migrations, ingest writes, queries."""

from __future__ import annotations

import shutil
from datetime import UTC
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, func, inspect, select

from radlake.catalog.db import check_current, make_engine, session_factory, upgrade
from radlake.catalog.models import Image, Job, Patient, Quarantine, Series, Study
from radlake.catalog.queries import (
    ImageFilter,
    count_images,
    find_images,
    get_image,
    summary_by_modality_format,
)
from radlake.errors import ImageNotFound, NotInitialized
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import IngestSummary, ingest
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file

FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "test-SR.dcm")


def ingest_into(engine: Engine, folder: Path, store_root: Path) -> IngestSummary:
    return ingest(
        [folder],
        engine=engine,
        store=open_store(store_root.as_uri()),
        pseudonymizer=Pseudonymizer(SECRET),
        executor=SerialExecutor(),
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "in"
    path.mkdir()
    for name in FILES:
        shutil.copy(pydicom_file(name), path / name)
    return path


def test_migrations_create_every_table_and_are_idempotent(catalog: Engine) -> None:
    upgrade(catalog)  # a second upgrade is a no-op
    check_current(catalog)
    tables = set(inspect(catalog).get_table_names())
    assert {"source", "patient", "study", "series", "image", "rendition", "job"} <= tables
    assert "quarantine" in tables


def test_uninitialised_catalog_is_reported(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    with pytest.raises(NotInitialized, match="radlake init"):
        check_current(engine)
    engine.dispose()


def test_ingest_and_query_on_every_backend(catalog: Engine, folder: Path, tmp_path: Path) -> None:
    summary = ingest_into(catalog, folder, tmp_path / "store")
    assert (summary.catalogued, summary.already_present, summary.quarantined) == (4, 0, 1)
    again = ingest_into(catalog, folder, tmp_path / "store")
    assert (again.catalogued, again.already_present, again.quarantined) == (0, 4, 1)

    ct = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    mr = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    with session_factory(catalog)() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 4
        assert session.scalar(select(func.count()).select_from(Quarantine)) == 1
        # MR_small and its RLE copy share study and series: grouped, not duplicated.
        mr_images = find_images(session, selection=ImageFilter(series_uid=mr.SeriesInstanceUID))
        assert len(mr_images) == 2
        assert (
            session.scalar(
                select(func.count())
                .select_from(Series)
                .where(Series.series_uid == mr.SeriesInstanceUID)
            )
            == 1
        )
        (ct_image,) = find_images(session, selection=ImageFilter(modality="ct"))
        detail = get_image(session, image_id=ct_image.id)
        assert detail.series is not None and detail.series.study is not None
        assert detail.series.study.study_uid == ct.StudyInstanceUID
        assert detail.series.study.patient is not None
        assert detail.series.study.patient.pseudonym == Pseudonymizer(SECRET)(ct.PatientID)
        assert detail.created_at.tzinfo is UTC
        assert count_images(session, selection=ImageFilter(manufacturer="ge")) == 2  # CT, NM
        assert count_images(session, selection=ImageFilter(manufacturer="Toshiba")) == 2
        assert count_images(session, selection=ImageFilter(format="dicom", min_rows=100)) == 2
        assert session.scalar(select(func.count()).select_from(Patient)) >= 2
        assert session.scalar(select(func.count()).select_from(Study)) >= 2
        by_modality = {(m, f): n for m, f, n, _, _ in summary_by_modality_format(session)}
        assert by_modality[("MR", "dicom")] == 2
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
        assert [job.status for job in jobs] == ["succeeded", "succeeded"]
        assert jobs[0].finished_at is not None and jobs[0].finished_at.tzinfo is UTC
        with pytest.raises(ImageNotFound):
            get_image(session, image_id=999_999)


def test_attributes_json_round_trips(catalog: Engine, folder: Path, tmp_path: Path) -> None:
    ingest_into(catalog, folder, tmp_path / "store")
    with session_factory(catalog)() as session:
        (image,) = find_images(session, selection=ImageFilter(modality="CT"))
        assert image.attributes["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
        assert image.attributes["sop_class_name"] == "CT Image Storage"
        assert isinstance(image.attributes["KVP"], float)


def test_the_way_up_postgres_catalog_s3_store_process_pool(
    s3_endpoint: str, s3_bucket: str, folder: Path
) -> None:
    """Same code at scale: PostgreSQL catalog, S3 store, workers in other processes."""
    from radlake.pipelines.executor import LocalProcessExecutor
    from tests.conftest import POSTGRES_URL, s3_options, server_database

    for url in server_database(POSTGRES_URL):
        engine = make_engine(url)
        upgrade(engine)
        store = open_store(f"s3://{s3_bucket}/lake", **s3_options(s3_endpoint))
        summary = ingest(
            [folder],
            engine=engine,
            store=store,
            pseudonymizer=Pseudonymizer(SECRET),
            executor=LocalProcessExecutor(2),
        )
        assert (summary.catalogued, summary.quarantined) == (4, 1)
        with session_factory(engine)() as session:
            keys = [image.original_key for image in session.scalars(select(Image))]
        assert all(store.exists(key) for key in keys)
        assert len(list(store.list("derived/"))) == 4
        assert len(list(store.list("quarantine/"))) == 1
        engine.dispose()


def test_sources_selection_and_versions_on_every_backend(catalog: Engine, tmp_path: Path) -> None:
    """Labels, JSON attribute filters and dataset versions behave alike on all backends."""
    from radlake.catalog.db import transaction
    from radlake.curation.splits import SplitSpec
    from radlake.curation.versions import VersionRequest, create_version
    from radlake.pipelines.source_load import load_source
    from radlake.sources.vinbigdata import read_vinbigdata
    from tests.test_datasets import write_vinbigdata

    write_vinbigdata(tmp_path / "vin", range(12))
    summary = load_source(
        read_vinbigdata(tmp_path / "vin"),
        engine=catalog,
        store=open_store((tmp_path / "store").as_uri()),
        pseudonymizer=Pseudonymizer(SECRET),
        executor=SerialExecutor(),
    )
    assert (summary.linked, summary.boxes) == (12, 24)
    with session_factory(catalog)() as session:
        by_attribute = ImageFilter(attributes=(("dataset", "vinbigdata"),))
        assert count_images(session, selection=by_attribute) == 12
        by_number = ImageFilter(attributes=(("original_columns", "2560"),))
        assert count_images(session, selection=by_number) == 12
        assert count_images(session, selection=ImageFilter(finding="Cardiomegaly")) == 4
    request = VersionRequest(
        "vin", ImageFilter(source="vinbigdata"), SplitSpec.parse("training=0.5,test=0.5")
    )
    with transaction(catalog) as session:
        version, created = create_version(session, request)
        assert created and version.leakage["ok"]
    with session_factory(catalog)() as session:
        in_test = count_images(session, selection=ImageFilter(dataset="vin", split="test"))
    assert in_test == 6


def test_migrations_match_the_models(catalog: Engine) -> None:
    """What Alembic builds is what the models declare (a column changed in one place
    and not the other shows up here), on every backend."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from radlake.catalog.models import Base

    with catalog.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_database_errors_never_carry_bound_parameters(catalog: Engine) -> None:
    """SQLAlchemy's part of a failed statement's message hides its bound parameters
    (the server's own text may still quote a key: the API never logs messages)."""
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from radlake.catalog.models import Source

    secret = "DOE^JOHN_ZZPID00042"
    with catalog.begin() as connection:
        connection.execute(insert(Source), [{"name": secret, "kind": "folder"}])
    with pytest.raises(IntegrityError) as raised, catalog.begin() as connection:
        connection.execute(insert(Source), [{"name": secret, "kind": "folder"}])
    assert "[SQL parameters hidden" in str(raised.value)
    assert "[parameters:" not in str(raised.value)


def test_every_migration_goes_down_to_nothing_and_up_again(catalog_url: str) -> None:
    """The whole chain downgrades and upgrades on every backend (MariaDB refuses to
    drop an index a foreign key needs; a downgrade that tries fails here)."""
    from alembic import command

    from radlake.catalog.db import _alembic_config

    engine = make_engine(catalog_url)
    try:
        config = _alembic_config(engine)
        command.upgrade(config, "head")
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(config, "head")
        check_current(engine)
    finally:
        engine.dispose()


def test_coordinates_and_spacings_come_back_exactly(catalog: Engine) -> None:
    """Every real-valued column is double precision: MariaDB's plain FLOAT kept about
    six digits, so a box at 1234.5678 px came back as 1234.57."""
    from radlake.catalog.models import Label, Source

    box = (1234.5678901234, 0.1 + 0.2, 2047.999999999, 1e-9)
    with session_factory(catalog)() as session:
        source = Source(name="exact", kind="test")
        session.add(source)
        session.flush()
        session.add(
            Label(
                source_id=source.id,
                source_image_key="a.png",
                class_name="lung",
                origin="ground_truth",
                confidence=0.123456789012,
                x_min=box[0],
                y_min=box[1],
                x_max=box[2],
                y_max=box[3],
            )
        )
        session.commit()
    with session_factory(catalog)() as session:
        label = session.scalars(select(Label)).one()
        assert (label.x_min, label.y_min, label.x_max, label.y_max) == box
        assert label.confidence == 0.123456789012
