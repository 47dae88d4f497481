"""predict_images: what `POST /predict`, the CLI and benchmarks call to run a model
on catalogued images and record the runs (inference_run + prediction rows)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.db import batches, session_factory, transaction
from radlake.catalog.model_registry import PredictedBox, RunRecord, record_runs, resolve_version
from radlake.catalog.models import Image
from radlake.errors import ImageNotFound
from radlake.inference.runner import (
    DEFAULT_BATCH,
    DEFAULT_IOU,
    DEFAULT_SCORE,
    STORED_PIXELS,
    Detection,
    ServedModel,
    check_batch,
    check_threshold,
    detect,
)
from radlake.inference.sessions import SESSIONS, SessionCache
from radlake.lake import Lake
from radlake.pipelines.stored_images import StoredImage, StoredImages


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """One image's answer: its boxes (stored pixels), the run id (None when not
    recorded), the model version and the latency."""

    image_id: int
    run_id: int | None
    model: str
    version: int
    model_version_id: int
    detections: list[Detection]
    latency_ms: float
    width: int
    height: int
    score_threshold: float
    iou_threshold: float
    # The recorded boxes' ids, in the order of detections (empty when not recorded).
    prediction_ids: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "run_id": self.run_id,
            "model": self.model,
            "version": self.version,
            "latency_ms": self.latency_ms,
            "width": self.width,
            "height": self.height,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "detections": [
                detection.as_dict() | {"prediction_id": prediction_id}
                for detection, prediction_id in zip(
                    self.detections,
                    self.prediction_ids or (None,) * len(self.detections),
                    strict=True,
                )
            ],
        }


def served_model(lake: Lake, model_ref: str) -> ServedModel:
    """The version a reference names, as plain values.

    Raises:
        InferenceError, ModelNotFound: a malformed or unknown reference.
    """
    with session_factory(lake.engine)() as session:
        return ServedModel.of(resolve_version(session, ref=model_ref))


def catalogued_images(session: Session, image_ids: Sequence[int]) -> dict[int, StoredImage]:
    """The stored images of these ids, read in IN lists of the size the catalog allows.

    Raises:
        ImageNotFound: an id is not catalogued (the first such, in the given order).
    """
    found: dict[int, StoredImage] = {}
    for chunk in batches(image_ids):
        found.update(
            (row.id, StoredImage.of(row))
            for row in session.execute(
                select(Image.id, Image.sha256, Image.format, Image.original_key).where(
                    Image.id.in_(chunk)
                )
            )
        )
    missing = [image_id for image_id in image_ids if image_id not in found]
    if missing:
        raise ImageNotFound(f"no image with id {missing[0]}")
    return found


def predict_images(
    lake: Lake,
    *,
    model_ref: str,
    image_ids: Sequence[int],
    score_threshold: float = DEFAULT_SCORE,
    iou_threshold: float = DEFAULT_IOU,
    caller: str = "cli",
    batch_size: int = DEFAULT_BATCH,
    record: bool = True,
    images: StoredImages | None = None,
    sessions: SessionCache = SESSIONS,
) -> list[InferenceResult]:
    """Run a model ("name", "name@alias" or "name:3") on catalogued images, in order,
    and record one inference run per image with its boxes (unless record=False).

    images: the stored-image service to decode with (the API passes its own, with
    its decode guard); sessions: the process's session cache.

    Raises:
        InferenceError: a threshold outside [0, 1], a bad batch size or reference.
        ModelNotFound: no such model, version or alias.
        ImageNotFound: an image id is not catalogued.
        ImageError, RenderError: an image cannot be decoded.
        ModelFileError, InferenceUnavailable: the model cannot run.
        StorageError, CatalogError: the store or the catalog failed.
    """
    score_threshold = check_threshold("score", score_threshold)
    iou_threshold = check_threshold("IoU", iou_threshold)
    batch_size = check_batch(batch_size)
    wanted = list(dict.fromkeys(image_ids))
    # One session for the model and the images: this is every POST /predict's path.
    with session_factory(lake.engine)() as session:
        model = ServedModel.of(resolve_version(session, ref=model_ref))
        rows = catalogued_images(session, wanted)
    service = images or StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    loaded = model.load(lake.store, sessions)
    results: list[InferenceResult] = []
    for start in range(0, len(wanted), batch_size):
        started = time.perf_counter()
        chunk = wanted[start : start + batch_size]
        pictures = [service.render(rows[image_id], STORED_PIXELS).image for image_id in chunk]
        found = detect(
            loaded,
            model,
            pictures,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            batch_size=batch_size,
        )
        latency = (time.perf_counter() - started) * 1000 / len(chunk)
        results += [
            InferenceResult(
                image_id,
                None,
                model.name,
                model.version,
                model.version_id,
                detections,
                latency,
                picture.width,
                picture.height,
                score_threshold,
                iou_threshold,
            )
            for image_id, picture, detections in zip(chunk, pictures, found, strict=True)
        ]
    if not record:
        return results
    runs = [run_record(result, caller) for result in results]
    with transaction(lake.engine) as session:
        recorded = record_runs(session, runs=runs)
    return [
        replace(result, run_id=ids.run_id, prediction_ids=ids.prediction_ids)
        for result, ids in zip(results, recorded, strict=True)
    ]


def run_record(result: InferenceResult, caller: str) -> RunRecord:
    """The catalog rows of a result."""
    return RunRecord(
        model_version_id=result.model_version_id,
        image_id=result.image_id,
        score_threshold=result.score_threshold,
        iou_threshold=result.iou_threshold,
        latency_ms=result.latency_ms,
        caller=caller,
        boxes=[
            PredictedBox(found.class_id, found.class_name, found.score, found.box)
            for found in result.detections
        ],
    )
