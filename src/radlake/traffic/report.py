"""The simulation's summary: per stage and in total, requests, errors by status,
requests/s, client-measured latency percentiles, the server's own mean latency, and
the reviewer's verdicts filed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radlake.traffic.load import LoadResult, Sent

PERCENTS = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class Row:
    """One stage (or the total: stage None)."""

    stage: int | None
    workers: int
    requests: int
    errors: dict[str, int]
    seconds: float
    client_ms: dict[int, float]  # percent -> ms; empty when nothing was sent
    server_ms: float | None  # mean latency_ms of the answers
    reviews: dict[str, int]  # verdict -> filed
    review_errors: dict[str, int]
    label_reads: int

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "workers": self.workers,
            "requests": self.requests,
            "errors": dict(sorted(self.errors.items())),
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.per_second, 3),
            **{
                f"p{p}_ms": round(self.client_ms[p], 2) if self.client_ms else None
                for p in PERCENTS
            },
            "server_mean_ms": None if self.server_ms is None else round(self.server_ms, 2),
            "reviews": dict(sorted(self.reviews.items())),
            "review_errors": dict(sorted(self.review_errors.items())),
            "label_reads": self.label_reads,
        }


def percentiles(values: Sequence[float]) -> dict[int, float]:
    """p50, p95 and p99 of values (numpy's linear interpolation); {} for none."""
    if not values:
        return {}
    found = np.percentile(np.asarray(values, dtype=np.float64), PERCENTS)
    return {p: float(v) for p, v in zip(PERCENTS, found, strict=True)}


def _row(stage: int | None, workers: int, sent: Sequence[Sent], seconds: float) -> Row:
    errors: Counter[str] = Counter()
    reviews: Counter[str] = Counter()
    review_errors: Counter[str] = Counter()
    reads = 0
    for one in sent:
        if (key := one.call.error_key) is not None:
            errors[key] += 1
        for review in one.reviews:
            reads += review.kind == "labels"
            if (review_key := review.call.error_key) is not None:
                review_errors[f"{review.kind} {review_key}"] += 1
            elif review.verdict is not None:
                reviews[review.verdict] += 1
    server = [ms for one in sent if (ms := one.latency_ms) is not None]
    return Row(
        stage=stage,
        workers=workers,
        requests=len(sent),
        errors=dict(errors),
        seconds=seconds,
        client_ms=percentiles([one.call.client_ms for one in sent]),
        server_ms=float(np.mean(server)) if server else None,
        reviews=dict(reviews),
        review_errors=dict(review_errors),
        label_reads=reads,
    )


def summarize(result: LoadResult) -> list[Row]:
    """A row per stage that ran, then the total (workers: the most at once)."""
    rows = [
        _row(
            stage.stage,
            stage.workers,
            [one for one in result.sent if one.stage == stage.stage],
            stage.seconds,
        )
        for stage in result.stages
    ]
    peak = max((stage.workers for stage in result.stages), default=0)
    total = sum(stage.seconds for stage in result.stages)
    return [*rows, _row(None, peak, result.sent, total)]


def _errors_text(errors: dict[str, int]) -> str:
    count = sum(errors.values())
    if not count:
        return "0"
    return f"{count} ({', '.join(f'{key}: {n}' for key, n in sorted(errors.items()))})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(rows: Sequence[Row]) -> list[str]:
    """The printed report: a header and a line per row (the total last)."""
    header = (
        f"{'stage':>5} {'workers':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'server ms':>9}  errors"
    )
    lines = [header]
    for row in rows:
        label = "total" if row.stage is None else str(row.stage)
        lines.append(
            f"{label:>5} {row.workers:>7} {row.requests:>8} {row.per_second:>7.2f} "
            f"{_ms(row.client_ms.get(50)):>7} {_ms(row.client_ms.get(95)):>7} "
            f"{_ms(row.client_ms.get(99)):>7} {_ms(row.server_ms):>9}  {_errors_text(row.errors)}"
        )
    return lines


def review_line(total: Row) -> str:
    """The reviewer's work over the run, counted apart from the predictions."""
    filed = sum(total.reviews.values())
    verdicts = ", ".join(f"{verdict} {n}" for verdict, n in sorted(total.reviews.items()))
    return (
        f"reviews: {filed} verdicts filed ({verdicts or 'none'}) after {total.label_reads} "
        f"label reads; {_errors_text(total.review_errors)} review errors"
    )
