"""The simulated reviewer of `radlake simulate --review`: it judges each answer of
POST /predict against the image's ground truth, as a radiologist would, and files the
verdicts through the feedback routes with simulated=true.

The judgement (review_decisions) is a pure function: predictions greedily by score,
highest first, each matched to the unmatched ground-truth box of its class it overlaps
most (IoU >= MATCH_IOU, the usual detection threshold):
- matched with IoU >= accept_iou: accept;
- matched with a lower IoU: correct, the box becoming the ground-truth box;
- then each prediction left over, by score: if it overlaps an unmatched ground-truth
  box of another class (IoU >= MATCH_IOU), correct its class to that one (and its box
  too when the IoU is below accept_iou); otherwise reject;
- each ground-truth box nobody matched: add (a box the model missed).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from radlake.curation.agreement import iou
from radlake.domain import Box, LabelOrigin
from radlake.traffic.calls import Call, send

MATCH_IOU = 0.5
DEFAULT_ACCEPT_IOU = 0.75

Verdict = Literal["accept", "reject", "correct", "add"]


@dataclass(frozen=True, slots=True)
class Predicted:
    """A box of an answer of POST /predict."""

    prediction_id: int
    class_name: str
    score: float
    box: Box


@dataclass(frozen=True, slots=True)
class Truth:
    """A ground-truth box of the image."""

    class_name: str
    box: Box


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict to file: on a prediction (accept, reject, correct) or, for add, on the
    image. class_name and box are what a correction or an addition says (None: kept)."""

    verdict: Verdict
    prediction_id: int | None = None
    class_name: str | None = None
    box: Box | None = None


def _best(box: Box, truths: Sequence[Truth], free: list[bool], same: str, *, other: bool) -> int:
    """The free truth (of class `same`, or of another class when other) that box
    overlaps most; -1 when none reaches MATCH_IOU."""
    best, best_iou = -1, MATCH_IOU
    for index, truth in enumerate(truths):
        if not free[index] or (truth.class_name != same) != other:
            continue
        overlap = iou(box, truth.box)
        if overlap >= best_iou and (best < 0 or overlap > best_iou):
            best, best_iou = index, overlap
    return best


def review_decisions(
    predicted: Sequence[Predicted],
    truths: Sequence[Truth],
    *,
    accept_iou: float = DEFAULT_ACCEPT_IOU,
) -> list[Decision]:
    """What a reviewer says of each predicted box and of each missed ground-truth box
    (the rules in the module docstring); verdicts on predictions in score order, then
    the additions in the order of truths.

    Raises:
        ValueError: accept_iou outside [MATCH_IOU, 1].
    """
    if not MATCH_IOU <= accept_iou <= 1:
        raise ValueError(f"expected accept_iou in [{MATCH_IOU}, 1], got {accept_iou}")
    order = sorted(predicted, key=lambda p: (-p.score, p.prediction_id))
    free = [True] * len(truths)
    decided: dict[int, Decision] = {}
    for other in (False, True):
        for found in order:
            if found.prediction_id in decided:
                continue
            match = _best(found.box, truths, free, found.class_name, other=other)
            if match < 0:
                continue
            free[match] = False
            truth = truths[match]
            close = iou(found.box, truth.box) >= accept_iou
            if not other and close:
                decided[found.prediction_id] = Decision("accept", found.prediction_id)
            else:
                decided[found.prediction_id] = Decision(
                    "correct",
                    found.prediction_id,
                    class_name=truth.class_name if other else None,
                    box=None if close else truth.box,
                )
    verdicts = [decided.get(p.prediction_id, Decision("reject", p.prediction_id)) for p in order]
    missed = [
        Decision("add", None, t.class_name, t.box) for t, f in zip(truths, free, strict=True) if f
    ]
    return verdicts + missed


# -- over HTTP ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewCall:
    """One request of the reviewer: reading labels, or filing a verdict."""

    kind: Literal["labels", "feedback"]
    image_id: int
    verdict: str | None
    prediction_id: int | None
    call: Call


def _box(fields: Any) -> Box:
    return Box(
        float(fields["x_min"]),
        float(fields["y_min"]),
        float(fields["x_max"]),
        float(fields["y_max"]),
    )


def _box_json(box: Box) -> dict[str, float]:
    return {"x_min": box.x_min, "y_min": box.y_min, "x_max": box.x_max, "y_max": box.y_max}


def predicted_boxes(answer: Any) -> list[Predicted]:
    """The boxes of a POST /predict answer."""
    return [
        Predicted(int(d["prediction_id"]), str(d["class_name"]), float(d["score"]), _box(d["box"]))
        for d in answer["detections"]
    ]


def ground_truth(labels: Any, classes: Collection[str]) -> list[Truth]:
    """The ground-truth boxes of a GET /images/{id}/labels answer in the model's
    classes; the same box given by several readers counts once."""
    found: dict[tuple[str, Box], None] = {}
    for label in labels["labels"]:
        if (
            label.get("origin") == LabelOrigin.GROUND_TRUTH.value
            and label.get("box") is not None
            and label["class_name"] in classes
        ):
            found[(label["class_name"], _box(label["box"]))] = None
    return [Truth(name, box) for name, box in found]


def feedback_request(decision: Decision, *, image_id: int, run_id: int) -> tuple[str, Any]:
    """The path and JSON body that file a decision (the feedback routes' contract)."""
    body: dict[str, Any] = {"verdict": decision.verdict, "simulated": True}
    if decision.class_name is not None:
        body["class_name"] = decision.class_name
    if decision.box is not None:
        body["box"] = _box_json(decision.box)
    if decision.verdict == "add":
        return f"/images/{image_id}/feedback", body | {"run_id": run_id}
    return f"/predictions/{decision.prediction_id}/feedback", body


def review_answer(
    client: httpx.Client, answer: Any, *, classes: Collection[str], accept_iou: float
) -> list[ReviewCall]:
    """Read the image's ground truth, judge the answer's boxes and file each verdict;
    every request the reviewer sent, in order (none raises)."""
    image_id, run_id = int(answer["image_id"]), int(answer["run_id"])
    read = send(client, "GET", f"/images/{image_id}/labels")
    calls = [ReviewCall("labels", image_id, None, None, read)]
    if not read.ok:
        return calls
    try:
        truths = ground_truth(read.body, classes)
    except (KeyError, TypeError, ValueError, AttributeError):
        return [ReviewCall("labels", image_id, None, None, read.malformed("not a labels answer"))]
    decisions = review_decisions(predicted_boxes(answer), truths, accept_iou=accept_iou)
    for decision in decisions:
        path, body = feedback_request(decision, image_id=image_id, run_id=run_id)
        filed = send(client, "POST", path, body)
        calls.append(
            ReviewCall("feedback", image_id, decision.verdict, decision.prediction_id, filed)
        )
    return calls
