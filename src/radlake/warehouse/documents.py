"""One nested document per image, read from the catalog in batches.

A document holds the image's catalogued fields, its series, study and patient (the
keyed pseudonym only: the catalog holds no raw PatientID or name), its source, its
renditions (store keys), labels (with the label set a retrain set made of them),
inference runs and predicted boxes, reviewers' feedback and dataset memberships.
Each batch of image ids costs seven queries, whatever the batch's size.

Left out on purpose: the source key (an input path; archives name folders after
patients, api/privacy.py) and the source key copy some adapters keep in the
image's attributes. The attributes are otherwise kept, as JSON text: they hold
acquisition technique and the sources' non-identifying clinical columns (PS3.15
"Retain Patient Characteristics": sex and age), never identity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
from sqlalchemy import Select, Text, and_, select, type_coerce
from sqlalchemy.orm import Session

from radlake.catalog.feedback_models import Feedback, RetrainSet
from radlake.catalog.inference_models import InferenceRun, Model, ModelVersion, Prediction
from radlake.catalog.models import (
    Dataset,
    DatasetMember,
    DatasetVersion,
    Image,
    Label,
    Patient,
    Rendition,
    Series,
    Source,
    Study,
)
from radlake.domain import LabelOrigin

TIME = pa.timestamp("us", tz="UTC")
BOX = pa.struct(
    [
        ("x_min", pa.float64()),
        ("y_min", pa.float64()),
        ("x_max", pa.float64()),
        ("y_max", pa.float64()),
    ]
)
SOURCE = pa.struct([("id", pa.int64()), ("name", pa.string()), ("kind", pa.string())])
SERIES = pa.struct(
    [
        ("id", pa.int64()),
        ("series_uid", pa.string()),
        ("series_number", pa.int64()),
        ("modality", pa.string()),
        ("description", pa.string()),
    ]
)
STUDY = pa.struct([("id", pa.int64()), ("study_uid", pa.string())])
PATIENT = pa.struct([("id", pa.int64()), ("pseudonym", pa.string())])
RENDITION = pa.struct(
    [("name", pa.string()), ("key", pa.string()), ("width", pa.int64()), ("height", pa.int64())]
)
LABEL = pa.struct(
    [
        ("id", pa.int64()),
        ("class_name", pa.string()),
        ("class_id", pa.int64()),
        ("box", BOX),
        ("reader", pa.string()),
        ("origin", pa.string()),
        ("confidence", pa.float64()),
        ("label_set", pa.string()),
        ("source", pa.string()),
        ("created_at", TIME),
    ]
)
RUN = pa.struct(
    [
        ("id", pa.int64()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("score_threshold", pa.float64()),
        ("iou_threshold", pa.float64()),
        ("latency_ms", pa.float64()),
        ("boxes", pa.int64()),
        ("created_at", TIME),
    ]
)
PREDICTION = pa.struct(
    [
        ("id", pa.int64()),
        ("run_id", pa.int64()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("class_id", pa.int64()),
        ("class_name", pa.string()),
        ("score", pa.float64()),
        ("box", BOX),
        ("created_at", TIME),
    ]
)
FEEDBACK = pa.struct(
    [
        ("id", pa.int64()),
        ("run_id", pa.int64()),
        ("prediction_id", pa.int64()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("verdict", pa.string()),
        ("class_name", pa.string()),
        ("box", BOX),
        ("confidence", pa.float64()),
        ("reviewer", pa.string()),
        ("simulated", pa.bool_()),
        ("channel", pa.string()),
        ("created_at", TIME),
    ]
)
MEMBERSHIP = pa.struct(
    [
        ("dataset", pa.string()),
        ("version", pa.int64()),
        ("version_id", pa.int64()),
        ("split", pa.string()),
        ("label_set", pa.string()),
    ]
)
# Scalar columns read straight from the image row, in document order.
IMAGE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("id", pa.int64()),
    ("sha256", pa.string()),
    ("format", pa.string()),
    ("modality", pa.string()),
    ("view_position", pa.string()),
    ("body_part", pa.string()),
    ("size_bytes", pa.int64()),
    ("rows", pa.int64()),
    ("columns", pa.int64()),
    ("frames", pa.int64()),
    ("slices", pa.int64()),
    ("volumes", pa.int64()),
    ("pixel_spacing_row", pa.float64()),
    ("pixel_spacing_col", pa.float64()),
    ("slice_thickness", pa.float64()),
    ("manufacturer", pa.string()),
    ("manufacturer_model", pa.string()),
    ("photometric", pa.string()),
    ("bits_stored", pa.int64()),
    ("sop_instance_uid", pa.string()),
    ("instance_number", pa.int64()),
    ("original_key", pa.string()),
    ("created_at", TIME),
)
IMAGE_NAMES = tuple(name for name, _ in IMAGE_COLUMNS)
SCHEMA = pa.schema(
    [
        *IMAGE_COLUMNS,
        ("attributes", pa.string()),  # JSON text: DuckDB's json_extract reads it
        ("source", SOURCE),
        ("series", SERIES),
        ("study", STUDY),
        ("patient", PATIENT),
        ("renditions", pa.list_(RENDITION)),
        ("labels", pa.list_(LABEL)),
        ("runs", pa.list_(RUN)),
        ("predictions", pa.list_(PREDICTION)),
        ("feedback", pa.list_(FEEDBACK)),
        ("memberships", pa.list_(MEMBERSHIP)),
        ("build", pa.int64()),  # the build that wrote this document: the newest wins
        ("built_at", TIME),
    ]
)
_LISTS = ("renditions", "labels", "runs", "predictions", "feedback", "memberships")
# Attributes that may repeat an input's path or key (source_load keeps the key).
_HIDDEN_ATTRIBUTES = frozenset({"source_key"})
Document = dict[str, Any]


def _box(x_min: float | None, y_min: float | None, x_max: float | None, y_max: float | None) -> Any:
    if x_min is None or y_min is None or x_max is None or y_max is None:
        return None
    return {"x_min": x_min, "y_min": y_min, "x_max": x_max, "y_max": y_max}


def _attributes(stored: str | dict[str, Any] | None) -> str:
    """The attributes as JSON text, without the keys that may hold an input path.
    SQLite and MariaDB hand the stored text over; psycopg decodes PostgreSQL's json."""
    if not stored:
        return "{}"
    if isinstance(stored, str):
        if not any(f'"{key}"' in stored for key in _HIDDEN_ATTRIBUTES):
            return stored
        stored = json.loads(stored)
    assert isinstance(stored, dict)
    kept = {k: v for k, v in stored.items() if k not in _HIDDEN_ATTRIBUTES}
    return json.dumps(kept, sort_keys=True, default=str)


def read_documents(
    session: Session, image_ids: Sequence[int], *, build: int, built_at: datetime
) -> list[Document]:
    """The documents of these images (ids no longer catalogued are skipped), in id
    order. Call with at most catalog.db.IN_LIST_SIZE ids."""
    documents = _images(session, image_ids, build=build, built_at=built_at)
    if not documents:
        return []
    ids = sorted(documents)
    for image_id, rendition in _renditions(session, ids):
        documents[image_id]["renditions"].append(rendition)
    for image_id, label in _labels(session, ids):
        documents[image_id]["labels"].append(label)
    _add_runs(session, ids, documents)
    for image_id, verdict in _feedback(session, ids):
        documents[image_id]["feedback"].append(verdict)
    for image_id, membership in _memberships(session, ids):
        documents[image_id]["memberships"].append(membership)
    return [documents[image_id] for image_id in ids]


def _images(
    session: Session, image_ids: Sequence[int], *, build: int, built_at: datetime
) -> dict[int, Document]:
    statement = (
        select(
            *(getattr(Image, name) for name, _ in IMAGE_COLUMNS),
            # The JSON as stored: decoding and encoding every image's costs more than
            # the rest of its document (only a rare source_key is cut out).
            type_coerce(Image.attributes, Text),
            Source.id,
            Source.name,
            Source.kind,
            Series.id,
            Series.series_uid,
            Series.series_number,
            Series.modality,
            Series.description,
            Study.id,
            Study.study_uid,
            Patient.id,
            Patient.pseudonym,
        )
        .join(Source, Image.source_id == Source.id)
        .outerjoin(Series, Image.series_id == Series.id)
        .outerjoin(Study, Series.study_id == Study.id)
        .outerjoin(Patient, Study.patient_id == Patient.id)
        .where(Image.id.in_(image_ids))
    )
    documents: dict[int, Document] = {}
    width = len(IMAGE_COLUMNS)
    for row in _rows(session, statement):
        document: Document = dict(
            zip((name for name, _ in IMAGE_COLUMNS), row[:width], strict=True)
        )
        attributes, source_id, source, kind, *rest = row[width:]
        series_id, series_uid, number, modality, description, study_id, study_uid, *patient = rest
        document["attributes"] = _attributes(attributes)
        document["source"] = {"id": source_id, "name": source, "kind": kind}
        document["series"] = (
            None
            if series_id is None
            else {
                "id": series_id,
                "series_uid": series_uid,
                "series_number": number,
                "modality": modality,
                "description": description,
            }
        )
        document["study"] = None if study_id is None else {"id": study_id, "study_uid": study_uid}
        document["patient"] = (
            None if patient[0] is None else {"id": patient[0], "pseudonym": patient[1]}
        )
        for name in _LISTS:
            document[name] = []
        document["build"] = build
        document["built_at"] = built_at
        documents[document["id"]] = document
    return documents


def _renditions(session: Session, ids: Sequence[int]) -> list[tuple[int, Any]]:
    statement = (
        select(Rendition.image_id, Rendition.name, Rendition.key, Rendition.width, Rendition.height)
        .where(Rendition.image_id.in_(ids))
        .order_by(Rendition.image_id, Rendition.name)
    )
    return [
        (image_id, {"name": name, "key": key, "width": width, "height": height})
        for image_id, name, key, width, height in _rows(session, statement)
    ]


def _labels(session: Session, ids: Sequence[int]) -> list[tuple[int, Any]]:
    # The label set of a label is the retrain set whose job filed it (origin
    # feedback); readers' ground truth belongs to no set.
    statement = (
        select(
            Label.image_id,
            Label.id,
            Label.class_name,
            Label.class_id,
            Label.x_min,
            Label.y_min,
            Label.x_max,
            Label.y_max,
            Label.reader,
            Label.origin,
            Label.confidence,
            RetrainSet.name,
            Source.name,
            Label.created_at,
        )
        .join(Source, Label.source_id == Source.id)
        .outerjoin(
            RetrainSet,
            and_(RetrainSet.job_id == Label.job_id, Label.origin == LabelOrigin.FEEDBACK.value),
        )
        .where(Label.image_id.in_(ids))
        .order_by(Label.image_id, Label.id)
    )
    found: list[tuple[int, Any]] = []
    for row in _rows(session, statement):
        image_id, label_id, class_name, class_id, x0, y0, x1, y1, *rest = row
        reader, origin, confidence, label_set, source, created_at = rest
        assert image_id is not None  # selected by image id
        found.append(
            (
                image_id,
                {
                    "id": label_id,
                    "class_name": class_name,
                    "class_id": class_id,
                    "box": _box(x0, y0, x1, y1),
                    "reader": reader,
                    "origin": origin,
                    "confidence": confidence,
                    "label_set": label_set,
                    "source": source,
                    "created_at": created_at,
                },
            )
        )
    return found


def _add_runs(session: Session, ids: Sequence[int], documents: dict[int, Document]) -> None:
    """Each image's runs (a run that found nothing too) and their predicted boxes."""
    statement = (
        select(
            InferenceRun.image_id,
            InferenceRun.id,
            Model.name,
            ModelVersion.version,
            InferenceRun.score_threshold,
            InferenceRun.iou_threshold,
            InferenceRun.latency_ms,
            InferenceRun.created_at,
            Prediction.id,
            Prediction.class_id,
            Prediction.class_name,
            Prediction.score,
            Prediction.x_min,
            Prediction.y_min,
            Prediction.x_max,
            Prediction.y_max,
        )
        .join(ModelVersion, InferenceRun.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .outerjoin(Prediction, Prediction.run_id == InferenceRun.id)
        .where(InferenceRun.image_id.in_(ids))
        .order_by(InferenceRun.image_id, InferenceRun.id, Prediction.id)
    )
    runs: dict[int, Document] = {}
    for row in _rows(session, statement):
        image_id, run_id, model, version, score_t, iou_t, latency, created_at, *box_row = row
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = {
                "id": run_id,
                "model": model,
                "model_version": version,
                "score_threshold": score_t,
                "iou_threshold": iou_t,
                "latency_ms": latency,
                "boxes": 0,
                "created_at": created_at,
            }
            documents[image_id]["runs"].append(run)
        prediction_id, class_id, class_name, score, *corners = box_row
        if prediction_id is None:
            continue
        run["boxes"] += 1
        documents[image_id]["predictions"].append(
            {
                "id": prediction_id,
                "run_id": run_id,
                "model": model,
                "model_version": version,
                "class_id": class_id,
                "class_name": class_name,
                "score": score,
                "box": _box(*corners),
                "created_at": created_at,
            }
        )


def _feedback(session: Session, ids: Sequence[int]) -> list[tuple[int, Any]]:
    statement = (
        select(
            Feedback.image_id,
            Feedback.id,
            Feedback.run_id,
            Feedback.prediction_id,
            Model.name,
            ModelVersion.version,
            Feedback.verdict,
            Feedback.class_name,
            Feedback.x_min,
            Feedback.y_min,
            Feedback.x_max,
            Feedback.y_max,
            Feedback.confidence,
            Feedback.reviewer,
            Feedback.simulated,
            Feedback.channel,
            Feedback.created_at,
        )
        .join(ModelVersion, Feedback.model_version_id == ModelVersion.id)
        .join(Model, ModelVersion.model_id == Model.id)
        .where(Feedback.image_id.in_(ids))
        .order_by(Feedback.image_id, Feedback.id)
    )
    found = []
    for row in _rows(session, statement):
        image_id, feedback_id, run_id, prediction_id, model, version, verdict, class_name, *rest = (
            row
        )
        x0, y0, x1, y1, confidence, reviewer, simulated, channel, created_at = rest
        found.append(
            (
                image_id,
                {
                    "id": feedback_id,
                    "run_id": run_id,
                    "prediction_id": prediction_id,
                    "model": model,
                    "model_version": version,
                    "verdict": verdict,
                    "class_name": class_name,
                    "box": _box(x0, y0, x1, y1),
                    "confidence": confidence,
                    "reviewer": reviewer,
                    "simulated": bool(simulated),
                    "channel": channel,
                    "created_at": created_at,
                },
            )
        )
    return found


def _memberships(session: Session, ids: Sequence[int]) -> list[tuple[int, Any]]:
    statement = (
        select(
            DatasetMember.image_id,
            Dataset.name,
            DatasetVersion.version,
            DatasetVersion.id,
            DatasetMember.split,
            DatasetVersion.label_set,
        )
        .join(DatasetVersion, DatasetMember.version_id == DatasetVersion.id)
        .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
        .where(DatasetMember.image_id.in_(ids))
        .order_by(DatasetMember.image_id, Dataset.name, DatasetVersion.version)
    )
    return [
        (
            image_id,
            {
                "dataset": dataset,
                "version": version,
                "version_id": version_id,
                "split": split,
                "label_set": label_set,
            },
        )
        for image_id, dataset, version, version_id, split, label_set in _rows(session, statement)
    ]


def _rows(session: Session, statement: Select[*tuple[Any, ...]]) -> Sequence[Any]:
    # Core, all rows at once: the ORM's per-row layer costs more than the query here.
    return session.connection().execute(statement).all()


def as_json_line(document: Document) -> str:
    """A document as one JSON line (times in ISO 8601, UTC), for document stores."""
    return json.dumps(document, default=_json_default, separators=(",", ":"), sort_keys=False)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
