"""Series and studies with their images; jobs, quarantine, stats and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import select

from radlake.api.deps import Admin, DbSession, Viewer
from radlake.api.privacy import shown_key, shown_parameters
from radlake.api.serialize import image_item
from radlake.catalog.models import (
    Series,
    Study,
)
from radlake.catalog.queries import (
    find_images,
    image_counts,
    list_quarantine,
    recent_audit_events,
    recent_jobs,
)
from radlake.catalog.serialize import job_row, quarantine_row
from radlake.curation.filters import ImageFilter

router = APIRouter(tags=["catalog"])
Uid = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$", description="A DICOM UID")]


@router.get("/series/{uid}")
def series(uid: Uid, caller: Viewer, session: DbSession) -> dict[str, Any]:
    """One series and its images in slice order."""
    found = session.scalar(select(Series).where(Series.series_uid == uid))
    if found is None:
        raise HTTPException(404, detail="no series with this UID")
    images = find_images(session, selection=ImageFilter(series_uid=uid), limit=None)
    return {
        "series_uid": uid,
        "modality": found.modality,
        "description": found.description,
        "series_number": found.series_number,
        "images": [image_item(image, caller.role) for image in images],
    }


@router.get("/studies/{uid}")
def study(uid: Uid, caller: Viewer, session: DbSession) -> dict[str, Any]:
    """One study, its series and their images."""
    found = session.scalar(select(Study).where(Study.study_uid == uid))
    if found is None:
        raise HTTPException(404, detail="no study with this UID")
    members = session.scalars(select(Series).where(Series.study_id == found.id).order_by(Series.id))
    by_series: dict[int | None, list[dict[str, Any]]] = {}
    for image in find_images(session, selection=ImageFilter(study_uid=uid), limit=None):
        by_series.setdefault(image.series_id, []).append(image_item(image, caller.role))
    return {
        "study_uid": uid,
        "series": [
            {"series_uid": s.series_uid, "modality": s.modality, "images": by_series.get(s.id, [])}
            for s in members
        ],
    }


@router.get("/jobs")
def jobs(
    caller: Viewer, session: DbSession, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    """Recent jobs with status, counts and timings."""
    return [
        job_row(job) | {"parameters": shown_parameters(job.parameters, caller.role)}
        for job in recent_jobs(session, limit=limit)
    ]


@router.get("/quarantine")
def quarantine(
    caller: Viewer, session: DbSession, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> list[dict[str, Any]]:
    """Rejected inputs with their reasons."""
    return [
        quarantine_row(row) | {"source_key": shown_key(row.source_key, caller.role)}
        for row in list_quarantine(session, limit=limit)
    ]


@router.get("/stats")
def stats(caller: Viewer, session: DbSession) -> dict[str, Any]:
    """Counts by modality, view, class, split and source (for filters and dashboards)."""
    return image_counts(session)


@router.get("/audit")
def audit_log(
    caller: Admin, session: DbSession, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> list[dict[str, Any]]:
    """Who downloaded or uploaded what, newest first (admins only)."""
    rows = recent_audit_events(session, limit=limit)
    return [
        {
            "id": e.id,
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "detail": e.detail,
            "created_at": e.created_at,
        }
        for e in rows
    ]
