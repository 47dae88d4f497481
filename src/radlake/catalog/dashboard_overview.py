"""The Overview dashboard's figures, from the catalog (issue 14).

Image counts come from the image metadata catalog.dashboard_tables keeps as columns
(numpy value counts); jobs and quarantine are GROUP BY queries run by the database,
and only bounded lists (recent jobs, top quarantine reasons) are walked in Python.
Store size is what the catalog records: original bytes per format and the bytes of
kept quarantined inputs (renditions are not sized in the catalog, and listing a store
of 100,000 objects on every page view would cost seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radlake.catalog.dashboard_tables import IMAGES
from radlake.catalog.models import Image, Job, Quarantine, Source

RECENT_JOBS = 50
TOP_REASONS = 20
EXAMPLES_PER_REASON = 3
# The count that says how much work a job did, per kind (job.counts keys).
WORK_COUNTS = {
    "ingest": ("catalogued", "already_present", "quarantined"),
    "predict": ("predicted",),
    "verify": ("images",),
    "simulate": ("requests",),
    "retrain_set": ("images",),
}


@dataclass(frozen=True, slots=True)
class JobRow:
    """One recent job and its rate (work items per second), None when unknown."""

    id: int
    kind: str
    status: str
    started_at: str
    seconds: float | None
    items: int | None
    per_second: float | None


@dataclass(frozen=True, slots=True)
class ReasonRow:
    """A quarantine reason, how many open rows give it, and a few of their inputs."""

    reason: str
    count: int
    examples: tuple[str, ...]  # source keys: input paths, shown to curators only


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the Overview page shows."""

    images: int
    by: dict[str, dict[str, int]]  # modality, format, source, view -> value -> images
    per_day: list[tuple[str, int]]  # ingest day (UTC) -> images catalogued
    jobs: list[JobRow]
    jobs_by_kind: dict[str, dict[str, int]]  # kind -> status -> jobs
    quarantine_open: int
    reasons: list[ReasonRow]
    original_bytes: dict[str, int]  # format -> bytes of originals
    quarantined_bytes: int


def _work_items(kind: str, counts: dict[str, Any]) -> int | None:
    keys = WORK_COUNTS.get(kind)
    values = [counts.get(key) for key in keys] if keys else []
    numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return sum(numbers) if numbers else None


def _job_row(job: Job) -> JobRow:
    items = _work_items(job.kind, job.counts or {})
    rate = items / job.seconds if items is not None and job.seconds else None
    return JobRow(
        job.id,
        job.kind,
        job.status,
        job.started_at.isoformat(timespec="seconds"),
        job.seconds,
        items,
        rate,
    )


def _value_counts(values: NDArray[Any], names: dict[Any, str] | None = None) -> dict[str, int]:
    """Count of each value, in value order; an empty value counts as "unknown"."""
    found, counts = np.unique(values, return_counts=True)
    named = ((names.get(v, str(v)) if names else (v or "unknown")) for v in found.tolist())
    return dict(zip(named, counts.tolist(), strict=True))


def _per_day(created: NDArray[np.float64]) -> list[tuple[str, int]]:
    days = (created[np.isfinite(created)] // 86400).astype(np.int64)
    found, counts = np.unique(days, return_counts=True)
    return [
        (datetime.fromtimestamp(day * 86400, UTC).date().isoformat(), n)
        for day, n in zip(found.tolist(), counts.tolist(), strict=True)
    ]


def _reasons(session: Session) -> list[ReasonRow]:
    open_rows = Quarantine.resolved_at.is_(None)
    top = session.execute(
        select(Quarantine.reason, func.count(Quarantine.id))
        .where(open_rows)
        .group_by(Quarantine.reason)
        .order_by(func.count(Quarantine.id).desc(), Quarantine.reason)
        .limit(TOP_REASONS)
    ).all()
    rows = []
    for reason, count in top:
        examples = session.scalars(
            select(Quarantine.source_key)
            .where(open_rows, Quarantine.reason == reason)
            .order_by(Quarantine.id.desc())
            .limit(EXAMPLES_PER_REASON)
        )
        rows.append(ReasonRow(reason, int(count), tuple(examples)))
    return rows


def overview(session: Session) -> Overview:
    """The Overview page's figures (see the module docstring)."""
    images = IMAGES.columns(session)
    sources = {i: n for i, n in session.execute(select(Source.id, Source.name))}
    jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(RECENT_JOBS))
    by_kind: dict[str, dict[str, int]] = {}
    for kind, status, n in session.execute(
        select(Job.kind, Job.status, func.count(Job.id)).group_by(Job.kind, Job.status)
    ):
        by_kind.setdefault(kind, {})[status] = int(n)
    open_count = session.scalar(
        select(func.count(Quarantine.id)).where(Quarantine.resolved_at.is_(None))
    )
    bytes_by_format = session.execute(
        select(Image.format, func.coalesce(func.sum(Image.size_bytes), 0)).group_by(Image.format)
    )
    kept = session.scalar(
        select(func.coalesce(func.sum(Quarantine.size_bytes), 0)).where(
            Quarantine.stored_key.is_not(None)
        )
    )
    return Overview(
        images=len(images["id"]),
        by={
            "modality": _value_counts(images["modality"]),
            "format": _value_counts(images["format"]),
            "source": _value_counts(images["source_id"], sources),
            "view": _value_counts(images["view"]),
        },
        per_day=_per_day(images["created"]),
        jobs=[_job_row(job) for job in jobs],
        jobs_by_kind=dict(sorted(by_kind.items())),
        quarantine_open=int(open_count or 0),
        reasons=_reasons(session),
        original_bytes={str(f): int(b) for f, b in bytes_by_format},
        quarantined_bytes=int(kept or 0),
    )
