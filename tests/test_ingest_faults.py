"""Faults of the store and of the catalog, made by a real TCP proxy in front of the
moto S3 server and of PostgreSQL: retried, then reported as a fault, never as a bad
input; a re-run completes (issue 7)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from radlake.catalog.db import make_engine, session_factory, upgrade
from radlake.catalog.models import Image, Job, Quarantine
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.executor import SerialExecutor, default_executor
from radlake.pipelines.ingest import IngestFault, IngestLimits, IngestSummary, ingest
from radlake.storage.store import ObjectStore
from tests.conftest import POSTGRES_URL, SECRET, pydicom_file, s3_options, server_database
from tests.faultproxy import FaultProxy

FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "liver_1frame.dcm", "JPEG2000.dcm"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "in"
    target.mkdir()
    for name in FILES:
        shutil.copy(pydicom_file(name), target / name)
    return target


def _run(
    folder: Path, engine: Engine, store: ObjectStore, retry: float, workers: int = 1
) -> IngestSummary:
    return ingest(
        [folder],
        engine=engine,
        store=store,
        pseudonymizer=Pseudonymizer(SECRET),
        executor=SerialExecutor() if workers == 1 else default_executor(workers),
        limits=IngestLimits(retry_seconds=retry),
    )


def _counts(engine: Engine) -> tuple[int, int]:
    with session_factory(engine)() as session:
        images = session.scalar(select(func.count(Image.id))) or 0
        quarantined = session.scalar(select(func.count(Quarantine.id))) or 0
    return images, quarantined


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    url = make_url(s3_endpoint.replace("http://", "postgresql://"))  # host and port only
    with FaultProxy((str(url.host), int(url.port or 80))) as proxy:
        yield proxy


def _s3_store(bucket: str, proxy: FaultProxy, retry: float) -> ObjectStore:
    options = s3_options(f"http://127.0.0.1:{proxy.port}")
    return ObjectStore(f"s3://{bucket}/lake", retry_seconds=retry, **options)


def test_a_short_s3_outage_is_ridden_out(
    folder: Path, lake_engine: Engine, s3_bucket: str, s3_proxy: FaultProxy
) -> None:
    store = _s3_store(s3_bucket, s3_proxy, retry=20)
    s3_proxy.set_mode("reset", connections=4)  # the next four connections die mid-request
    summary = _run(folder, lake_engine, store, retry=20, workers=2)
    assert (summary.catalogued, summary.quarantined) == (len(FILES), 0)
    assert s3_proxy.counts["reset"] > 0  # the fault really happened


def test_a_dead_store_is_a_fault_not_a_bad_input_and_a_rerun_completes(
    folder: Path, lake_engine: Engine, s3_bucket: str, s3_proxy: FaultProxy
) -> None:
    store = _s3_store(s3_bucket, s3_proxy, retry=2)
    s3_proxy.set_mode("refuse")
    with pytest.raises(IngestFault) as raised:
        _run(folder, lake_engine, store, retry=2)
    message = str(raised.value)
    assert message.startswith("store unreachable") and "nothing lost" in message
    assert "\n" not in message
    assert _counts(lake_engine) == (0, 0)  # no valid image blamed
    with session_factory(lake_engine)() as session:
        assert session.scalars(select(Job.status)).one() == "failed"

    s3_proxy.set_mode("pass")
    summary = _run(folder, lake_engine, store, retry=2)
    assert (summary.catalogued, summary.quarantined) == (len(FILES), 0)


@pytest.fixture
def lake_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[Engine, FaultProxy]]:
    for url in server_database(POSTGRES_URL):
        parsed = make_url(url)
        upgrade_engine = make_engine(url)
        upgrade(upgrade_engine)
        upgrade_engine.dispose()
        with FaultProxy((str(parsed.host), int(parsed.port or 5432))) as proxy:
            engine = make_engine(parsed.set(port=proxy.port).render_as_string(False))
            yield engine, proxy
            engine.dispose()


def test_a_postgresql_outage_is_ridden_out(
    folder: Path, tmp_path: Path, proxied_postgres: tuple[Engine, FaultProxy]
) -> None:
    engine, proxy = proxied_postgres
    store = ObjectStore((tmp_path / "store").as_uri())
    proxy.set_mode("refuse", connections=3)
    summary = _run(folder, engine, store, retry=20)
    assert (summary.catalogued, summary.quarantined) == (len(FILES), 0)
    assert proxy.counts["refuse"] > 0


def test_a_dead_catalog_is_a_fault_and_the_job_is_not_left_running(
    folder: Path, tmp_path: Path, proxied_postgres: tuple[Engine, FaultProxy]
) -> None:
    engine, proxy = proxied_postgres
    store = ObjectStore((tmp_path / "store").as_uri())
    _run(folder, engine, store, retry=2)  # a first job that succeeds
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(pydicom_file("MR_small_RLE.dcm"), extra)
    proxy.set_mode("reset")
    with pytest.raises(IngestFault, match=r"^catalog unreachable .*nothing lost"):
        _run(extra, engine, store, retry=2)

    proxy.set_mode("pass")
    summary = _run(extra, engine, store, retry=2)
    assert (summary.catalogued, summary.quarantined) == (1, 0)
    with session_factory(engine)() as session:
        statuses = list(session.scalars(select(Job.status).order_by(Job.id)))
    # A job the outage stopped is not left "running": it failed, or the next run
    # marked it interrupted.
    assert statuses[0] == statuses[-1] == "succeeded" and "running" not in statuses


def test_verify_against_a_dead_store_is_one_clear_fault(
    folder: Path, lake_engine: Engine, s3_bucket: str, s3_proxy: FaultProxy
) -> None:
    from radlake.errors import StoreUnavailable
    from radlake.pipelines.verify import verify_lake

    store = _s3_store(s3_bucket, s3_proxy, retry=2)
    _run(folder, lake_engine, store, retry=2)
    s3_proxy.set_mode("refuse")
    with pytest.raises(StoreUnavailable, match=r"^store unreachable \(") as raised:
        verify_lake(engine=lake_engine, store=store)
    assert "\n" not in str(raised.value)
