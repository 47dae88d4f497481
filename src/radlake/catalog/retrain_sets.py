"""Retraining sets in the catalog: their labels (for curation.versions), the feedback
they took, and the lineage of a model version (issue 11, "Lineage").

Lineage runs: model version -> the dataset version it was trained on -> the retrain
set that made that version (if one did) -> the feedback rows it took -> the model
version whose predictions those rows reviewed -> its own training version, and so on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radlake.catalog.db import batches
from radlake.catalog.feedback_models import Feedback, RetrainSet, RetrainSetFeedback
from radlake.catalog.inference_models import Model, ModelVersion
from radlake.catalog.models import Dataset, DatasetVersion, Export, Label
from radlake.domain import Box, Finding, LabelOrigin


def retrain_set_of_version(session: Session, *, version_id: int) -> RetrainSet | None:
    """The retrain set that made a dataset version, if one did."""
    return session.scalar(select(RetrainSet).where(RetrainSet.dataset_version_id == version_id))


def retrain_labels(
    session: Session, *, version_id: int, image_ids: Sequence[int]
) -> tuple[set[int], dict[int, list[Finding]]]:
    """(the reviewed images among image_ids, their feedback-made labels) of the retrain
    set behind a dataset version; nothing when no retrain set made it."""
    made = retrain_set_of_version(session, version_id=version_id)
    if made is None:
        return set(), {}
    reviewed: set[int] = set()
    labels: dict[int, list[Finding]] = defaultdict(list)
    for chunk in batches(image_ids):
        reviewed.update(
            session.scalars(
                select(Feedback.image_id)
                .join(RetrainSetFeedback, RetrainSetFeedback.feedback_id == Feedback.id)
                .where(RetrainSetFeedback.retrain_set_id == made.id, Feedback.image_id.in_(chunk))
                .distinct()
            )
        )
        for row in session.scalars(
            select(Label)
            .where(
                Label.job_id == made.job_id,
                Label.origin == LabelOrigin.FEEDBACK.value,
                Label.image_id.in_(chunk),
            )
            .order_by(Label.image_id, Label.id)
        ):
            assert row.image_id is not None  # selected by image id
            corners = (row.x_min, row.y_min, row.x_max, row.y_max)
            box = None if None in corners else Box(*corners)  # type: ignore[arg-type]
            labels[row.image_id].append(
                Finding(row.image_id, row.class_name, box, row.reader, LabelOrigin.FEEDBACK)
            )
    return reviewed, dict(labels)


@dataclass(frozen=True, slots=True)
class RetrainSetSummary:
    """A retrain set as plain values."""

    id: int
    name: str
    model: str
    model_version: int
    base: str  # dataset@version whose splits it kept
    dataset: str  # dataset@version it made
    store_prefix: str
    parameters: dict[str, Any]
    counts: dict[str, Any]
    feedback_rows: int
    created_at: str
    exported: tuple[str, ...] = ()  # formats written under store_prefix so far

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "model": f"{self.model}:{self.model_version}",
            "base": self.base,
            "dataset": self.dataset,
            "store_prefix": self.store_prefix,
            "parameters": self.parameters,
            "counts": self.counts,
            "feedback_rows": self.feedback_rows,
            "created_at": self.created_at,
            "exported": list(self.exported),
        }


def _version_name(session: Session, version_id: int) -> str:
    name, number = session.execute(
        select(Dataset.name, DatasetVersion.version)
        .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .where(DatasetVersion.id == version_id)
    ).one()
    return f"{name}@{number}"


def summarize(session: Session, made: RetrainSet) -> RetrainSetSummary:
    """One retrain set's summary."""
    model, number = session.execute(
        select(Model.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(ModelVersion.id == made.model_version_id)
    ).one()
    taken = session.scalar(select(func.count()).where(RetrainSetFeedback.retrain_set_id == made.id))
    return RetrainSetSummary(
        id=made.id,
        name=made.name,
        model=model,
        model_version=number,
        base=_version_name(session, made.base_version_id),
        dataset=_version_name(session, made.dataset_version_id),
        store_prefix=made.store_prefix,
        parameters=made.parameters,
        counts=made.counts,
        feedback_rows=int(taken or 0),
        created_at=made.created_at.isoformat(),
        exported=tuple(
            sorted(
                set(
                    session.scalars(
                        select(Export.format).where(Export.version_id == made.dataset_version_id)
                    )
                )
            )
        ),
    )


def list_retrain_sets(session: Session, *, model_version_id: int | None = None) -> list[RetrainSet]:
    """Retrain sets, oldest first (of one reviewed model version when given)."""
    statement = select(RetrainSet).order_by(RetrainSet.id)
    if model_version_id is not None:
        statement = statement.where(RetrainSet.model_version_id == model_version_id)
    return list(session.scalars(statement))


def get_retrain_set(session: Session, *, name: str) -> RetrainSet | None:
    """The set of that name (its timestamp, in either case)."""
    return session.scalar(select(RetrainSet).where(RetrainSet.name == name.strip().lower()))


def taken_feedback_ids(session: Session, *, retrain_set_id: int) -> list[int]:
    """The feedback rows a retrain set took, by id."""
    return list(
        session.scalars(
            select(RetrainSetFeedback.feedback_id)
            .where(RetrainSetFeedback.retrain_set_id == retrain_set_id)
            .order_by(RetrainSetFeedback.feedback_id)
        )
    )


@dataclass
class LineageStep:
    """One model version and what shaped it."""

    model: str
    version: int
    trained_on: str | None  # dataset@version
    retrain_set: RetrainSetSummary | None = None
    feedback: dict[str, int] = field(default_factory=dict)  # verdict -> rows (simulated apart)
    reviewed: str | None = None  # model:version whose predictions the feedback reviewed

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": f"{self.model}:{self.version}",
            "trained_on": self.trained_on,
            "retrain_set": None if self.retrain_set is None else self.retrain_set.as_dict(),
            "feedback": self.feedback,
            "reviewed_model": self.reviewed,
        }


def lineage(session: Session, *, version: ModelVersion, depth: int = 20) -> list[LineageStep]:
    """The chain from a model version back through retrain sets to the first version
    trained on ground truth alone (at most depth steps; a cycle cannot occur, since a
    retrain set only reviews versions that existed before it)."""
    steps: list[LineageStep] = []
    current: ModelVersion | None = version
    while current is not None and len(steps) < depth:
        name = session.scalar(select(Model.name).where(Model.id == current.model_id)) or "?"
        step = LineageStep(
            name,
            current.version,
            None
            if current.trained_on_id is None
            else _version_name(session, current.trained_on_id),
        )
        steps.append(step)
        made = (
            None
            if current.trained_on_id is None
            else retrain_set_of_version(session, version_id=current.trained_on_id)
        )
        if made is None:
            break
        step.retrain_set = summarize(session, made)
        for verdict, simulated, rows in session.execute(
            select(Feedback.verdict, Feedback.simulated, func.count())
            .join(RetrainSetFeedback, RetrainSetFeedback.feedback_id == Feedback.id)
            .where(RetrainSetFeedback.retrain_set_id == made.id)
            .group_by(Feedback.verdict, Feedback.simulated)
        ):
            step.feedback[f"{verdict} (simulated)" if simulated else verdict] = int(rows)
        current = session.get(ModelVersion, made.model_version_id)
        step.reviewed = f"{step.retrain_set.model}:{step.retrain_set.model_version}"
    return steps
