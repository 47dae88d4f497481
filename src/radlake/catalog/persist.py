"""Writing ingest results into the catalog: batches, one transaction each.

The hierarchy (patient -> study -> series) and the images are inserted by natural
key with each dialect's own "insert unless present" (upsert.py) and one SELECT per
level, so a batch of hundreds of images costs a handful of round trips on any
backend, and any number of ingests can write the same rows at once without an error
or a duplicate. Every row is fitted to its columns first (fit.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from radlake.catalog.db import batches
from radlake.catalog.fit import clean_json, column_length, fit_row
from radlake.catalog.models import (
    Image,
    Patient,
    Quarantine,
    Rendition,
    Series,
    Source,
    Study,
    utcnow,
)
from radlake.catalog.serialize import rendition_fields
from radlake.catalog.upsert import insert_missing
from radlake.domain import CataloguedInput, ImageMetadata, RejectedInput


def ensure_source(session: Session, *, name: str, kind: str) -> int:
    """The id of the named source, created on first use (safe when two create it)."""
    row, _ = fit_row(Source, {"name": name, "kind": kind})
    found = session.scalar(select(Source.id).where(Source.name == row["name"]))
    if found is not None:
        return found
    insert_missing(session, Source, [row], key="name")
    return session.scalars(select(Source.id).where(Source.name == row["name"])).one()


def lock_source(session: Session, source_id: int) -> None:
    """Hold the source's row until the transaction ends: writers of one source's
    labels take turns (SQLite serializes every writer anyway)."""
    session.execute(select(Source.id).where(Source.id == source_id).with_for_update())


def _existing(session: Session, column: Any, keys: Sequence[str]) -> dict[str, int]:
    """Ids of the rows whose natural key (column) is among keys."""
    table_id = column.class_.id
    found: dict[str, int] = {}
    for chunk in batches(keys):
        found.update(
            (key, row_id)
            for key, row_id in session.execute(select(column, table_id).where(column.in_(chunk)))
        )
    return found


def _upsert(
    session: Session,
    model: type[Patient | Study | Series],
    key: str,
    rows: dict[str, dict[str, object]],
) -> dict[str, int]:
    """Ids by natural key, inserting the rows that are missing."""
    column = getattr(model, key)
    ids = _existing(session, column, sorted(rows))
    missing = [
        fit_row(model, {key: value, **rows[value]})[0] for value in sorted(rows) if value not in ids
    ]
    if missing:
        insert_missing(session, model, missing, key=key)
        ids.update(_existing(session, column, [str(row[key]) for row in missing]))
    return ids


@dataclass(frozen=True, slots=True)
class HierarchyEntry:
    """Where an image sits: patient (pseudonym) -> study -> series."""

    series_uid: str
    study_uid: str | None = None
    patient_pseudonym: str | None = None
    modality: str | None = None
    series_number: int | None = None
    description: str | None = None

    @classmethod
    def of(cls, metadata: ImageMetadata) -> HierarchyEntry | None:
        if not metadata.series_uid:
            return None
        return cls(
            metadata.series_uid,
            metadata.study_uid,
            metadata.patient_pseudonym,
            metadata.modality,
            metadata.series_number,
            metadata.series_description,
        )


def upsert_hierarchy(session: Session, entries: Sequence[HierarchyEntry | None]) -> dict[str, int]:
    """Create missing patients, studies and series; returns series ids by series UID."""
    known = [e for e in entries if e is not None]
    patients = _upsert(
        session,
        Patient,
        "pseudonym",
        {e.patient_pseudonym: {} for e in known if e.patient_pseudonym},
    )
    studies = _upsert(
        session,
        Study,
        "study_uid",
        {
            e.study_uid: {"patient_id": patients.get(e.patient_pseudonym or "")}
            for e in known
            if e.study_uid
        },
    )
    return _upsert(
        session,
        Series,
        "series_uid",
        {
            e.series_uid: {
                "study_id": studies.get(e.study_uid or ""),
                "modality": e.modality,
                "series_number": e.series_number,
                "description": e.description or None,
            }
            for e in known
        },
    )


def add_images(
    session: Session, *, source_id: int, job_id: int | None, items: Sequence[CataloguedInput]
) -> set[str]:
    """Insert images not yet catalogued; returns the sha256 of those this call inserted.

    Images whose sha256 is already catalogued (a re-run, the same bytes under two
    paths, or another ingest that got there first) are left alone: re-ingest is a
    no-op. Quarantine rows of these inputs are marked resolved.
    """
    unique = list({item.sha256: item for item in reversed(items)}.values())
    present = _existing(session, Image.sha256, [item.sha256 for item in unique])
    new = [item for item in unique if item.sha256 not in present]
    inserted: set[str] = set()
    if new:
        series = upsert_hierarchy(session, [HierarchyEntry.of(item.metadata) for item in new])
        rows = [
            _image_row(item, source_id, job_id, series.get(item.metadata.series_uid or ""))
            for item in new
        ]
        insert_missing(session, Image, rows, key="sha256")
        inserted = _inserted_by(session, [item.sha256 for item in new], job_id, present)
        ids = _existing(session, Image.sha256, sorted(inserted))
        renditions = [
            {"image_id": ids[item.sha256], **rendition_fields(r)}
            for item in new
            if item.sha256 in inserted
            for r in item.renditions
        ]
        insert_missing(session, Rendition, renditions, key="image_id")
    resolve_quarantined(
        session,
        sha256s=[item.sha256 for item in unique],
        source_keys=[item.source_key for item in unique],
    )
    return inserted


def _inserted_by(
    session: Session, sha256s: Sequence[str], job_id: int | None, present_before: dict[str, int]
) -> set[str]:
    """Which of sha256s this job inserted (another ingest may have won some of them)."""
    if job_id is None:
        return {sha for sha in sha256s if sha not in present_before}
    mine: set[str] = set()
    for chunk in batches(sha256s):
        mine.update(
            session.scalars(
                select(Image.sha256).where(Image.sha256.in_(chunk), Image.job_id == job_id)
            )
        )
    return mine


def resolve_quarantined(
    session: Session, *, sha256s: Sequence[str], source_keys: Sequence[str]
) -> None:
    """Quarantine rows of inputs now catalogued (same bytes, or a fixed file at the same
    path) stop counting as quarantined; the row stays, marked resolved."""
    now = utcnow()
    for column, values in ((Quarantine.sha256, sha256s), (Quarantine.source_key, source_keys)):
        for chunk in batches(sorted(set(values))):
            session.execute(
                update(Quarantine)
                .where(Quarantine.resolved_at.is_(None), column.in_(chunk))
                .values(resolved_at=now)
            )


def _image_row(
    item: CataloguedInput, source_id: int, job_id: int | None, series_id: int | None
) -> dict[str, object]:
    row, lost = fit_row(Image, _raw_image_row(item, source_id, job_id, series_id))
    # The series row is fitted on its own (upsert_hierarchy); its image keeps the
    # description whole when the series column had to cut it.
    description = item.metadata.series_description or ""
    limit = column_length(Series, "description")
    if limit is not None and len(description) > limit:
        lost["series_description"] = clean_json(description)
    if lost:
        # What did not fit a column stays whole and queryable in the attributes.
        row["attributes"] = {**row["attributes"], "full_values": lost}
    return row


def _raw_image_row(
    item: CataloguedInput, source_id: int, job_id: int | None, series_id: int | None
) -> dict[str, object]:
    m = item.metadata
    return {
        "sha256": item.sha256,
        "size_bytes": item.size_bytes,
        "format": m.format.value,
        "source_id": source_id,
        "source_key": item.source_key,
        "original_key": item.original_key,
        "series_id": series_id,
        "sop_instance_uid": m.sop_instance_uid,
        "sop_class_uid": m.sop_class_uid,
        "instance_number": m.instance_number,
        "modality": m.modality,
        "body_part": m.body_part,
        "view_position": m.view_position,
        "manufacturer": m.manufacturer,
        "manufacturer_model": m.manufacturer_model,
        "rows": m.rows,
        "columns": m.columns,
        "frames": m.frames,
        "slices": m.slices,
        "volumes": m.volumes,
        "pixel_spacing_row": m.pixel_spacing_row,
        "pixel_spacing_col": m.pixel_spacing_col,
        "slice_thickness": m.slice_thickness,
        "slice_location": m.slice_location,
        "slice_position": m.slice_position,
        "photometric": m.photometric,
        "bits_allocated": m.bits_allocated,
        "bits_stored": m.bits_stored,
        "transfer_syntax": m.transfer_syntax,
        "dtype": m.dtype,
        "orientation": m.orientation,
        "attributes": m.attributes,
        "job_id": job_id,
    }


def quarantine_fingerprint(source_key: str, sha256: str | None) -> str:
    """One quarantine row per (input path, content): stable across re-runs."""
    return hashlib.sha256(f"{source_key}\0{sha256 or ''}".encode()).hexdigest()


def add_quarantined(
    session: Session, *, source_id: int, job_id: int | None, rejects: Sequence[RejectedInput]
) -> int:
    """Record rejected inputs not yet recorded; returns how many rows were added."""
    by_fingerprint = {quarantine_fingerprint(r.source_key, r.sha256): r for r in rejects}
    known = _existing(session, Quarantine.fingerprint, sorted(by_fingerprint))
    rows = [
        fit_row(
            Quarantine,
            {
                "fingerprint": fingerprint,
                "source_id": source_id,
                "source_key": r.source_key,
                "sha256": r.sha256,
                "size_bytes": r.size_bytes,
                "reason": r.reason,
                "stored_key": r.stored_key,
                "job_id": job_id,
            },
        )[0]
        for fingerprint, r in sorted(by_fingerprint.items())
        if fingerprint not in known
    ]
    insert_missing(session, Quarantine, rows, key="fingerprint")
    return len(rows)
