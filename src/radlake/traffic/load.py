"""Stages of concurrent workers sending POST /predict, one request at a time each.

A stage starts its workers (threads, each with its own keep-alive httpx client) and
ends stage_seconds later: no worker starts a request after the deadline, and the
requests in flight then finish (each bounded by the per-request timeout), so a stage
lasts at most stage_seconds + timeout (+ the review of its last answers). Workers take
the split's images in turn through one shared counter, which also enforces
max_requests over the whole run; once that is spent no further stage starts.
Ctrl-C (KeyboardInterrupt in the calling thread) stops every worker after its
current request and ends the run with what was recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from radlake.traffic.calls import Call, send
from radlake.traffic.reviewer import ReviewCall, predicted_boxes, review_answer

DEFAULT_TIMEOUT = 30.0
# After a request that got no answer at all (refused, dropped, timed out) a worker
# waits this long: a dead server is not hammered in a tight loop and the results file
# stays small, while each stage still counts its errors.
NO_ANSWER_PAUSE = 0.5
_JOIN_POLL = 0.2  # the main thread waits in slices so Ctrl-C is seen at once


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send, where, and how hard."""

    url: str
    token: str
    model: str
    image_ids: tuple[int, ...]
    pattern: tuple[int, ...]
    stage_seconds: float
    max_requests: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    review: bool = False
    classes: tuple[str, ...] = ()  # the model's: the reviewer judges these boxes
    accept_iou: float = 0.75


@dataclass(frozen=True, slots=True)
class Sent:
    """One POST /predict: where in the run it was, its outcome and its reviews."""

    stage: int
    workers: int
    worker: int
    image_id: int
    started: float  # seconds since the run began
    call: Call
    reviews: tuple[ReviewCall, ...] = ()

    @property
    def latency_ms(self) -> float | None:
        return float(self.call.body["latency_ms"]) if self.call.ok else None

    def lines(self) -> list[dict[str, Any]]:
        """The results file's lines: the request, then each of its review requests."""
        body = self.call.body if self.call.ok else None
        where = {"stage": self.stage, "workers": self.workers, "worker": self.worker}
        lines: list[dict[str, Any]] = [
            {
                "kind": "predict",
                **where,
                "image_id": self.image_id,
                "t": round(self.started, 4),
                "status": self.call.status,
                "client_ms": round(self.call.client_ms, 3),
                "latency_ms": self.latency_ms,
                "run_id": None if body is None else body["run_id"],
                "boxes": None if body is None else len(body["detections"]),
                "error": self.call.error,
            }
        ]
        for review in self.reviews:
            lines.append(
                {
                    "kind": review.kind,
                    **where,
                    "image_id": review.image_id,
                    "verdict": review.verdict,
                    "prediction_id": review.prediction_id,
                    "status": review.call.status,
                    "client_ms": round(review.call.client_ms, 3),
                    "error": review.call.error,
                }
            )
        return lines


@dataclass(frozen=True, slots=True)
class StageTime:
    stage: int
    workers: int
    seconds: float


@dataclass
class LoadResult:
    """Every request sent, the stages that ran and whether Ctrl-C ended the run."""

    sent: list[Sent] = field(default_factory=list)
    stages: list[StageTime] = field(default_factory=list)
    interrupted: bool = False


class _Tickets:
    """Request numbers shared by every worker: the image each takes, the total cap."""

    def __init__(self, limit: int | None) -> None:
        self._next = 0
        self._limit = limit
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._limit is not None and self._next >= self._limit:
                return None
            number, self._next = self._next, self._next + 1
            return number

    @property
    def spent(self) -> bool:
        with self._lock:
            return self._limit is not None and self._next >= self._limit


def run_load(
    plan: Plan,
    record: Callable[[Sent], None] | None = None,
    on_stage: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Run every stage of the plan; record(sent) is called (from the worker threads,
    one at a time) as each request and its reviews complete, on_stage(stage, workers)
    as each stage starts.

    Raises:
        ValueError: a plan without images or stages, or a non-positive duration.
    """
    if not plan.image_ids or not plan.pattern or plan.stage_seconds <= 0 or plan.timeout <= 0:
        raise ValueError("a plan needs images, stages and positive durations")
    result = LoadResult()
    lock = threading.Lock()
    tickets = _Tickets(plan.max_requests)
    stop = threading.Event()
    began = time.monotonic()

    def keep(sent: Sent) -> None:
        with lock:
            result.sent.append(sent)
            if record is not None:
                record(sent)

    for stage, workers in enumerate(plan.pattern, start=1):
        if tickets.spent:
            break
        started = time.monotonic()
        deadline = started + plan.stage_seconds
        threads = [
            threading.Thread(
                target=_work,
                args=(plan, stage, workers, worker, deadline, tickets, stop, began, keep),
                name=f"simulate-{stage}-{worker}",
                daemon=True,
            )
            for worker in range(1, workers + 1)
        ]
        try:
            if on_stage is not None:
                on_stage(stage, workers)
            for thread in threads:
                thread.start()
            _join(threads)
        except KeyboardInterrupt:
            stop.set()
            result.interrupted = True
            _join(threads)  # each finishes its request in flight (bounded by the timeout)
        result.stages.append(StageTime(stage, workers, time.monotonic() - started))
        if result.interrupted:
            break
    return result


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        while thread.is_alive():
            thread.join(_JOIN_POLL)


def _work(
    plan: Plan,
    stage: int,
    workers: int,
    worker: int,
    deadline: float,
    tickets: _Tickets,
    stop: threading.Event,
    began: float,
    keep: Callable[[Sent], None],
) -> None:
    """One worker: the next image, POST /predict, review the answer, again."""
    headers = {"Authorization": f"Bearer {plan.token}"}
    with httpx.Client(base_url=plan.url, headers=headers, timeout=plan.timeout) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            number = tickets.take()
            if number is None:
                return
            image_id = plan.image_ids[number % len(plan.image_ids)]
            started = time.monotonic() - began
            call = _checked(
                send(client, "POST", "/predict", {"model": plan.model, "image_id": image_id})
            )
            reviews: list[ReviewCall] = []
            if plan.review and call.ok:
                reviews = review_answer(
                    client, call.body, classes=plan.classes, accept_iou=plan.accept_iou
                )
            keep(Sent(stage, workers, worker, image_id, started, call, tuple(reviews)))
            if call.status is None:
                stop.wait(min(NO_ANSWER_PAUSE, max(0.0, deadline - time.monotonic())))


def _checked(call: Call) -> Call:
    """A 2xx whose body is not a prediction (a --url that is not radlake) is an error."""
    if not call.ok:
        return call
    try:
        float(call.body["latency_ms"])
        int(call.body["run_id"])
        int(call.body["image_id"])
        predicted_boxes(call.body)
    except (KeyError, TypeError, ValueError):
        return call.malformed("not a POST /predict answer")
    return call
