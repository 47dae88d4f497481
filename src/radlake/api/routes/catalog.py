"""Series and studies with their images; jobs, quarantine, stats and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from radlake.api import schemas
from radlake.api.deps import Admin, DbSession, Viewer
from radlake.api.privacy import shown_key, shown_parameters
from radlake.api.serialize import image_item
from radlake.catalog.hierarchy import series_with_images, study_with_images
from radlake.catalog.queries import (
    image_counts,
    list_quarantine,
    recent_audit_events,
    recent_jobs,
)
from radlake.catalog.serialize import audit_row, job_row, quarantine_row

router = APIRouter(tags=["catalog"], responses=schemas.errors(401, 422))
Uid = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$", description="A DICOM UID")]


@router.get("/series/{uid}", response_model=schemas.SeriesImages, responses=schemas.errors(404))
def series(uid: Uid, caller: Viewer, session: DbSession) -> dict[str, Any]:
    """One series and its images in slice order."""
    found = series_with_images(session, series_uid=uid)
    if found is None:
        raise HTTPException(404, detail="no series with this UID")
    return {
        "series_uid": uid,
        "modality": found.series.modality,
        "description": found.series.description,
        "series_number": found.series.series_number,
        "images": [image_item(image, caller.role) for image in found.images],
    }


@router.get("/studies/{uid}", response_model=schemas.StudyImages, responses=schemas.errors(404))
def study(uid: Uid, caller: Viewer, session: DbSession) -> dict[str, Any]:
    """One study, its series and their images."""
    found = study_with_images(session, study_uid=uid)
    if found is None:
        raise HTTPException(404, detail="no study with this UID")
    return {
        "study_uid": uid,
        "series": [
            {
                "series_uid": member.series.series_uid,
                "modality": member.series.modality,
                "images": [image_item(image, caller.role) for image in member.images],
            }
            for member in found.series
        ],
    }


@router.get("/jobs", response_model=list[schemas.JobItem])
def jobs(
    caller: Viewer, session: DbSession, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    """Recent jobs with status, counts and timings."""
    return [
        job_row(job) | {"parameters": shown_parameters(job.parameters, caller.role)}
        for job in recent_jobs(session, limit=limit)
    ]


@router.get("/quarantine", response_model=list[schemas.QuarantineItem])
def quarantine(
    caller: Viewer, session: DbSession, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> list[dict[str, Any]]:
    """Rejected inputs with their reasons."""
    return [
        quarantine_row(row) | {"source_key": shown_key(row.source_key, caller.role)}
        for row in list_quarantine(session, limit=limit)
    ]


@router.get("/stats", response_model=schemas.Stats)
def stats(caller: Viewer, session: DbSession) -> dict[str, Any]:
    """Counts by modality, view, class, split and source (for filters and dashboards)."""
    return image_counts(session)


@router.get("/audit", response_model=list[schemas.AuditItem], responses=schemas.errors(403))
def audit_log(
    caller: Admin, session: DbSession, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> list[dict[str, Any]]:
    """Who downloaded or uploaded what, newest first (admins only)."""
    return [audit_row(event) for event in recent_audit_events(session, limit=limit)]
