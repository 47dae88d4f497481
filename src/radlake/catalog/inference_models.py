"""Catalog tables of the detection half (issue 10, DESIGN.md data model).

model -> model_version (the ONNX file in the store, its sha256, input contract,
decoder, class names, metrics, the dataset version it was trained on);
model_alias (production, staging, ...: the version each name points to now) and
model_alias_event (every move, so a rollback knows where the alias was before);
inference_run (one model version on one image, with its thresholds, latency and
caller) -> prediction (its boxes, in the stored image's pixels).

Predictions live here, never in `label`: ground truth stays what readers said.
The module sits beside catalog/models.py on the same Base; catalog.db imports it,
so the metadata Alembic and the tests compare is always complete.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from radlake.catalog.models import SHA256, Base, DatasetVersion, Id, Real, utcnow


class Model(Base):
    """A named detector; its files are its versions."""

    __tablename__ = "model"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """One registered ONNX file of a model and how to run it."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    version: Mapped[int]
    store_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(SHA256, index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The input contract (size, resize, channels, scale, mean, std, pad value).
    contract: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decoder: Mapped[str] = mapped_column(String(40))
    # Output class index -> name, in the model's own order.
    class_names: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trained_on_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_version.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[Model] = relationship()
    trained_on: Mapped[DatasetVersion | None] = relationship()


class ModelAlias(Base):
    """Where an alias (production, staging, ...) of a model points now."""

    __tablename__ = "model_alias"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    alias: Mapped[str] = mapped_column(String(40))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[ModelVersion] = relationship()


class ModelAliasEvent(Base):
    """One move of an alias: a promote pushes a version, a rollback pops one."""

    __tablename__ = "model_alias_event"
    __table_args__ = (Index("ix_model_alias_event_alias", "model_id", "alias"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    alias: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(20))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InferenceRun(Base):
    """One model version run on one image: thresholds, latency, who asked, when."""

    __tablename__ = "inference_run"
    __table_args__ = (Index("ix_inference_run_version_image", "model_version_id", "image_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    score_threshold: Mapped[float] = mapped_column(Real)
    iou_threshold: Mapped[float] = mapped_column(Real)
    latency_ms: Mapped[float] = mapped_column(Real)
    caller: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model_version: Mapped[ModelVersion] = relationship()


class Prediction(Base):
    """A predicted box of a run, in the stored image's pixel coordinates."""

    __tablename__ = "prediction"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("inference_run.id", ondelete="CASCADE"), index=True
    )
    class_id: Mapped[int]
    class_name: Mapped[str] = mapped_column(String(100))
    score: Mapped[float] = mapped_column(Real)
    x_min: Mapped[float] = mapped_column(Real)
    y_min: Mapped[float] = mapped_column(Real)
    x_max: Mapped[float] = mapped_column(Real)
    y_max: Mapped[float] = mapped_column(Real)
    run: Mapped[InferenceRun] = relationship()
