"""Settings read from RADLAKE_* environment variables; only entry points read them.

Core functions take explicit arguments (a catalog URL, a store, a key); the CLI and,
later, the API and flows build those from one `Settings` instance.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from radlake.errors import ConfigError
from radlake.flows.cron import CronError, check_cron

SECRET_KEY_FILE = "secret.key"  # noqa: S105 (a file name, not a secret)
CATALOG_FILE = "catalog.sqlite"
STORE_DIR = "store"


# A web origin as browsers send it (RFC 6454): scheme://host[:port], nothing after.
ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(:[0-9]{1,5})?")


class Settings(BaseSettings):
    """Where the lake lives and how to reach its parts."""

    model_config = SettingsConfigDict(env_prefix="RADLAKE_", extra="ignore")

    home: Path = Path("radlake-data")
    catalog_url: str | None = None
    store_url: str | None = None
    secret_key: SecretStr | None = None
    # Options for an s3:// store (any S3-compatible server).
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str | None = None
    # Limits that keep one hostile input from taking the machine (issue 7). The
    # defaults suit a 2-core, 24 GB machine running two workers and the API.
    # Upper bounds keep a typo from disabling the limit (or overflowing a timer).
    max_decoded_mb: int = Field(default=1024, ge=1, le=65536)  # pixels one input decodes to
    max_input_mb: int = Field(default=2048, ge=1, le=1048576)  # bytes of one input or upload
    file_seconds: int = Field(default=300, ge=1, le=86400)  # one input's time in a worker
    retry_seconds: float = Field(default=30.0, ge=0, le=3600)  # how long faults are retried
    # Where per-input work runs (issue 12): "local" (the default, a process pool),
    # "dask-local" (a Dask LocalCluster started per command) or "dask://HOST:PORT" (a
    # running Dask scheduler). The --executor option of ingest and `source` overrides it.
    executor: str | None = None
    # De-identification (issue 13, PS3.15 Annex E). The options of E.3 the lake applies;
    # where the burned-in text check runs ("flagged": images whose header or modality
    # suggests text, "all", "off"); and whether ingest de-identifies each new DICOM image
    # as it is catalogued (else `radlake deid run` or the first request does it).
    deid_on_ingest: bool = False
    deid_pixel_check: Literal["flagged", "all", "off"] = "flagged"
    deid_retain_dates: bool = False  # Retain Longitudinal Temporal Information (shifted)
    deid_retain_patient_characteristics: bool = False
    deid_clean_descriptors: bool = False
    # `radlake pull --dicomweb`: a bearer token for a secured server (another radlake's
    # /dicomweb, say); from the environment, never a command-line argument (ps shows those).
    pull_dicomweb_token: SecretStr | None = None
    # Origins of web viewers (OHIF, say) allowed to call /dicomweb from the browser:
    # a JSON list, e.g. RADLAKE_DICOMWEB_CORS_ORIGINS='["http://localhost:3000"]'.
    dicomweb_cors_origins: list[str] = Field(default_factory=list)

    @field_validator("dicomweb_cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        # A browser sends its origin as scheme://host[:port] exactly: anything else
        # (a trailing slash, a path) would never match, and no viewer would be let in.
        for origin in origins:
            if not ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin[:80]!r} is not an origin: expected scheme://host[:port], "
                    "no path or trailing slash"
                )
        return origins

    # Web security (issue 8). A web sign-in lasts this long unless signed out first.
    web_session_hours: float = Field(default=12.0, gt=0, le=720)
    # `radlake serve`: a request's headers, and its body's first part, must arrive within
    # request_timeout seconds; each request_min_rate bytes of body earn one more second
    # (Apache mod_reqtimeout's rule), so a slow upload passes and a trickle is cut off.
    request_timeout: float = Field(default=30.0, gt=0, le=3600)
    request_min_rate: int = Field(default=500, ge=1, le=1 << 30)  # bytes per second
    keep_alive_seconds: int = Field(default=5, ge=1, le=300)  # idle time between requests
    # --- Prefect schedules (issue 12; radlake.flows, `radlake flows serve`) ---------------
    # A cron string per flow (5 fields or @daily, in schedule_timezone), with the
    # parameters its scheduled run uses; unset: not scheduled. Checked here, at load.
    schedule_timezone: str = "UTC"
    schedule_ingest: str | None = None
    schedule_ingest_folder: Path | None = None  # required by schedule_ingest
    schedule_ingest_source: str = "folder"
    schedule_predict: str | None = None
    schedule_predict_model: str | None = None  # required by schedule_predict
    schedule_predict_dataset: str | None = None  # required by schedule_predict
    schedule_predict_split: str | None = None  # default: every split
    schedule_retrain_set: str | None = None
    schedule_retrain_set_model: str | None = None  # required by schedule_retrain_set
    schedule_backup: str | None = None
    schedule_backup_to: str | None = None  # default: backups/ in the lake's store
    schedule_backup_keep: int | None = Field(default=None, ge=1)  # default: keep all
    schedule_warehouse: str | None = None
    schedule_warehouse_format: Literal["parquet", "jsonl"] = "parquet"
    schedule_mart: str | None = None
    schedule_mart_dataset: str | None = None  # required by schedule_mart (newest version)
    schedule_mart_to: str | None = None  # required by schedule_mart (a folder or s3://...)
    schedule_mart_format: Literal["coco", "yolo"] | None = None  # required by schedule_mart
    # I/O steps of a flow retry store and catalog faults this often, this far apart
    # (after the store's and catalog's own retry_seconds ran out).
    flow_retries: int = Field(default=3, ge=0, le=100)
    flow_retry_delay_seconds: float = Field(default=60.0, ge=0, le=86400)
    # Scheduled flows (RADLAKE_SCHEDULE_<NAME>) -> the parameters each requires.
    SCHEDULE_PARAMETERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "ingest": ("folder",),
        "predict": ("model", "dataset"),
        "retrain_set": ("model",),
        "backup": (),
        "warehouse": (),
        "mart": ("dataset", "to", "format"),
    }

    @model_validator(mode="after")
    def _check_schedules(self) -> Settings:
        # ConfigError, not ValueError: pydantic would wrap a ValueError as "Value error, ..."
        # and lose the variable's name for the cross-field checks.
        try:
            ZoneInfo(self.schedule_timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise ConfigError(
                "bad setting RADLAKE_SCHEDULE_TIMEZONE: expected an IANA zone like "
                f"Europe/Paris, got {self.schedule_timezone[:40]!r}"
            ) from None
        for name, needs in self.SCHEDULE_PARAMETERS.items():
            cron = getattr(self, f"schedule_{name}")
            if cron is None:
                continue
            try:
                setattr(self, f"schedule_{name}", check_cron(cron))
            except CronError as exc:
                raise ConfigError(f"bad setting RADLAKE_SCHEDULE_{name.upper()}: {exc}") from None
            missing = [n for n in needs if getattr(self, f"schedule_{name}_{n}") is None]
            if missing:
                raise ConfigError(
                    f"RADLAKE_SCHEDULE_{name.upper()} is set but "
                    f"RADLAKE_SCHEDULE_{name.upper()}_{missing[0].upper()} is not "
                    "(the scheduled run needs it)"
                )
        return self

    # --- end of Prefect schedules ----------------------------------------------------------

    def web_session_lifetime(self) -> timedelta:
        """How long a web sign-in lasts."""
        return timedelta(hours=self.web_session_hours)

    def resolved_catalog_url(self) -> str:
        """The catalog URL, defaulting to a SQLite file in the lake's home."""
        if self.catalog_url:
            return self.catalog_url
        return f"sqlite:///{self.home.resolve() / CATALOG_FILE}"

    def resolved_store_url(self) -> str:
        """The store URL, defaulting to a folder in the lake's home."""
        if self.store_url:
            return self.store_url
        # Not Path.as_uri(): fsspec does not unquote file URLs, so a home named
        # "my lake" would keep its store in a folder named "my%20lake".
        return f"file://{self.home.resolve() / STORE_DIR}"

    def store_options(self) -> dict[str, object]:
        """fsspec options for the store (credentials and endpoint for s3://)."""
        if not self.resolved_store_url().startswith("s3://"):
            return {}
        options: dict[str, object] = {}
        if self.s3_access_key_id:
            options["key"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            options["secret"] = self.s3_secret_access_key.get_secret_value()
        client_kwargs: dict[str, str] = {}
        if self.s3_endpoint_url:
            client_kwargs["endpoint_url"] = self.s3_endpoint_url
        if self.s3_region:
            client_kwargs["region_name"] = self.s3_region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return options

    def secret_key_bytes(self) -> bytes:
        """The key for patient pseudonyms: RADLAKE_SECRET_KEY, else the one `init` kept.

        Raises:
            ConfigError: no key is set and none was kept in the home folder.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        key_file = self.home / SECRET_KEY_FILE
        try:
            return key_file.read_text().strip().encode()
        except FileNotFoundError:
            raise ConfigError(
                f"no secret key: set RADLAKE_SECRET_KEY or run `radlake init` (expected {key_file})"
            ) from None

    def ensure_secret_key(self) -> bool:
        """Generate and keep a secret key in home unless one is set; True when created."""
        if self.secret_key is not None:
            return False
        key_file = self.home / SECRET_KEY_FILE
        if key_file.exists():
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        # Owner-only permissions: the key turns PatientIDs into pseudonyms.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        return True
