"""Predictions in stored pixels, COCO mAP with pycocotools, and the mean-box baseline.

The validation score that early stopping reads is computed here the way the
registry's evaluation computes the test score: COCO mAP over boxes in the stored
image's pixels (pycocotools, maxDets 100).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from radlake.domain import Box
from radlake.training.data import Sample, collate

Detection = tuple[int, float, Box]  # class id, score, box in stored pixels


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou: float) -> Tensor:
    """Indices kept by class-wise greedy NMS, best score first."""
    order = scores.argsort(descending=True)
    # Shifting each class to its own region makes one pass class-wise.
    shifted = boxes[order] + classes[order, None].to(boxes.dtype) * (boxes.max() + 1)
    overlaps = box_iou(shifted, shifted)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= overlaps[i, i + 1 :] <= iou
    return order[keep]


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
        decoded = model.decode(collate(chunk).images)  # type: ignore[operator]
        for sample, rows in zip(chunk, decoded, strict=True):
            found.append(_detections(sample, rows, score_threshold, iou_threshold, max_detections))
    return found


def _detections(
    sample: Sample, rows: Tensor, score_threshold: float, iou_threshold: float, limit: int
) -> list[Detection]:
    cxcywh, scores = rows[:4].T, rows[4:].T  # [A, 4], [A, nc]
    anchor, cls = (scores > score_threshold).nonzero(as_tuple=True)
    if len(anchor) == 0:
        return []
    picked = scores[anchor, cls]
    if len(picked) > 30 * limit:  # NMS only over the best few thousand
        top = picked.topk(30 * limit).indices
        anchor, cls, picked = anchor[top], cls[top], picked[top]
    centre, half = cxcywh[anchor, :2], cxcywh[anchor, 2:] / 2
    boxes = torch.cat([centre - half, centre + half], 1)
    kept = nms(boxes, picked, cls, iou_threshold)[:limit]
    result: list[Detection] = []
    for index in kept.tolist():
        x0, y0, x1, y1 = (float(v) for v in boxes[index])
        box = sample.transform.invert(Box(x0, y0, x1, y1))
        if box.x_min < box.x_max and box.y_min < box.y_max:
            result.append((int(cls[index]), float(picked[index]), box))
    return result


@dataclass(frozen=True, slots=True)
class MapScore:
    map50_95: float
    map50: float
    per_class: dict[int, float]  # class id -> AP50-95


def coco_map(
    truths: Sequence[Sequence[tuple[int, Box]]],
    detections: Sequence[Sequence[Detection]],
    num_classes: int,
) -> MapScore:
    """COCO mAP of detections against ground truth, image by image (pycocotools)."""
    from pycocotools.coco import COCO  # type: ignore[import-untyped]
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

    images = [{"id": i + 1} for i in range(len(truths))]
    annotations = [
        {
            "id": n + 1,
            "image_id": i + 1,
            "category_id": c + 1,
            "bbox": [b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min],
            "area": (b.x_max - b.x_min) * (b.y_max - b.y_min),
            "iscrowd": 0,
        }
        for n, (i, c, b) in enumerate((i, c, b) for i, boxes in enumerate(truths) for c, b in boxes)
    ]
    results = [
        {
            "image_id": i + 1,
            "category_id": c + 1,
            "bbox": [b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min],
            "score": s,
        }
        for i, found in enumerate(detections)
        for c, s, b in found
    ]
    if not annotations or not results:
        return MapScore(0.0, 0.0, dict.fromkeys(range(num_classes), 0.0))
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for c in range(num_classes):
        values = precision[:, :, c, 0, -1]
        values = values[values > -1]
        per_class[c] = float(values.mean()) if values.size else 0.0
    stats = evaluation.stats
    return MapScore(max(float(stats[0]), 0.0), max(float(stats[1]), 0.0), per_class)


def mean_boxes(samples: Sequence[Sample], num_classes: int) -> dict[int, np.ndarray]:
    """Each class's mean box over samples, as fractions of the image's width and height."""
    sums: dict[int, list[np.ndarray]] = {c: [] for c in range(num_classes)}
    for sample in samples:
        width, height = sample.transform.source_width, sample.transform.source_height
        for c, b in sample.truth:
            sums[c].append(
                np.array([b.x_min / width, b.y_min / height, b.x_max / width, b.y_max / height])
            )
    return {c: np.mean(rows, axis=0) for c, rows in sums.items() if rows}


def mean_box_detections(
    samples: Sequence[Sample], means: dict[int, np.ndarray]
) -> list[list[Detection]]:
    """The constant baseline: each class's mean box, scaled to each image, score 1."""
    found: list[list[Detection]] = []
    for sample in samples:
        width, height = sample.transform.source_width, sample.transform.source_height
        found.append(
            [
                (c, 1.0, Box(m[0] * width, m[1] * height, m[2] * width, m[3] * height))
                for c, m in sorted(means.items())
            ]
        )
    return found
