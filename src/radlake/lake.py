"""A lake's parts (catalog engine, store, pseudonymizer) built from settings.

Entry points (CLI, later the API and flows) call these; pipelines receive the parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy import Engine

from radlake.catalog.db import check_current, make_engine, sqlite_file, upgrade
from radlake.config import Settings
from radlake.errors import ConfigError, NotInitialized, StorageError
from radlake.imaging.budget import MIB
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.deid_profile import DeidOptions
from radlake.pipelines.deidentify import DeidPolicy
from radlake.pipelines.ingest import IngestLimits
from radlake.storage.store import ObjectStore, open_store


@dataclass(frozen=True, slots=True)
class Lake:
    engine: Engine
    store: ObjectStore
    pseudonymizer: Pseudonymizer
    limits: IngestLimits = field(default_factory=IngestLimits)
    deid: DeidPolicy = field(default_factory=DeidPolicy)


def ingest_limits(settings: Settings) -> IngestLimits:
    """The per-input limits and the fault retry time the settings ask for."""
    return IngestLimits(
        max_decoded_bytes=settings.max_decoded_mb * MIB,
        max_input_bytes=settings.max_input_mb * MIB,
        file_seconds=settings.file_seconds,
        retry_seconds=settings.retry_seconds,
    )


def deid_policy(settings: Settings) -> DeidPolicy:
    """How the settings ask the lake to de-identify."""
    options = DeidOptions(
        retain_longitudinal_modified_dates=settings.deid_retain_dates,
        retain_patient_characteristics=settings.deid_retain_patient_characteristics,
        clean_descriptors=settings.deid_clean_descriptors,
    )
    return DeidPolicy(options, settings.deid_pixel_check, settings.deid_on_ingest)


def load_settings() -> Settings:
    """Settings from RADLAKE_* variables.

    Raises:
        ConfigError: a variable holds a value of the wrong kind.
    """
    try:
        return Settings()
    except SettingsError as exc:  # a list or mapping that is not JSON
        named = re.search(r'field "([^"]+)"', str(exc))
        name = f"RADLAKE_{named.group(1).upper()}" if named else "a RADLAKE_ variable"
        raise ConfigError(
            f'bad setting {name}: expected JSON (a list is written \'["a", "b"]\')'
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"bad setting RADLAKE_{field.upper()}: {first['msg']}") from None


def init_lake(settings: Settings) -> tuple[Lake, bool]:
    """Create (or upgrade) the lake; returns it and whether a secret key was generated.

    Raises:
        CatalogError, StorageError: the catalog or the store cannot be reached.
    """
    created_key = settings.ensure_secret_key()
    database = sqlite_file(settings.resolved_catalog_url())
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_catalog_url())
    upgrade(engine)
    store = open_store(
        settings.resolved_store_url(),
        retry_seconds=settings.retry_seconds,
        **settings.store_options(),
    )
    lake = Lake(
        engine,
        store,
        Pseudonymizer(settings.secret_key_bytes()),
        ingest_limits(settings),
        deid_policy(settings),
    )
    return lake, created_key


def open_lake(settings: Settings) -> Lake:
    """The existing lake described by settings.

    Raises:
        NotInitialized: no lake there yet.
        ConfigError, CatalogError, StorageError: a part is missing or unreachable.
    """
    database = sqlite_file(settings.resolved_catalog_url())
    if database is not None and not database.is_file():
        # Connecting would create an empty file: a read must leave nothing behind.
        raise NotInitialized(f"no catalog at {database}: run `radlake init` first")
    engine = make_engine(settings.resolved_catalog_url())
    check_current(engine)
    store = open_store(
        settings.resolved_store_url(),
        retry_seconds=settings.retry_seconds,
        **settings.store_options(),
    )
    return Lake(
        engine,
        store,
        Pseudonymizer(settings.secret_key_bytes()),
        ingest_limits(settings),
        deid_policy(settings),
    )


def store_url_for(text: str, option: str = "--to") -> str:
    """A folder path, file:// or s3:// URL given by a user, as a store URL.

    Raises:
        ConfigError: another kind of URL, an empty one, or a path to a file (named
            after `option`).
    """
    expected = f"expected {option} DIR or s3://bucket/prefix"
    if not text.strip():
        raise ConfigError(f"{expected}, got an empty value")
    scheme, separator, rest = text.partition("://")
    if not separator:
        folder = Path(text).expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{expected}, got {text[:200]!r}, which is a file")
        # Not Path.as_uri(): fsspec does not unquote file URLs, so a folder named
        # "my backups" would become one named "my%20backups".
        return f"file://{folder}"
    if scheme == "s3" and rest.split("/", 1)[0]:
        return text.rstrip("/")
    if scheme == "file":
        return text
    raise ConfigError(f"{expected}, got a {scheme[:20]!r} URL")


def open_store_at(settings: Settings, url: str) -> ObjectStore:
    """A store other than the lake's (a mart, a backup target) reached like the lake's:
    with its S3 settings (endpoint, keys, region) and fault retry time.

    Raises:
        StorageError: the store cannot be opened.
    """
    options = settings.model_copy(update={"store_url": url}).store_options()
    try:
        return open_store(url, retry_seconds=settings.retry_seconds, **options)
    except FileNotFoundError as exc:
        # The store passes "missing" through for its callers; a folder that cannot be
        # created (a parent in /proc, a vanished mount) is this caller's error.
        raise StorageError(f"cannot create the folder of {url[:200]}: {exc.strerror}") from None
