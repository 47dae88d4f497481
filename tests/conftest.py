"""Shared fixtures: real catalogs (SQLite, PostgreSQL, MariaDB), real stores
(file://, memory://, s3:// on a moto server), real sample images."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from radlake.catalog.db import make_engine, normalize_url, upgrade
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.storage.store import ObjectStore, open_store

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADLAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
POSTGRES_URL = os.environ.get(
    "RADLAKE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("RADLAKE_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
SECRET = b"test-secret-key"


def shared(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when the folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (../shared/data is absent)")
    return path


def run_radlake(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `radlake` command as a user runs it, with only RADLAKE_HOME set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pydicom_file(name: str) -> Path:
    """A file bundled with pydicom (always present)."""
    return PYDICOM_FILES / name


def server_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty database on a real server, dropped afterwards."""
    name = f"radlake_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"database server at {admin_url} is not reachable ({exc}); start it first")
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty catalog database on each supported backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    elif request.param == "postgresql":
        yield from server_database(POSTGRES_URL)
    else:
        yield from server_database(MARIADB_URL)


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Engine]:
    """A migrated catalog on each backend."""
    engine = make_engine(catalog_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto's standalone server) on 127.0.0.1."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("moto S3 server did not start within 30 s")
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


def s3_options(endpoint: str) -> dict[str, object]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """A fresh bucket on the S3 server, removed afterwards."""
    import s3fs

    name = f"radlake-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**s3_options(s3_endpoint), skip_instance_cache=True)
    # Not fs.mkdir: it sends LocationConstraint=us-east-1, which S3 rejects.
    fs.call_s3("create_bucket", Bucket=name)
    yield name
    fs.rm(name, recursive=True)


@pytest.fixture(params=["file", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same store interface on a local folder, in memory and on S3."""
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    if request.param == "memory":
        return open_store(f"memory://radlake-{uuid.uuid4().hex[:12]}")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/lake", **s3_options(request.getfixturevalue("s3_endpoint")))


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Lake]:
    """An embedded-default lake: SQLite catalog and a local store in tmp_path."""
    (tmp_path / "lake").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'lake' / 'catalog.sqlite'}")
    upgrade(engine)
    yield Lake(engine, open_store((tmp_path / "lake" / "store").as_uri()), Pseudonymizer(SECRET))
    engine.dispose()
