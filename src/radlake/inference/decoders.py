"""Decoders: a model's raw outputs -> candidate boxes in its input pixels.

    yolov5               one output [N, A, 5 + nc]: cx, cy, w, h, objectness, class
                         scores; a box's score is objectness x its best class score
    yolov8               one output [N, 4 + nc, A] (the transposed head of YOLOv8 and
                         YOLO11, no objectness; [N, A, 4 + nc] is read too)
    boxes-scores-labels  three outputs, torchvision and Detectron2 style: boxes [K, 4]
                         (x_min, y_min, x_max, y_max), scores [K], labels [K], with or
                         without a leading batch axis; matched by name, else in order

All work is whole-array numpy; the only loop is over the images of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radlake.inference.errors import ModelFileError
from radlake.inference.metadata import DECODERS


@dataclass(frozen=True, slots=True)
class Candidates:
    """One image's boxes before NMS: xyxy in input pixels, scores, class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _xywh_to_xyxy(values: np.ndarray) -> np.ndarray:
    # inf - inf is NaN, dropped in _kept: no RuntimeWarning on a broken model's stderr.
    with np.errstate(invalid="ignore", over="ignore"):
        half = values[:, 2:4] / 2
        return np.concatenate([values[:, 0:2] - half, values[:, 0:2] + half], axis=1)


def _kept(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float
) -> Candidates:
    # A model answering NaN or inf (a broken export, an overflow) has found nothing
    # there: an infinite score passed every threshold and was stored, then answered
    # as "score": null by the API.
    finite = np.isfinite(scores)
    if ((scores[finite] < 0) | (scores[finite] > 1)).any():
        # Logits, not probabilities: a score of 5.0 passed every threshold and was
        # stored. Registration's dry run meets this first and refuses the file.
        raise ModelFileError(
            "the model's scores are not in [0, 1] (raw logits? export it with its sigmoid)"
        )
    keep = (scores >= threshold) & finite & np.isfinite(boxes).all(axis=1)
    return Candidates(
        boxes[keep].astype(np.float64),
        scores[keep].astype(np.float64),
        classes[keep].astype(np.int64),
    )


def _head(outputs: Sequence[np.ndarray], batch: int, decoder: str) -> np.ndarray:
    if len(outputs) < 1 or outputs[0].ndim != 3 or outputs[0].shape[0] != batch:
        shapes = [list(output.shape) for output in outputs]
        raise ModelFileError(f"a {decoder} model has one output [N, ., .]; got shapes {shapes}")
    return outputs[0].astype(np.float32, copy=False)


def decode_yolov5(
    outputs: Sequence[np.ndarray], *, batch: int, classes: int, score_threshold: float
) -> list[Candidates]:
    head = _head(outputs, batch, "yolov5")
    if head.shape[2] != 5 + classes:
        raise ModelFileError(
            f"a yolov5 head for {classes} classes is [N, A, {5 + classes}]; got {list(head.shape)}"
        )
    found = []
    for rows in head:
        class_scores = rows[:, 5:] * rows[:, 4:5]
        best = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), best]
        found.append(_kept(_xywh_to_xyxy(rows[:, :4]), scores, best, score_threshold))
    return found


def decode_yolov8(
    outputs: Sequence[np.ndarray], *, batch: int, classes: int, score_threshold: float
) -> list[Candidates]:
    head = _head(outputs, batch, "yolov8")
    if head.shape[1] == 4 + classes:
        head = head.transpose(0, 2, 1)
    elif head.shape[2] != 4 + classes:
        raise ModelFileError(
            f"a yolov8 head for {classes} classes is [N, {4 + classes}, A]; got {list(head.shape)}"
        )
    found = []
    for rows in head:
        class_scores = rows[:, 4:]
        best = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), best]
        found.append(_kept(_xywh_to_xyxy(rows[:, :4]), scores, best, score_threshold))
    return found


def _by_name(outputs: Sequence[np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    picked: list[np.ndarray] = []
    for word in ("box", "score", "label"):
        matches = [i for i, name in enumerate(names) if word in name.lower()]
        if len(matches) != 1:
            return list(outputs[:3])
        picked.append(outputs[matches[0]])
    return picked


def decode_boxes_scores_labels(
    outputs: Sequence[np.ndarray],
    *,
    batch: int,
    classes: int,
    score_threshold: float,
    names: Sequence[str] = (),
) -> list[Candidates]:
    if len(outputs) < 3:
        raise ModelFileError(f"a boxes-scores-labels model has 3 outputs; got {len(outputs)}")
    boxes, scores, labels = _by_name(outputs, names)
    if boxes.ndim == 2:  # one image, no batch axis (torchvision, Detectron2)
        boxes, scores, labels = boxes[None], scores[None], labels[None]
    shapes = [list(boxes.shape), list(scores.shape), list(labels.shape)]
    if (
        boxes.ndim != 3
        or boxes.shape[2] != 4
        or boxes.shape[0] != batch
        or scores.shape != boxes.shape[:2]
        or labels.shape != boxes.shape[:2]
    ):
        raise ModelFileError(
            f"expected boxes [N, K, 4] (or [K, 4]), scores and labels [N, K] for a batch of "
            f"{batch}; got {shapes}"
        )
    label_ids = labels.astype(np.int64)
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= classes):
        raise ModelFileError(
            f"the model answered label {int(label_ids.max())} but has {classes} class names"
        )
    return [
        _kept(boxes[i], scores[i], label_ids[i], score_threshold) for i in range(boxes.shape[0])
    ]


def decode(
    decoder: str,
    outputs: Sequence[np.ndarray],
    *,
    batch: int,
    classes: int,
    score_threshold: float,
    names: Sequence[str] = (),
) -> list[Candidates]:
    """One Candidates per image of the batch, boxes with score >= score_threshold.

    Raises:
        ModelFileError: an unknown decoder, or outputs of the wrong shape for it.
    """
    if decoder == "yolov5":
        return decode_yolov5(outputs, batch=batch, classes=classes, score_threshold=score_threshold)
    if decoder == "yolov8":
        return decode_yolov8(outputs, batch=batch, classes=classes, score_threshold=score_threshold)
    if decoder == "boxes-scores-labels":
        return decode_boxes_scores_labels(
            outputs, batch=batch, classes=classes, score_threshold=score_threshold, names=names
        )
    raise ModelFileError(f"expected a decoder among {', '.join(DECODERS)}, got {decoder!r:.40}")
