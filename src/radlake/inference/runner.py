"""Run a model over pictures: preprocess, batch, ONNX Runtime, decode, NMS, and boxes
back in the stored image's pixels. No catalog here: the API, the batch workers and
evaluation all call this, and record (or not) what it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from radlake.domain import Box
from radlake.errors import ImageError, ObjectNotFound, RenderError
from radlake.inference.contract import InputContract, preprocess, to_stored
from radlake.inference.decoders import decode
from radlake.inference.errors import InferenceError, ModelFileError
from radlake.inference.nms import batched_nms
from radlake.inference.sessions import SESSIONS, LoadedModel, SessionCache
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages
from radlake.storage.store import ObjectStore

DEFAULT_SCORE = 0.25
DEFAULT_IOU = 0.45
DEFAULT_BATCH = 8
# The stored grid, untouched: boxes are in the stored image's pixels.
STORED_PIXELS = RenderOptions(size=None, true_aspect=False)


def check_threshold(name: str, value: object) -> float:
    """value as a float when it is a number in [0, 1].

    Raises:
        InferenceError: anything else (the API answers 422, the CLI exits 1).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InferenceError(f"expected the {name} threshold in [0, 1], got {value!r:.40}")
    if not 0.0 <= value <= 1.0:
        raise InferenceError(f"expected the {name} threshold in [0, 1], got {value}")
    return float(value)


def check_batch(value: int) -> int:
    """Raises InferenceError unless 1 <= value <= 256."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise InferenceError(f"expected a batch size in 1..256, got {value!r:.20}")
    return value


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model version as the runner needs it: plain values, picklable."""

    version_id: int
    name: str
    version: int
    sha256: str
    store_key: str
    contract: InputContract
    decoder: str
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, row: Any) -> ServedModel:
        """From a catalog ModelVersion (its model loaded)."""
        return cls(
            version_id=int(row.id),
            name=str(row.model.name),
            version=int(row.version),
            sha256=str(row.sha256),
            store_key=str(row.store_key),
            contract=InputContract.from_dict(row.contract),
            decoder=str(row.decoder),
            class_names=tuple(row.class_names),
        )

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def load(self, store: ObjectStore, sessions: SessionCache = SESSIONS) -> LoadedModel:
        """This process's session of the model (built from the store on first use).

        Raises:
            ModelFileError: the registered file is gone from the store, or does not load
                (the lake's fault, not the caller's: never a 404).
        """
        try:
            return sessions.get(self.sha256, lambda: store.get_bytes(self.store_key))
        except ObjectNotFound:
            raise ModelFileError(
                f"the file of model {self.ref} is missing from the store ({self.store_key})"
            ) from None


@dataclass(frozen=True, slots=True)
class Detection:
    """One predicted box in the stored image's pixels."""

    class_id: int
    class_name: str
    score: float
    box: Box

    def as_dict(self) -> dict[str, Any]:
        box = self.box
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": self.score,
            "box": [box.x_min, box.y_min, box.x_max, box.y_max],
        }


def detect(
    loaded: LoadedModel,
    model: ServedModel,
    pictures: Sequence[Image.Image],
    *,
    score_threshold: float = DEFAULT_SCORE,
    iou_threshold: float = DEFAULT_IOU,
    batch_size: int = DEFAULT_BATCH,
) -> list[list[Detection]]:
    """Each picture's detections (pictures at their stored size), best score first.

    Raises:
        InferenceError: a threshold outside [0, 1] or a bad batch size.
        ModelFileError: the model fails or answers outputs its decoder cannot read.
    """
    score_threshold = check_threshold("score", score_threshold)
    iou_threshold = check_threshold("IoU", iou_threshold)
    batch_size = loaded.io.fixed_batch or check_batch(batch_size)
    found: list[list[Detection]] = []
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start : start + batch_size]
        inputs, transforms = zip(
            *(preprocess(picture, model.contract) for picture in chunk), strict=True
        )
        outputs = loaded.run(np.stack(inputs))
        candidates = decode(
            model.decoder,
            outputs,
            batch=len(chunk),
            classes=len(model.class_names),
            score_threshold=score_threshold,
            names=loaded.io.output_names,
        )
        for found_here, transform in zip(candidates, transforms, strict=True):
            keep = batched_nms(
                found_here.boxes, found_here.scores, found_here.class_ids, iou_threshold
            )
            boxes = to_stored(found_here.boxes[keep], transform)
            scores, classes = found_here.scores[keep], found_here.class_ids[keep]
            # A box wholly in the padding has no area left in the image.
            real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            found.append(
                [
                    Detection(int(c), model.class_names[int(c)], float(s), Box(*map(float, b)))
                    for b, s, c in zip(boxes[real], scores[real], classes[real], strict=True)
                ]
            )
    return found


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """What one image of a batch task came to: detections, or why it could not be read."""

    image_id: int
    detections: tuple[Detection, ...] = ()
    width: int = 0
    height: int = 0
    latency_ms: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchTask:
    """One batch for an executor worker; pickled by value (the store travels as its URL)."""

    store: ObjectStore
    model: ServedModel
    images: tuple[tuple[int, StoredImage], ...]
    score_threshold: float
    iou_threshold: float
    max_decoded_bytes: int
    threads: int | None = None


def load_pictures(
    images: StoredImages, items: Sequence[tuple[int, StoredImage]]
) -> tuple[list[tuple[int, Image.Image]], list[ImageOutcome]]:
    """Each image's picture at its stored size; those that cannot be read, as outcomes."""
    pictures: list[tuple[int, Image.Image]] = []
    failed: list[ImageOutcome] = []
    for image_id, stored in items:
        try:
            pictures.append((image_id, images.render(stored, STORED_PIXELS).image))
        except (ImageError, RenderError) as exc:
            failed.append(ImageOutcome(image_id, error=str(exc)[:300]))
        except ObjectNotFound:
            # One lost original is this image's problem: the job goes on (a store that
            # fails outright still stops it, as StorageError).
            failed.append(ImageOutcome(image_id, error="its original is missing from the store"))
    return pictures, failed


def run_task(task: BatchTask) -> list[ImageOutcome]:
    """Predict one batch (in whatever process the executor chose).

    Raises:
        ModelFileError, InferenceUnavailable: the model cannot run at all.
        StorageError: the store failed (a fault, not a bad input).
    """
    started = time.perf_counter()
    loaded = SESSIONS.get(
        task.model.sha256, lambda: task.store.get_bytes(task.model.store_key), threads=task.threads
    )
    images = StoredImages(task.store, max_decoded_bytes=task.max_decoded_bytes)
    pictures, outcomes = load_pictures(images, task.images)
    if pictures:
        found = detect(
            loaded,
            task.model,
            [picture for _, picture in pictures],
            score_threshold=task.score_threshold,
            iou_threshold=task.iou_threshold,
            batch_size=len(pictures),
        )
        latency = (time.perf_counter() - started) * 1000 / len(pictures)
        outcomes += [
            ImageOutcome(image_id, tuple(detections), picture.width, picture.height, latency)
            for (image_id, picture), detections in zip(pictures, found, strict=True)
        ]
    return outcomes
