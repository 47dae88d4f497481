"""Engines, sessions and schema migrations for SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

# Imported for their tables (and, through feedback_models, inference_models'): wherever
# the catalog is used, Base.metadata is complete.
import radlake.catalog.deid_models
import radlake.catalog.feedback_models  # noqa: F401
from radlake.errors import CatalogError, CatalogUnavailable, NotInitialized

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")
DEFAULT_RETRY_SECONDS = 30.0
IN_LIST_SIZE = 500  # IN (...) lists stay well under every backend's parameter limit
WRITE_BATCH = 5000  # rows per multi-row INSERT/UPDATE


def batches(values: Sequence[T], size: int = IN_LIST_SIZE) -> Iterator[Sequence[T]]:
    """Consecutive slices of values, for IN lists and bulk writes."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


def normalize_url(url: str) -> str:
    """Pick the drivers radlake ships (psycopg 3, PyMySQL) when a URL names none."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogError(f"expected a database URL like sqlite:///path, got {url!r}") from exc
    if parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    if parsed.drivername.startswith("mysql") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run during ingest; a busy timeout rides out short locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


CONNECT_TIMEOUT_SECONDS = 10


def make_engine(url: str) -> Engine:
    """An engine for a catalog URL.

    Raises:
        CatalogError: the URL is malformed or names an unavailable driver.
    """
    normalized = normalize_url(url)
    try:
        # Bound values never reach an error message or a log line: they may be
        # patient data (a header value) or a token hash.
        if normalized.startswith("sqlite"):
            engine = create_engine(normalized, hide_parameters=True)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            # READ COMMITTED on MySQL/MariaDB as on PostgreSQL: REPEATABLE READ's
            # snapshot would hide a row another writer committed after our first read,
            # so "insert unless present, then read its id" could find nothing.
            options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
            if "connect_timeout" not in make_url(normalized).query:
                # A server that accepts and never answers held each API request (and
                # its thread) forever; now it is a catalog fault after this long.
                options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
            if normalized.startswith("mysql"):
                options["isolation_level"] = "READ COMMITTED"
            engine = create_engine(normalized, **options)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise CatalogError(f"cannot use catalog URL: {exc}") from exc
    return engine


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for servers and in-memory databases)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Create or upgrade the catalog schema to the newest migration.

    Raises:
        CatalogError: the database cannot be reached or migrated.
    """
    try:
        command.upgrade(_alembic_config(engine), "head")
    except SQLAlchemyError as exc:
        # Two `radlake init` at once: the one that lost the race finds the schema made.
        with contextlib.suppress(CatalogError):
            check_current(engine)
            return
        raise CatalogError(f"cannot migrate catalog: {_short(exc)}") from exc


def check_current(engine: Engine) -> None:
    """Make sure the catalog exists and is at the newest migration.

    Raises:
        NotInitialized: no catalog there yet (run `radlake init`).
        CatalogError: the database is unreachable or at an older schema.
    """
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise CatalogError(f"cannot reach catalog: {_short(exc)}") from exc
    if current is None:
        raise NotInitialized("no catalog here yet: run `radlake init` first")
    if current != head:
        raise CatalogError(f"catalog schema is at {current}, expected {head}: run `radlake init`")


def _short(exc: SQLAlchemyError) -> str:
    # The first line of the driver's message, without SQL or bound parameters.
    original = getattr(exc, "orig", None) or exc
    return str(original).splitlines()[0][:200]


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to engine; objects stay usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with session_factory(engine).begin() as session:
        yield session


def is_transient(exc: BaseException) -> bool:
    """A fault worth retrying: the server went away, a lock or deadlock, a timeout.

    OperationalError covers lost connections on every driver, PostgreSQL
    serialization failures and deadlocks, MySQL lock waits and deadlocks, and
    SQLite's "database is locked"; constraint and data errors are never transient.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def run_transaction(
    engine: Engine,
    work: Callable[[Session], T],
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> T:
    """Run work(session) in one transaction, re-running the whole transaction on
    transient faults with bounded exponential backoff.

    Raises:
        CatalogUnavailable: the fault outlasted retry_seconds.
    """

    def once() -> T:
        with transaction(engine) as session:
            return work(session)

    return retry_transient(once, retry_seconds=retry_seconds)


def retry_transient(work: Callable[[], T], *, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> T:
    """Run work() again from the start on transient catalog faults, with bounded
    exponential backoff; work must be safe to repeat (one transaction, say).

    Raises:
        CatalogUnavailable: the fault outlasted retry_seconds.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(retry_seconds),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.1),
        reraise=True,
    )
    try:
        return retrying(work)
    except SQLAlchemyError as exc:
        if is_transient(exc):
            raise CatalogUnavailable(f"catalog unreachable ({_short(exc)})") from exc
        raise
