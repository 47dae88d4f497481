"""Predictions in stored pixels, and their COCO mAP, through radlake.inference.

The validation score that early stopping reads is the registry's evaluation of the
test score: the same class-wise NMS (`inference.nms.batched_nms`) and the same
pycocotools scoring (`inference.evaluation.coco_scores`), over boxes in the stored
image's pixels. Only turning the network's output into candidate boxes is torch here.
Images are numbered in sample order, which is deterministic for a split (evaluation
numbers them by sha256 so a lake's ingestion order cannot move a score tie).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from radlake.domain import Box
from radlake.inference.evaluation import coco_scores
from radlake.inference.nms import batched_nms
from radlake.training.data import Sample, collate

Detection = tuple[int, float, Box]  # class id, score, box in stored pixels


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    score_threshold: float = 0.001,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
    batch_size: int = 16,
) -> list[list[Detection]]:
    """Detections per sample, in the stored image's pixels (letterbox inverted)."""
    model.eval()
    found: list[list[Detection]] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        decoded = model.decode(collate(chunk).images).cpu().numpy()  # type: ignore[operator]
        for sample, rows in zip(chunk, decoded, strict=True):
            found.append(_detections(sample, rows, score_threshold, iou_threshold, max_detections))
    return found


def _detections(
    sample: Sample, rows: np.ndarray, score_threshold: float, iou_threshold: float, limit: int
) -> list[Detection]:
    cxcywh, scores = rows[:4].T, rows[4:].T  # [A, 4], [A, nc]
    # Every class above the threshold, not just an anchor's best (COCO practice).
    anchor, classes = np.nonzero(scores > score_threshold)
    picked = scores[anchor, classes]
    centre, half = cxcywh[anchor, :2], cxcywh[anchor, 2:] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    # NMS only over the best few thousand, like the exported model's decoders.
    kept = batched_nms(
        boxes, picked, classes, iou_threshold, max_candidates=30 * limit, max_detections=limit
    )
    result: list[Detection] = []
    for index in kept.tolist():
        x0, y0, x1, y1 = (float(v) for v in boxes[index])
        box = sample.transform.invert(Box(x0, y0, x1, y1))
        if box.x_min < box.x_max and box.y_min < box.y_max:
            result.append((int(classes[index]), float(picked[index]), box))
    return result


@dataclass(frozen=True, slots=True)
class MapScore:
    map50_95: float
    map50: float


def coco_map(
    samples: Sequence[Sample], detections: Sequence[Sequence[Detection]], num_classes: int
) -> MapScore:
    """COCO mAP of detections against the samples' ground truth (0 where there is none)."""
    names = [str(c) for c in range(num_classes)]
    truth = {n: [(names[c], b) for c, b in s.truth] for n, s in enumerate(samples, start=1)}
    predicted = {
        n: [(names[c], score, b) for c, score, b in found]
        for n, found in enumerate(detections, start=1)
    }
    sizes = {
        n: (s.transform.source_width, s.transform.source_height)
        for n, s in enumerate(samples, start=1)
    }
    scores = coco_scores(truth, predicted, sizes, names)
    return MapScore(scores.map50_95 or 0.0, scores.map50 or 0.0)
