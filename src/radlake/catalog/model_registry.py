"""Every query of the model registry and of predictions (keyword-only, session first).

A model reference is "name" (its production alias, else its newest version),
"name@alias" or "name:version". Aliases move by promote and rollback; each move is
an event, so rollback replays them (a promote pushes a version, a rollback pops
one) and returns the alias to where it pointed before.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from radlake.catalog.db import batches
from radlake.catalog.inference_models import (
    InferenceRun,
    Model,
    ModelAlias,
    ModelAliasEvent,
    ModelVersion,
    Prediction,
)
from radlake.catalog.models import utcnow
from radlake.catalog.upsert import insert_missing
from radlake.domain import Box
from radlake.inference.errors import InferenceError, ModelNotFound
from radlake.storage.keys import model_key

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
DEFAULT_ALIAS = "production"
_REF = re.compile(r"^(?P<name>[^@:]+)(?:@(?P<alias>[^@:]+)|:(?P<version>[^@:]+))?$")


def check_model_name(name: str) -> str:
    """name when it is a model name (it becomes a store key).

    Raises:
        InferenceError: anything else.
    """
    if not MODEL_NAME.match(name):
        raise InferenceError(
            f"expected a model name of lowercase letters, digits, '_', '.', '-' (at most 64), "
            f"got {name[:80]!r}"
        )
    return name


def check_alias(alias: str) -> str:
    """alias when it is an alias name like production or staging.

    Raises:
        InferenceError: anything else.
    """
    if not ALIAS_NAME.match(alias):
        raise InferenceError(
            f"expected an alias like 'production' or 'staging', got {alias[:80]!r}"
        )
    return alias


_MAX_VERSION = 2**31 - 1  # the largest value of a 4-byte INTEGER column


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference: a version number, an alias, or neither (the default)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """ "name", "name@alias" or "name:3".

        Raises:
            InferenceError: any other form.
        """
        match = _REF.match(text.strip())
        if match is None:
            raise InferenceError(
                f"expected a model as NAME, NAME@ALIAS or NAME:VERSION, got {text[:80]!r}"
            )
        name = check_model_name(match["name"])
        if match["alias"] is not None:
            return cls(name, alias=check_alias(match["alias"]))
        if match["version"] is not None:
            # ASCII digits only: "²".isdigit() is true and int("²") raises.
            digits = match["version"]
            if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
                raise InferenceError(
                    f"expected a positive version after ':', got {match['version'][:20]!r}"
                )
            return cls(name, version=int(match["version"]))
        return cls(name)

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        return f"{self.name}:{self.version}" if self.version else self.name


def get_model(session: Session, *, name: str) -> Model:
    """The model called name.

    Raises:
        ModelNotFound: none.
    """
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise ModelNotFound(f"no model {name[:80]!r}: register one with `radlake model register`")
    return model


def resolve_version(session: Session, *, ref: ModelRef | str) -> ModelVersion:
    """The version a reference names (a bare name: its production alias, else its
    newest version).

    Raises:
        InferenceError: a malformed reference.
        ModelNotFound: no such model, version or alias.
    """
    if isinstance(ref, str):
        ref = ModelRef.parse(ref)
    model = get_model(session, name=ref.name)
    statement = select(ModelVersion).options(selectinload(ModelVersion.model))
    if ref.version is not None:
        # A number no integer column holds is no version (the driver raised: a 500).
        found = (
            session.scalar(
                statement.where(
                    ModelVersion.model_id == model.id, ModelVersion.version == ref.version
                )
            )
            if 1 <= ref.version <= _MAX_VERSION
            else None
        )
        if found is None:
            raise ModelNotFound(f"model {ref.name!r} has no version {ref.version}")
        return found
    alias = ref.alias or DEFAULT_ALIAS
    found = session.scalar(
        statement.join(ModelAlias, ModelAlias.version_id == ModelVersion.id).where(
            ModelAlias.model_id == model.id, ModelAlias.alias == alias
        )
    )
    if found is None and ref.alias is None:
        found = session.scalar(
            statement.where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
    if found is None:
        raise ModelNotFound(f"model {ref.name!r} has no alias {alias!r}")
    return found


def same_file_versions(session: Session, *, name: str, sha256: str) -> list[ModelVersion]:
    """Versions of the model name already holding a file with this sha256."""
    return list(
        session.scalars(
            select(ModelVersion)
            .join(Model)
            .where(Model.name == name, ModelVersion.sha256 == sha256)
            .order_by(ModelVersion.version)
        )
    )


def add_version(
    session: Session,
    *,
    name: str,
    sha256: str,
    size_bytes: int,
    contract: dict[str, Any],
    decoder: str,
    class_names: Sequence[str],
    metrics: dict[str, Any] | None = None,
    trained_on_id: int | None = None,
) -> ModelVersion:
    """A new version row (the model row too on its first version), flushed: its
    number is claimed by the unique key before the caller writes the file.

    Raises:
        InferenceError: a bad model name.
    """
    insert_missing(
        session, Model, [{"name": check_model_name(name), "created_at": utcnow()}], key="name"
    )
    # The model row is locked until commit: a concurrent registration of the same
    # model waits here, then reads the version this one claimed (servers; SQLite has
    # one writer at a time anyway).
    model = session.scalars(select(Model).where(Model.name == name).with_for_update()).one()
    newest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    number = (newest or 0) + 1
    version = ModelVersion(
        model_id=model.id,
        version=number,
        store_key=model_key(name, number),
        sha256=sha256,
        size_bytes=size_bytes,
        contract=contract,
        decoder=decoder,
        class_names=list(class_names),
        metrics=metrics or {},
        trained_on_id=trained_on_id,
    )
    session.add(version)
    session.flush()
    version.model = model
    return version


def _alias_history(session: Session, *, model_id: int, alias: str) -> list[int]:
    """The alias's stack of version ids, replayed from its events."""
    stack: list[int] = []
    events = session.execute(
        select(ModelAliasEvent.action, ModelAliasEvent.version_id)
        .where(ModelAliasEvent.model_id == model_id, ModelAliasEvent.alias == alias)
        .order_by(ModelAliasEvent.id)
        .with_for_update()  # a locking read: the latest events (see _alias_row)
    )
    for action, version_id in events:
        if action == "promote":
            stack.append(version_id)
        elif stack:
            stack.pop()
    return stack


def _lock_model(session: Session, *, model: Model) -> None:
    # Alias moves of one model take turns on its row: two first promotes of an alias
    # would otherwise both insert it (a unique-key error on PostgreSQL and MariaDB),
    # and a move must read where the alias points and its history under the lock.
    session.execute(select(Model.id).where(Model.id == model.id).with_for_update())


def _alias_row(session: Session, *, model_id: int, alias: str) -> ModelAlias | None:
    # A locking read: it sees the latest committed row also under MariaDB's
    # REPEATABLE READ, whose plain reads keep the transaction's first snapshot.
    return session.scalar(
        select(ModelAlias)
        .where(ModelAlias.model_id == model_id, ModelAlias.alias == alias)
        .with_for_update()
    )


def _point(
    session: Session, *, model: Model, alias: str, version: ModelVersion, action: str
) -> None:
    row = _alias_row(session, model_id=model.id, alias=alias)
    if row is None:
        session.add(ModelAlias(model_id=model.id, alias=alias, version_id=version.id))
    else:
        row.version_id, row.updated_at = version.id, utcnow()
    session.add(
        ModelAliasEvent(model_id=model.id, alias=alias, action=action, version_id=version.id)
    )
    session.flush()


def promote(session: Session, *, name: str, version: int, alias: str = DEFAULT_ALIAS) -> int | None:
    """Point alias at version; returns the version it pointed at before (None if new).

    Raises:
        InferenceError: a bad alias name.
        ModelNotFound: no such model or version.
    """
    check_alias(alias)
    target = resolve_version(session, ref=ModelRef(name, version=version))
    model = target.model
    _lock_model(session, model=model)
    row = _alias_row(session, model_id=model.id, alias=alias)
    before = None if row is None else session.get_one(ModelVersion, row.version_id).version
    if before == target.version:
        # Already there: no event, or a rollback would "return" to the same version.
        return before
    _point(session, model=model, alias=alias, version=target, action="promote")
    return before


def rollback(session: Session, *, name: str, alias: str = DEFAULT_ALIAS) -> tuple[int, int]:
    """Move alias back to the version it pointed at before its last promote; returns
    (from version, to version).

    Raises:
        InferenceError: the alias has no earlier version to return to.
        ModelNotFound: no such model or alias.
    """
    check_alias(alias)
    model = get_model(session, name=name)
    _lock_model(session, model=model)
    stack = _alias_history(session, model_id=model.id, alias=alias)
    if not stack:
        raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
    if len(stack) < 2:
        raise InferenceError(f"{name}@{alias} has no earlier version to roll back to")
    current, previous = (session.get_one(ModelVersion, vid) for vid in stack[-2:][::-1])
    _point(session, model=model, alias=alias, version=previous, action="rollback")
    return current.version, previous.version


def aliases(session: Session, *, model_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """model id -> alias -> version number."""
    found: dict[int, dict[str, int]] = defaultdict(dict)
    rows = session.execute(
        select(ModelAlias.model_id, ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelAlias.version_id == ModelVersion.id)
        .where(ModelAlias.model_id.in_(model_ids))
        .order_by(ModelAlias.alias)
    )
    for model_id, alias, number in rows:
        found[model_id][alias] = number
    return found


def list_versions(session: Session, *, name: str | None = None) -> list[ModelVersion]:
    """Every version (of one model when name is given), by model name then version.

    Raises:
        ModelNotFound: name is given and no model has it.
    """
    statement = (
        select(ModelVersion)
        .join(Model)
        .options(selectinload(ModelVersion.model), selectinload(ModelVersion.trained_on))
    )
    if name is not None:
        statement = statement.where(ModelVersion.model_id == get_model(session, name=name).id)
    return list(session.scalars(statement.order_by(Model.name, ModelVersion.version)))


@dataclass(frozen=True, slots=True)
class PredictedBox:
    """A box to record, in the stored image's pixels."""

    class_id: int
    class_name: str
    score: float
    box: Box


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run to record: a model version on an image, and what it found."""

    model_version_id: int
    image_id: int
    score_threshold: float
    iou_threshold: float
    latency_ms: float
    caller: str
    boxes: Sequence[PredictedBox]


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """The ids a recorded run got: its own and its boxes' (in the order given)."""

    run_id: int
    prediction_ids: tuple[int, ...]


def record_runs(session: Session, *, runs: Sequence[RunRecord]) -> list[RecordedRun]:
    """Insert the runs and their boxes; returns their ids in order (a reviewer's
    feedback names a box by its prediction id)."""
    rows: list[tuple[InferenceRun, list[Prediction]]] = []
    for run in runs:
        row = InferenceRun(
            model_version_id=run.model_version_id,
            image_id=run.image_id,
            score_threshold=run.score_threshold,
            iou_threshold=run.iou_threshold,
            latency_ms=run.latency_ms,
            caller=run.caller[:100],
        )
        boxes = [
            Prediction(
                run=row,
                class_id=found.class_id,
                class_name=found.class_name,
                score=found.score,
                x_min=found.box.x_min,
                y_min=found.box.y_min,
                x_max=found.box.x_max,
                y_max=found.box.y_max,
            )
            for found in run.boxes
        ]
        session.add(row)
        session.add_all(boxes)
        rows.append((row, boxes))
    # One flush: SQLAlchemy batches the inserts and reads the new ids back.
    session.flush()
    return [RecordedRun(row.id, tuple(box.id for box in boxes)) for row, boxes in rows]


def predicted_image_ids(
    session: Session,
    *,
    model_version_id: int,
    image_ids: Iterable[int],
    score_threshold: float,
    iou_threshold: float,
) -> set[int]:
    """Which of image_ids this version already predicted with these thresholds."""
    done: set[int] = set()
    for chunk in batches(sorted(set(image_ids))):
        # Thresholds are 8-byte reals on every backend (migration 0007): equality is exact.
        done.update(
            session.scalars(
                select(InferenceRun.image_id).where(
                    InferenceRun.model_version_id == model_version_id,
                    InferenceRun.image_id.in_(chunk),
                    InferenceRun.score_threshold == score_threshold,
                    InferenceRun.iou_threshold == iou_threshold,
                )
            )
        )
    return done


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    """A recorded box with its run: what `GET /images/{id}/predictions` lists."""

    run_id: int
    model: str
    version: int
    model_version_id: int
    score_threshold: float
    iou_threshold: float
    prediction_id: int
    class_name: str
    score: float
    box: Box

    def as_dict(self) -> dict[str, Any]:
        box = self.box
        return {
            "run_id": self.run_id,
            "prediction_id": self.prediction_id,
            "model": self.model,
            "version": self.version,
            "model_version_id": self.model_version_id,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "class_name": self.class_name,
            "score": self.score,
            "box": [box.x_min, box.y_min, box.x_max, box.y_max],
        }


def predictions_for_image(
    session: Session, *, image_id: int, model_version_id: int | None = None
) -> list[StoredPrediction]:
    """The boxes of each model version's latest run on the image (of one version when
    given), best score first within a run. These are predictions, never labels."""
    latest = (
        select(func.max(InferenceRun.id).label("run_id"))
        .where(InferenceRun.image_id == image_id)
        .group_by(InferenceRun.model_version_id)
    )
    if model_version_id is not None:
        latest = latest.where(InferenceRun.model_version_id == model_version_id)
    rows = session.execute(
        select(
            InferenceRun.id,
            Model.name,
            ModelVersion.version,
            ModelVersion.id,
            InferenceRun.score_threshold,
            InferenceRun.iou_threshold,
            Prediction.id,
            Prediction.class_name,
            Prediction.score,
            Prediction.x_min,
            Prediction.y_min,
            Prediction.x_max,
            Prediction.y_max,
        )
        .join(Prediction, Prediction.run_id == InferenceRun.id)
        .join(ModelVersion, InferenceRun.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .where(InferenceRun.id.in_(latest))
        .order_by(Model.name, ModelVersion.version, Prediction.score.desc(), Prediction.id)
    )
    return [
        StoredPrediction(run, name, number, version_id, score_t, iou_t, box, cls, score, Box(*xy))
        for run, name, number, version_id, score_t, iou_t, box, cls, score, *xy in rows
    ]


@dataclass(frozen=True, slots=True)
class ImageRun:
    """A model version's latest run on an image (found boxes or not)."""

    run_id: int
    model: str
    version: int
    model_version_id: int
    score_threshold: float
    iou_threshold: float
    latency_ms: float
    caller: str
    created_at: datetime
    boxes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "version": self.version,
            "model_version_id": self.model_version_id,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "latency_ms": self.latency_ms,
            "caller": self.caller,
            "created_at": self.created_at.isoformat(),
            "boxes": self.boxes,
        }


def runs_for_image(session: Session, *, image_id: int) -> list[ImageRun]:
    """Each model version's latest run on the image, also those that found nothing
    (predictions_for_image lists their boxes), by model name and version."""
    latest = (
        select(func.max(InferenceRun.id))
        .where(InferenceRun.image_id == image_id)
        .group_by(InferenceRun.model_version_id)
    )
    boxes = (
        select(Prediction.run_id, func.count(Prediction.id).label("boxes"))
        .where(Prediction.run_id.in_(latest))
        .group_by(Prediction.run_id)
        .subquery()
    )
    rows = session.execute(
        select(
            InferenceRun.id,
            Model.name,
            ModelVersion.version,
            ModelVersion.id,
            InferenceRun.score_threshold,
            InferenceRun.iou_threshold,
            InferenceRun.latency_ms,
            InferenceRun.caller,
            InferenceRun.created_at,
            func.coalesce(boxes.c.boxes, 0),
        )
        .join(ModelVersion, InferenceRun.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .outerjoin(boxes, boxes.c.run_id == InferenceRun.id)
        .where(InferenceRun.id.in_(latest))
        .order_by(Model.name, ModelVersion.version)
    )
    return [ImageRun(*row) for row in rows]
