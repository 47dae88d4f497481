"""Loading a parsed source (`radlake.sources`): its images, metadata and labels.

The present files go through `ingest` like any folder (same quarantine rules). What
the source says about each image (its attributes, modality and view where the file
has none, a patient -> study -> series for images without a DICOM hierarchy) is
added to the image's metadata before ingest writes its row, so a new image is
written once. Images catalogued before (a re-run, or files first ingested as a plain
folder and now claimed by the dataset) are updated where they differ. Then, under
the source's row lock, the taxonomy, the quarantine of absent files and the labels
(replacing the source's earlier ground truth for those images) are written in one
transaction, retried on transient faults.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session

from radlake.catalog.db import (
    DEFAULT_RETRY_SECONDS,
    WRITE_BATCH,
    batches,
    run_transaction,
    session_factory,
)
from radlake.catalog.fit import fit_row
from radlake.catalog.labels import write_classes
from radlake.catalog.models import Image, Label, Quarantine, Source, utcnow
from radlake.catalog.persist import (
    HierarchyEntry,
    add_quarantined,
    ensure_source,
    lock_source,
    quarantine_fingerprint,
    upsert_hierarchy,
)
from radlake.domain import Box, CataloguedInput, ImageMetadata, LabelOrigin, RejectedInput
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import input_key, path_of_key
from radlake.pipelines.executor import Executor
from radlake.pipelines.ingest import IngestLimits, IngestSummary, Outcome, Progress, ingest
from radlake.sources.base import SourceLoad, SourceRecord
from radlake.storage.store import ObjectStore


@dataclass(frozen=True, slots=True)
class SourceSummary:
    """What a source load did; ingest counts are the pipeline's own."""

    source: str
    records: int
    ingest: IngestSummary | None
    linked: int
    missing: list[str]
    labels: int
    boxes: int
    # Rows describing no image of their own (quarantined with their reason): rows naming
    # no file or a file listed before; `conflicts` are those listing it under another
    # patient.
    rejected_rows: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    layout: str | None = None

    def line(self) -> str:
        if self.ingest:
            ingest_line = self.ingest.line()
        elif self.linked:  # a re-run: every present file is catalogued already
            ingest_line = f"all {self.linked} present files already catalogued"
        else:
            ingest_line = "no image files present"
        return (
            f"{self.source}: {self.records} records, {self.linked} linked to images, "
            f"{len(self.missing)} without an image file, {self.labels} labels "
            f"({self.boxes} boxes), {len(self.rejected_rows)} rows rejected "
            f"({len(self.conflicts)} conflicts); images: {ingest_line}"
        )

    def warnings(self) -> list[str]:
        """What a person should look at (`radlake quarantine` lists each row)."""
        found = []
        if self.conflicts:
            found.append(
                f"{len(self.conflicts)} rows list a file that an earlier row lists under "
                "another patient; the earlier row is kept"
            )
        if len(self.rejected_rows) > len(self.conflicts):
            found.append(
                f"{len(self.rejected_rows) - len(self.conflicts)} rows name no file or "
                "repeat an earlier row"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "records": self.records,
            "linked": self.linked,
            "missing": len(self.missing),
            "missing_examples": self.missing[:20],
            "labels": self.labels,
            "boxes": self.boxes,
            "rejected_rows": len(self.rejected_rows),
            "conflicts": len(self.conflicts),
            "rejected_examples": self.rejected_rows[:20],
            "layout": self.layout,
            "warnings": self.warnings(),
            "ingest": self.ingest.as_dict() if self.ingest else None,
        }


def synthetic_uid(*parts: str) -> str:
    """A stable DICOM-style UID (2.25 + 128-bit hash) for sources without a hierarchy."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def described(
    metadata: ImageMetadata, *, source: str, record: SourceRecord, pseudonymizer: Pseudonymizer
) -> ImageMetadata:
    """An image's metadata with what its source says about it: the source's
    attributes, modality and view where the file has none, and a synthetic patient ->
    study -> series when the file carries no DICOM hierarchy (DICOM keeps its own)."""
    amended = replace(
        metadata,
        attributes={**metadata.attributes, **record.attributes, "source_key": record.key},
        modality=metadata.modality or record.modality,
        view_position=metadata.view_position or record.view,
    )
    if metadata.series_uid is not None:
        return amended
    entry = _synthetic_entry(source, record, amended.modality, pseudonymizer)
    return replace(
        amended,
        series_uid=entry.series_uid,
        study_uid=entry.study_uid,
        patient_pseudonym=entry.patient_pseudonym,
    )


def _synthetic_entry(
    source: str, record: SourceRecord, modality: str | None, pseudonymizer: Pseudonymizer
) -> HierarchyEntry:
    return HierarchyEntry(
        series_uid=synthetic_uid(source, record.key, "series"),
        study_uid=synthetic_uid(source, record.key, "study"),
        patient_pseudonym=pseudonymizer(record.patient_id) if record.patient_id else None,
        modality=modality,
    )


def _scaled(box: Box, space: tuple[float, float] | None, width: int, height: int) -> Box:
    if space is None:
        return box
    sx, sy = width / space[0], height / space[1]
    return Box(box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy)


def load_source(
    load: SourceLoad,
    *,
    engine: Engine,
    store: ObjectStore,
    pseudonymizer: Pseudonymizer,
    executor: Executor | None = None,
    workers: int | None = None,
    limits: IngestLimits | None = None,
    progress: Progress | None = None,
) -> SourceSummary:
    """Ingest a parsed source's images and write its metadata and labels; re-runnable,
    also by several processes at once.

    Raises:
        IngestFault: the store or the catalog kept failing while images were read.
        CatalogError: the catalog failed while the labels were written.
    """
    present = [r for r in load.records if r.path is not None]
    # Images are known by the key ingest gives their path (absolute, lossless).
    input_of = {r.key: input_key(str(r.path)) for r in present}
    record_of = {input_of[r.key]: r for r in present}
    sha_by_input = _already_catalogued(engine, sorted(set(input_of.values())))

    def amend(item: CataloguedInput) -> CataloguedInput:
        record = record_of.get(item.source_key)
        if record is None:
            return item
        metadata = described(
            item.metadata, source=load.name, record=record, pseudonymizer=pseudonymizer
        )
        return replace(item, metadata=metadata)

    def remember(result: Outcome) -> None:
        if isinstance(result, CataloguedInput):
            sha_by_input[result.source_key] = result.sha256

    summary = None
    to_read = sorted({str(r.path) for r in present if input_of[r.key] not in sha_by_input})
    if to_read:
        summary = ingest(
            to_read,
            engine=engine,
            store=store,
            pseudonymizer=pseudonymizer,
            source=load.name,
            source_kind=load.kind,
            executor=executor,
            workers=workers,
            limits=limits,
            progress=progress,
            on_result=remember,
            amend=amend,
        )
    missing = [r for r in load.records if r.path is None]
    job_id = summary.job_id if summary else None

    def write(session: Session) -> tuple[int, int, int]:
        source_id = ensure_source(session, name=load.name, kind=load.kind)
        # Two loads of one source at once: the second waits here until the first has
        # committed, then replaces its labels instead of adding a second copy.
        lock_source(session, source_id)
        write_classes(session, source_id=source_id, taxonomy=load.taxonomy)
        rejects = [RejectedInput(row.key, row.reason) for row in load.rejected_rows]
        if load.quarantine_missing:
            rejects += [
                RejectedInput(
                    r.listed_as or r.key, r.missing_reason or "file listed in the source is absent"
                )
                for r in missing
            ]
        _resolve_fixed(session, source_id, load, present=[r.listed_as or r.key for r in present])
        if rejects:
            _reopen(session, source_id, rejects)
            add_quarantined(session, source_id=source_id, job_id=job_id, rejects=rejects)
        images = _images_by_sha(session, sorted(set(sha_by_input.values())))
        linked = {
            r.key: images[sha_by_input[input_of[r.key]]]
            for r in present
            if input_of[r.key] in sha_by_input
        }
        # Rows this job inserted were written with their record's metadata already.
        earlier = {k: v for k, v in linked.items() if job_id is None or v.job_id != job_id}
        _update_catalogued(session, load, source_id, earlier, pseudonymizer)
        return (len(linked), *_write_labels(session, source_id, load.records, linked))

    retry_seconds = limits.retry_seconds if limits else DEFAULT_RETRY_SECONDS
    linked_count, labels, boxes = run_transaction(engine, write, retry_seconds=retry_seconds)
    return SourceSummary(
        source=load.name,
        records=len(load.records),
        ingest=summary,
        linked=linked_count,
        missing=sorted(r.key for r in missing),
        labels=labels,
        boxes=boxes,
        rejected_rows=[row.key for row in load.rejected_rows],
        conflicts=[row.key for row in load.rejected_rows if row.conflict],
        layout=load.layout,
    )


def _resolve_fixed(
    session: Session, source_id: int, load: SourceLoad, *, present: Sequence[str]
) -> None:
    """Mark resolved what this source's earlier loads quarantined and this one no longer
    finds: files listed as absent that are present now, rows rejected before that the
    fixed CSV no longer holds (quarantine lists what still needs a person)."""
    now = utcnow()
    still_open = (Quarantine.source_id == source_id, Quarantine.resolved_at.is_(None))
    fixed: list[int] = []
    for chunk in batches(sorted(set(present))):
        fixed += session.scalars(
            select(Quarantine.id).where(*still_open, Quarantine.source_key.in_(chunk))
        )
    if load.row_key_prefix:
        rejected_now = {row.key for row in load.rejected_rows}
        earlier = session.execute(
            select(Quarantine.id, Quarantine.source_key).where(
                *still_open, Quarantine.source_key.startswith(load.row_key_prefix, autoescape=True)
            )
        )
        fixed += [row_id for row_id, key in earlier if key not in rejected_now]
    for ids in batches(fixed):
        session.execute(update(Quarantine).where(Quarantine.id.in_(ids)).values(resolved_at=now))


def _reopen(session: Session, source_id: int, rejects: Sequence[RejectedInput]) -> None:
    """A problem resolved once and back again (the file deleted again, the conflict
    written again) is open again, with today's reason: its row is found by fingerprint,
    so add_quarantined alone would leave it resolved."""
    reasons = {quarantine_fingerprint(r.source_key, r.sha256): r.reason for r in rejects}
    for chunk in batches(sorted(reasons)):
        rows = session.execute(
            select(Quarantine.id, Quarantine.fingerprint).where(
                Quarantine.source_id == source_id,
                Quarantine.resolved_at.is_not(None),
                Quarantine.fingerprint.in_(chunk),
            )
        ).all()
        for row_id, fingerprint in rows:
            reason = fit_row(Quarantine, {"reason": reasons[fingerprint]})[0]["reason"]
            session.execute(
                update(Quarantine)
                .where(Quarantine.id == row_id)
                .values(resolved_at=None, reason=reason)
            )


def _already_catalogued(engine: Engine, keys: Sequence[str]) -> dict[str, str]:
    """sha256 of files catalogued before under the same path and size (rsync's quick
    check): a dataset re-described by its CSV does not re-read every image."""
    found: dict[str, str] = {}
    with session_factory(engine)() as session:
        for chunk in batches(keys):
            for key, sha, size in session.execute(
                select(Image.source_key, Image.sha256, Image.size_bytes).where(
                    Image.source_key.in_(chunk)
                )
            ):
                with contextlib.suppress(OSError):
                    if os.stat(path_of_key(key)).st_size == size:
                        found[key] = sha
    return found


@dataclass(slots=True)
class _Linked:
    """The columns of a linked image that a source load reads or changes."""

    id: int
    columns: int
    rows: int
    source_id: int
    series_id: int | None
    modality: str | None
    view_position: str | None
    attributes: dict[str, Any]
    job_id: int | None

    def values(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "attributes": self.attributes,
            "modality": self.modality,
            "view_position": self.view_position,
            "source_id": self.source_id,
            "series_id": self.series_id,
        }


def _images_by_sha(session: Session, shas: Sequence[str]) -> dict[str, _Linked]:
    # Plain rows, not ORM objects: a dataset links tens of thousands of images.
    found: dict[str, _Linked] = {}
    for chunk in batches(shas):
        statement = select(
            Image.sha256,
            Image.id,
            Image.columns,
            Image.rows,
            Image.source_id,
            Image.series_id,
            Image.modality,
            Image.view_position,
            Image.attributes,
            Image.job_id,
        ).where(Image.sha256.in_(chunk))
        for sha, *values in session.execute(statement):
            found[sha] = _Linked(*values)
    return found


def _update_catalogued(
    session: Session,
    load: SourceLoad,
    source_id: int,
    linked: Mapping[str, _Linked],
    pseudonymizer: Pseudonymizer,
) -> None:
    """The source's metadata on images catalogued before this load; only rows that
    differ are written (a re-run of an unchanged source writes no image).

    Images first ingested as a plain folder are claimed by the dataset that
    describes them, so selecting by that source finds them.
    """
    generic = set(session.scalars(select(Source.id).where(Source.kind == "folder")))
    records = {r.key: r for r in load.records}
    before = {key: image.values() for key, image in linked.items()}
    entries: dict[str, HierarchyEntry] = {}
    for key, image in linked.items():
        record = records[key]
        image.attributes = {**image.attributes, **record.attributes, "source_key": key}
        image.modality = image.modality or record.modality
        image.view_position = image.view_position or record.view
        if image.source_id in generic:
            image.source_id = source_id
        if image.series_id is None:  # DICOM keeps its real hierarchy
            entries[key] = _synthetic_entry(load.name, record, image.modality, pseudonymizer)
    series_ids = upsert_hierarchy(session, list(entries.values()))
    for key, entry in entries.items():
        linked[key].series_id = series_ids[entry.series_uid]
    now = utcnow()
    updates = [
        image.values() | {"updated_at": now}
        for key, image in linked.items()
        if image.values() != before[key]
    ]
    for batch in batches(updates, WRITE_BATCH):
        session.execute(update(Image), batch)  # bulk, by primary key


def _write_labels(
    session: Session, source_id: int, records: Sequence[SourceRecord], linked: Mapping[str, _Linked]
) -> tuple[int, int]:
    keys = [r.key for r in records]
    for chunk in batches(keys):
        session.execute(
            delete(Label).where(
                Label.source_id == source_id,
                Label.origin == LabelOrigin.GROUND_TRUTH.value,
                Label.source_image_key.in_(chunk),
            )
        )
    rows: list[dict[str, Any]] = []
    boxes = 0
    for record in records:
        image = linked.get(record.key)
        for finding in record.findings:
            row: dict[str, Any] = {
                "source_id": source_id,
                "source_image_key": record.key,
                "image_id": image.id if image else None,
                "class_name": finding.class_name,
                "class_id": finding.class_id,
                "reader": finding.reader,
                "origin": LabelOrigin.GROUND_TRUTH.value,
                # every row carries every column: one executemany, one statement shape
                "x_min": None,
                "y_min": None,
                "x_max": None,
                "y_max": None,
            }
            if finding.box is not None:
                box = (
                    _scaled(finding.box, record.box_space, image.columns, image.rows)
                    if image
                    else finding.box
                )
                row |= {
                    "x_min": box.x_min,
                    "y_min": box.y_min,
                    "x_max": box.x_max,
                    "y_max": box.y_max,
                }
                boxes += 1
            rows.append(row)
    for batch in batches(rows, WRITE_BATCH):
        session.execute(insert(Label), batch)
    return len(rows), boxes
