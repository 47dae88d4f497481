"""Catalog tables of the feedback loop (issue 11, DESIGN.md data model).

feedback: a reviewer's verdict on a predicted box (accept, reject, correct) or a box
the model missed (add), tied to the inference run the reviewer saw, so the model
version whose predictions it reviewed is always known. A verdict is the label it
yields: class and box for accept/correct/add, none for reject. Simulated feedback
(the traffic simulator's reviewer) is marked as such in the row itself.

retrain_set: feedback of one model version made into a label set (label rows of
origin "feedback", tied through the set's job) and a new dataset version, with the
feedback rows it took (retrain_set_feedback): the lineage from a retrained model
back to the verdicts and the model version they reviewed.

Feedback never mixes with ground truth: only a retrain set's dataset version reads
it, through curation.versions.version_findings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from radlake.catalog.inference_models import InferenceRun, ModelVersion, Prediction
from radlake.catalog.models import SHA256, Base, DatasetVersion, Id, Real, utcnow


class Feedback(Base):
    """One verdict of a reviewer on one predicted box, or one box the model missed."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_version_created", "model_version_id", "created_at"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("inference_run.id", ondelete="CASCADE"), index=True
    )
    # Empty for an added box (the model did not find it).
    prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("prediction.id", ondelete="CASCADE"), index=True
    )
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    verdict: Mapped[str] = mapped_column(String(10))
    # The label the verdict yields (accept: the predicted one; correct, add: the
    # reviewer's); empty for reject.
    class_name: Mapped[str | None] = mapped_column(String(100))
    x_min: Mapped[float | None] = mapped_column(Real)
    y_min: Mapped[float | None] = mapped_column(Real)
    x_max: Mapped[float | None] = mapped_column(Real)
    y_max: Mapped[float | None] = mapped_column(Real)
    # The model's score of the reviewed prediction (empty for an added box).
    confidence: Mapped[float | None] = mapped_column(Real)
    reviewer: Mapped[str] = mapped_column(String(100))
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    channel: Mapped[str] = mapped_column(String(20))  # api, web, simulator, import
    # Makes a repeated request a no-op: a verdict per (prediction, reviewer), an
    # added box per (run, reviewer, class, box), an imported file's box per its bytes.
    fingerprint: Mapped[str] = mapped_column(SHA256, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    run: Mapped[InferenceRun] = relationship()
    prediction: Mapped[Prediction | None] = relationship()
    model_version: Mapped[ModelVersion] = relationship()


class RetrainSet(Base):
    """Feedback on one model version made into a label set and a dataset version."""

    __tablename__ = "retrain_set"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)  # its UTC timestamp
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), index=True)
    # The version whose splits it keeps, and the version it made.
    base_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_version.id"))
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_version.id"), unique=True)
    # The job its label rows carry (label.job_id).
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    store_prefix: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model_version: Mapped[ModelVersion] = relationship()
    dataset_version: Mapped[DatasetVersion] = relationship(foreign_keys=[dataset_version_id])
    base_version: Mapped[DatasetVersion] = relationship(foreign_keys=[base_version_id])


class RetrainSetFeedback(Base):
    """A feedback row a retrain set took."""

    __tablename__ = "retrain_set_feedback"
    retrain_set_id: Mapped[int] = mapped_column(
        ForeignKey("retrain_set.id", ondelete="CASCADE"), primary_key=True
    )
    feedback_id: Mapped[int] = mapped_column(
        ForeignKey("feedback.id", ondelete="CASCADE"), primary_key=True, index=True
    )
