"""Catalog rows as plain dicts, for --json output and (later) API responses."""

from __future__ import annotations

from typing import Any

from radlake.catalog.models import AuditEvent, Cohort, DatasetVersion, Image, Job, Quarantine

SUMMARY_FIELDS = ("id", "format", "modality", "manufacturer", "rows", "columns", "frames", "slices")
RENDITION_FIELDS = ("name", "key", "width", "height", "window_center", "window_width")


def rendition_fields(rendition: object) -> dict[str, Any]:
    """The fields of a rendition (a catalog row or a domain RenditionInfo)."""
    return {name: getattr(rendition, name) for name in RENDITION_FIELDS}


def image_summary(image: Image) -> dict[str, Any]:
    """The fields a listing shows."""
    row = {name: getattr(image, name) for name in SUMMARY_FIELDS}
    row["series_uid"] = image.series.series_uid if image.series else None
    row["instance_number"] = image.instance_number
    row["source_key"] = image.source_key
    return row


def image_detail(image: Image) -> dict[str, Any]:
    """Every catalogued field of one image, its hierarchy and renditions."""
    columns = {column.key: getattr(image, column.key) for column in Image.__table__.columns}
    series = image.series
    study = series.study if series else None
    columns["source"] = image.source.name if image.source else None
    columns["series"] = (
        None
        if series is None
        else {
            "series_uid": series.series_uid,
            "series_number": series.series_number,
            "description": series.description,
            "modality": series.modality,
        }
    )
    columns["study_uid"] = study.study_uid if study else None
    columns["patient_pseudonym"] = study.patient.pseudonym if study and study.patient else None
    columns["renditions"] = [rendition_fields(r) for r in image.renditions]
    return columns


def quarantine_row(row: Quarantine) -> dict[str, Any]:
    """A rejected input with its reason."""
    return {
        "id": row.id,
        "source": row.source.name if row.source else None,
        "source_key": row.source_key,
        "reason": row.reason,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "stored_key": row.stored_key,
        "job_id": row.job_id,
        "created_at": row.created_at,
        "resolved_at": row.resolved_at,
    }


def job_row(job: Job) -> dict[str, Any]:
    """One job with its counts and timings."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "parameters": job.parameters,
        "counts": job.counts,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "seconds": job.seconds,
        "error": job.error,
    }


def version_row(version: DatasetVersion) -> dict[str, Any]:
    """A dataset version: selection, split spec, seed, label set, split counts, hash."""
    return {
        "version": version.version,
        "selection": version.selection,
        "split_spec": version.split_spec.get("spec"),
        "seed": version.seed,
        "label_set": version.label_set,
        "fusion": version.fusion,
        "classes": version.classes.get("names", []),
        "splits": version.counts,
        "leakage": version.leakage,
        "warnings": list(version.split_spec.get("warnings", [])),
        "manifest_hash": version.manifest_hash,
        "created_at": version.created_at,
    }


def audit_row(event: AuditEvent) -> dict[str, Any]:
    """Who did what to which target, when, with the action's details."""
    return {
        "id": event.id,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "detail": event.detail,
        "created_at": event.created_at,
    }


def cohort_row(cohort: Cohort) -> dict[str, Any]:
    """A saved cohort: its name, filter, author and time."""
    return {
        "name": cohort.name,
        "filter": cohort.selection,
        "created_by": cohort.created_by,
        "created_at": cohort.created_at,
    }
