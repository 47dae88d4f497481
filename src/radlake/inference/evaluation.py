"""COCO evaluation of a model version on a dataset split, beside the mean-box baseline.

Ground truth is the dataset version's label set over labels of origin ground_truth
(curation.versions.version_findings): never predictions, never feedback. mAP50,
mAP50-95 and per-class AP come from pycocotools itself.

The baseline (issue 10) predicts, for every class, its mean box over the training
split (each box normalised by its image's size), scaled to each evaluated image's
size, with score 1. Lungs sit in nearly the same place on every film, so that
constant already scores a high mAP50: a model is judged by how far it beats it,
on mAP50-95.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.inference_models import ModelVersion
from radlake.catalog.models import Image, utcnow
from radlake.curation.versions import get_version, members, version_findings
from radlake.domain import Box
from radlake.inference.errors import INSTALL_HINT, InferenceError, InferenceUnavailable
from radlake.inference.runner import (
    DEFAULT_BATCH,
    check_batch,
    check_threshold,
    detect,
    load_pictures,
)
from radlake.inference.service import served_model
from radlake.inference.sessions import SESSIONS, SessionCache
from radlake.lake import Lake
from radlake.pipelines.stored_images import StoredImage, StoredImages

# COCO practice: keep nearly every box so the precision-recall curve is whole.
EVAL_SCORE = 0.001
EVAL_IOU = 0.6
LABELS_READ = "ground_truth"

Truth = Mapping[int, Sequence[tuple[str, Box]]]
Predicted = Mapping[int, Sequence[tuple[str, float, Box]]]
Sizes = Mapping[int, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Scores:
    """COCO figures of one set of predictions (None: no ground truth to score)."""

    map50: float | None
    map50_95: float | None
    per_class: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    predictions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "per_class": self.per_class,
            "predictions": self.predictions,
        }


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO  # type: ignore[import-untyped]
        from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]
    except ImportError:
        raise InferenceUnavailable(f"pycocotools is not installed: {INSTALL_HINT}") from None
    return COCO, COCOeval


def _figure(value: float) -> float | None:
    return None if value < 0 else float(value)


def coco_scores(truth: Truth, predicted: Predicted, sizes: Sizes, classes: Sequence[str]) -> Scores:
    """mAP50, mAP50-95 and per-class AP (pycocotools, 100 detections per image).

    classes: every class name to report; boxes of other classes are ignored.
    """
    coco_class, coco_eval = _pycocotools()
    category = {name: index + 1 for index, name in enumerate(classes)}
    annotations = [
        {
            "id": number,
            "image_id": image_id,
            "category_id": category[name],
            "bbox": [box.x_min, box.y_min, box.width, box.height],
            "area": box.width * box.height,
            "iscrowd": 0,
        }
        for number, (image_id, name, box) in enumerate(
            ((i, n, b) for i, found in truth.items() for n, b in found if n in category), start=1
        )
    ]
    results = [
        {
            "image_id": image_id,
            "category_id": category[name],
            "bbox": [box.x_min, box.y_min, box.width, box.height],
            "score": score,
        }
        for image_id, found in predicted.items()
        for name, score, box in found
        if name in category and image_id in sizes
    ]
    counts: dict[str, int] = defaultdict(int)
    for found in truth.values():
        for name, _ in found:
            counts[name] += 1
    if not annotations:
        return Scores(None, None, {}, len(results))
    if not results:
        nothing: dict[str, dict[str, float | int | None]] = {
            name: {
                "ap": 0.0 if counts[name] else None,
                "ap50": 0.0 if counts[name] else None,
                "boxes": counts[name],
            }
            for name in classes
        }
        return Scores(0.0, 0.0, nothing, 0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        ground = coco_class()
        ground.dataset = {
            "images": [{"id": i, "width": w, "height": h} for i, (w, h) in sorted(sizes.items())],
            "annotations": annotations,
            "categories": [{"id": number, "name": name} for name, number in category.items()],
        }
        ground.createIndex()
        evaluation = coco_eval(ground, ground.loadRes(results), "bbox")
        evaluation.params.imgIds = sorted(sizes)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # [IoU thresholds, recall, class, area, max dets]
    per_class: dict[str, dict[str, float | int | None]] = {}
    for name, number in category.items():
        curve = precision[:, :, number - 1, 0, -1]
        at50 = curve[0][curve[0] > -1]
        every = curve[curve > -1]
        per_class[name] = {
            "ap": float(np.mean(every)) if every.size else None,
            "ap50": float(np.mean(at50)) if at50.size else None,
            "boxes": counts[name],
        }
    return Scores(
        _figure(evaluation.stats[1]), _figure(evaluation.stats[0]), per_class, len(results)
    )


def mean_box_baseline(training: Truth, training_sizes: Sizes, sizes: Sizes) -> Predicted:
    """Each class's mean normalised box over the training images, scaled to every
    image of sizes, with score 1."""
    normalised: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for image_id, found in training.items():
        width, height = training_sizes[image_id]
        for name, box in found:
            normalised[name].append(
                (box.x_min / width, box.y_min / height, box.x_max / width, box.y_max / height)
            )
    means = {name: np.mean(np.asarray(boxes), axis=0) for name, boxes in normalised.items()}
    return {
        image_id: [
            (name, 1.0, Box(m[0] * width, m[1] * height, m[2] * width, m[3] * height))
            for name, m in sorted(means.items())
        ]
        for image_id, (width, height) in sizes.items()
    }


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """A model version's figures on a split, beside the mean-box baseline."""

    model: str
    version: int
    dataset: str
    dataset_version: int
    split: str
    images: int
    unreadable: int
    label_set: str
    score_threshold: float
    iou_threshold: float
    scores: Scores
    baseline: Scores
    evaluated_at: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return f"{self.dataset}@{self.dataset_version}/{self.split}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "split": self.split,
            "images": self.images,
            "unreadable": self.unreadable,
            "labels": f"origin {LABELS_READ}, label set {self.label_set}",
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "model_scores": self.scores.as_dict(),
            "mean_box_baseline": self.baseline.as_dict(),
            "evaluated_at": self.evaluated_at.isoformat(),
        }


def latest_evaluation(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The most recent report in a version's metrics (JSON key order is not kept by
    every backend: MySQL sorts keys)."""
    reports = list(metrics.get("evaluations", {}).values())
    return max(reports, key=lambda report: str(report.get("evaluated_at", ""))) if reports else None


def _boxes(findings: Mapping[int, Sequence[Any]]) -> dict[int, list[tuple[str, Box]]]:
    return {
        image_id: [(f.class_name, f.box) for f in found if f.box is not None]
        for image_id, found in findings.items()
    }


def evaluate_version(
    lake: Lake,
    *,
    model_ref: str,
    dataset: str,
    dataset_version: int | None = None,
    split: str = "test",
    baseline_split: str = "training",
    score_threshold: float = EVAL_SCORE,
    iou_threshold: float = EVAL_IOU,
    batch_size: int = DEFAULT_BATCH,
    store_metrics: bool = True,
    sessions: SessionCache = SESSIONS,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """Run the model on a split (nothing recorded as predictions), score it against
    ground truth with pycocotools, score the mean-box baseline beside it, and keep
    the report in the model version's metrics under "evaluations"/<dataset@v/split>.

    Raises:
        InferenceError: bad thresholds, an empty split, or no ground-truth boxes.
        ModelNotFound, DatasetError: unknown model or dataset.
        ModelFileError, InferenceUnavailable: the model cannot run.
    """
    score_threshold = check_threshold("score", score_threshold)
    iou_threshold = check_threshold("IoU", iou_threshold)
    batch_size = check_batch(batch_size)
    model = served_model(lake, model_ref)
    with session_factory(lake.engine)() as session:
        version = get_version(session, dataset, dataset_version)
        split_of = members(session, version.id)
        wanted = sorted(i for i, s in split_of.items() if s == split)
        known = sorted(i for i, s in split_of.items() if s == baseline_split)
        if not wanted:
            splits = ", ".join(sorted(set(split_of.values())))
            raise InferenceError(f"{dataset} v{version.version} has no {split!r} images ({splits})")
        truth = _boxes(version_findings(session, version, wanted))
        training = _boxes(version_findings(session, version, known)) if known else {}
        rows = {
            row.id: row
            for row in session.execute(
                select(
                    Image.id,
                    Image.sha256,
                    Image.format,
                    Image.original_key,
                    Image.columns,
                    Image.rows,
                ).where(Image.id.in_(wanted + known))
            )
        }
    if not any(truth.values()):
        raise InferenceError(f"the {split!r} split of {dataset} has no ground-truth boxes")
    sizes = {i: (int(rows[i].columns), int(rows[i].rows)) for i in wanted}
    loaded = model.load(lake.store, sessions)
    images = StoredImages(lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes)
    predicted: dict[int, list[tuple[str, float, Box]]] = {}
    unreadable = 0
    for start in range(0, len(wanted), batch_size):
        chunk = [(i, StoredImage.of(rows[i])) for i in wanted[start : start + batch_size]]
        pictures, failed = load_pictures(images, chunk)
        unreadable += len(failed)
        found = (
            detect(
                loaded,
                model,
                [picture for _, picture in pictures],
                score_threshold=score_threshold,
                iou_threshold=iou_threshold,
                batch_size=batch_size,
            )
            if pictures
            else []
        )
        for (image_id, _), detections in zip(pictures, found, strict=True):
            predicted[image_id] = [(d.class_name, d.score, d.box) for d in detections]
        if progress is not None:
            progress(min(start + batch_size, len(wanted)), len(wanted))
    classes = list(
        dict.fromkeys([*model.class_names, *sorted({n for f in truth.values() for n, _ in f})])
    )
    training_sizes = {i: (int(rows[i].columns), int(rows[i].rows)) for i in known}
    # pycocotools breaks score ties (every baseline box scores 1) by image id: number the
    # images by content, so a figure never depends on the order a lake ingested them in.
    rank = {i: n for n, i in enumerate(sorted(wanted, key=lambda i: rows[i].sha256), start=1)}
    truth = {rank[i]: found for i, found in truth.items()}
    predicted = {rank[i]: found for i, found in predicted.items()}
    sizes = {rank[i]: size for i, size in sizes.items()}
    report = EvaluationReport(
        model=model.name,
        version=model.version,
        dataset=dataset,
        dataset_version=version.version,
        split=split,
        images=len(wanted),
        unreadable=unreadable,
        label_set=version.label_set,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        scores=coco_scores(truth, predicted, sizes, classes),
        baseline=coco_scores(
            truth, mean_box_baseline(training, training_sizes, sizes), sizes, classes
        ),
    )
    if store_metrics:
        with transaction(lake.engine) as session:
            row = session.get_one(ModelVersion, model.version_id)
            evaluations = dict(row.metrics.get("evaluations", {}))
            evaluations[report.key] = report.as_dict()
            row.metrics = {**row.metrics, "evaluations": evaluations}
    return report
