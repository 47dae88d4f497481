"""Catalog tables (DESIGN.md data model, the part the foundation needs).

patient (keyed pseudonym only) -> study -> series -> image -> rendition; source;
job; quarantine. Created and upgraded by Alembic (migrations/), never create_all
in production paths.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.mysql import DOUBLE
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT ids on servers; SQLite needs INTEGER PRIMARY KEY to autoincrement.
Id = BigInteger().with_variant(Integer(), "sqlite")
UID = String(64)  # PS3.5 9.1: a UID is at most 64 characters
SHA256 = String(64)
# A real number in 8 bytes everywhere: MySQL/MariaDB's plain FLOAT is 4 bytes (about six
# digits: a box at 1234.5678 px read back as 1234.57); PostgreSQL's FLOAT and SQLite's
# REAL already are 8.
Real = Float().with_variant(DOUBLE(asdecimal=False), "mysql", "mariadb")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite and MySQL drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("expected a timezone-aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name != "postgresql" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, timezone-aware."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Source(Base):
    """Where images came from: a folder, a dataset adapter, later a PACS."""

    __tablename__ = "source"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Patient(Base):
    """A patient known only by a keyed pseudonym (HMAC of PatientID)."""

    __tablename__ = "patient"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    __tablename__ = "study"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    patient: Mapped[Patient | None] = relationship()


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("study.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None]
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    study: Mapped[Study | None] = relationship()


class Image(Base):
    """One original object: a DICOM instance, a NIfTI volume, a PNG or JPEG."""

    __tablename__ = "image"
    __table_args__ = (
        Index("ix_image_series_order", "series_id", "instance_number", "slice_position"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sha256: Mapped[str] = mapped_column(SHA256, unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16), index=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"), index=True)
    # Text: input paths may be longer than any VARCHAR (PATH_MAX is 4096 bytes).
    source_key: Mapped[str] = mapped_column(Text)
    original_key: Mapped[str] = mapped_column(String(200))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"))
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    instance_number: Mapped[int | None]
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(32))
    manufacturer: Mapped[str | None] = mapped_column(String(100), index=True)
    manufacturer_model: Mapped[str | None] = mapped_column(String(100))
    rows: Mapped[int]
    columns: Mapped[int]
    frames: Mapped[int] = mapped_column(default=1)
    slices: Mapped[int] = mapped_column(default=1)
    volumes: Mapped[int] = mapped_column(default=1)
    pixel_spacing_row: Mapped[float | None] = mapped_column(Real)
    pixel_spacing_col: Mapped[float | None] = mapped_column(Real)
    slice_thickness: Mapped[float | None] = mapped_column(Real)
    slice_location: Mapped[float | None] = mapped_column(Real)
    slice_position: Mapped[float | None] = mapped_column(Real)
    photometric: Mapped[str | None] = mapped_column(String(32))
    bits_allocated: Mapped[int | None]
    bits_stored: Mapped[int | None]
    transfer_syntax: Mapped[str | None] = mapped_column(String(128))
    dtype: Mapped[str | None] = mapped_column(String(32))
    orientation: Mapped[str | None] = mapped_column(String(8))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set whenever the row changes in place (an ORM flush; bulk updates set it
    # themselves), so caches of the catalog can see such a change.
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow, index=True)

    series: Mapped[Series | None] = relationship()
    source: Mapped[Source] = relationship()
    renditions: Mapped[list[Rendition]] = relationship(
        back_populates="image", order_by="Rendition.name"
    )


class Rendition(Base):
    """A derived picture of an image kept in the store (the ingest preview, ...)."""

    __tablename__ = "rendition"
    __table_args__ = (UniqueConstraint("image_id", "name"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    width: Mapped[int]
    height: Mapped[int]
    window_center: Mapped[float | None] = mapped_column(Real)
    window_width: Mapped[float | None] = mapped_column(Real)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    image: Mapped[Image] = relationship(back_populates="renditions")


class Job(Base):
    """One run of a pipeline: what it was asked, how it went, what it counted."""

    __tablename__ = "job"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None] = mapped_column(Real)
    error: Mapped[str | None] = mapped_column(Text)


class Quarantine(Base):
    """An input that could not be catalogued, with a reason a person can act on."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # sha256 of (source key, content sha256): one row per input, however often re-run.
    fingerprint: Mapped[str] = mapped_column(SHA256, unique=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"), index=True)
    # Text: input paths may be longer than any VARCHAR (PATH_MAX is 4096 bytes).
    source_key: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(SHA256, index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(500))
    stored_key: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the same bytes, or a fixed file at the same path, got catalogued later:
    # quarantine lists what still needs a person, the row keeps the history.
    resolved_at: Mapped[datetime | None]
    source: Mapped[Source] = relationship()


class LabelClass(Base):
    """A source's taxonomy: class ids and names as the dataset defines them."""

    __tablename__ = "label_class"
    __table_args__ = (UniqueConstraint("source_id", "name"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"))
    class_id: Mapped[int | None]
    name: Mapped[str] = mapped_column(String(100))


class Label(Base):
    """An image-level finding or a box, in the stored image's pixel coordinates.

    image_id is empty while the labelled image has not arrived (a labels-only CSV);
    source_image_key ties the row to the image once it is ingested.
    """

    __tablename__ = "label"
    __table_args__ = (Index("ix_label_source_key", "source_id", "source_image_key"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"))
    source_image_key: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[int | None] = mapped_column(
        ForeignKey("image.id", ondelete="CASCADE"), index=True
    )
    class_name: Mapped[str] = mapped_column(String(100), index=True)
    class_id: Mapped[int | None]
    reader: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(20))
    confidence: Mapped[float | None] = mapped_column(Real)
    x_min: Mapped[float | None] = mapped_column(Real)
    y_min: Mapped[float | None] = mapped_column(Real)
    x_max: Mapped[float | None] = mapped_column(Real)
    y_max: Mapped[float | None] = mapped_column(Real)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Dataset(Base):
    """A named, versioned selection of images for training."""

    __tablename__ = "dataset"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetVersion(Base):
    """An immutable version: selection, split spec, seed, label set, members, hash."""

    __tablename__ = "dataset_version"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id"))
    version: Mapped[int]
    selection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    split_spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int]
    label_set: Mapped[str] = mapped_column(String(20))
    fusion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    classes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    leakage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest_hash: Mapped[str] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dataset: Mapped[Dataset] = relationship()


class DatasetMember(Base):
    """One image of a dataset version and the split it is in."""

    __tablename__ = "dataset_member"
    __table_args__ = (Index("ix_dataset_member_split", "version_id", "split"),)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), primary_key=True)
    split: Mapped[str] = mapped_column(String(40))


class Export(Base):
    """A YOLO or COCO export of a dataset version, where it went and its manifest hash."""

    __tablename__ = "export"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_version.id"))
    format: Mapped[str] = mapped_column(String(20))  # "classification" is 14
    location: Mapped[str] = mapped_column(String(1024))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest_hash: Mapped[str] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An API token: only its SHA-256 is kept; the token itself is shown once."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(SHA256, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class WebSession(Base):
    """A web page sign-in: the cookie holds a random id, only its SHA-256 is kept here,
    with the SHA-256 of the CSRF token that the session's pages send back on writes."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_token.id"), index=True)
    session_hash: Mapped[str] = mapped_column(SHA256, unique=True)
    csrf_hash: Mapped[str] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who read or changed what, and when (downloads, uploads, token changes)."""

    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_token.id"), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40), index=True)
    target: Mapped[str] = mapped_column(String(500))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Cohort(Base):
    """A saved, named query (a filter), e.g. `notumor_ax`."""

    __tablename__ = "cohort"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    selection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
