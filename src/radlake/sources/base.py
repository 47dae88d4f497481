"""What every source adapter produces, and the one function that loads it.

An adapter only parses its layout (CSV quirks, folders, coordinate spaces) into
`SourceRecord`s. `load_source` then ingests the present files through the same
pipeline and quarantine rules as any folder, links each record to its image, keeps
the source's attributes, places the image under its patient, and writes the labels
(replacing the source's earlier ground truth for those images, so re-runs are safe).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from radlake.catalog.models import Image, Label, LabelClass, Source
from radlake.catalog.persist import (
    HierarchyEntry,
    add_quarantined,
    ensure_source,
    lock_source,
    upsert_hierarchy,
)
from radlake.catalog.upsert import insert_missing
from radlake.domain import Box, CataloguedInput, LabelOrigin, RejectedInput
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import input_key, path_of_key
from radlake.pipelines.executor import Executor
from radlake.pipelines.ingest import IngestLimits, IngestSummary, Progress, ingest
from radlake.storage.store import ObjectStore


@dataclass(frozen=True, slots=True)
class RawFinding:
    """A label as the source gives it; box in the source's coordinate space."""

    class_name: str
    class_id: int | None = None
    reader: str | None = None
    box: Box | None = None


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One image as a source describes it."""

    key: str
    path: Path | None
    patient_id: str | None = None
    modality: str | None = None
    view: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[RawFinding, ...] = ()
    # (width, height) of the space the boxes are given in; None: the stored image's own.
    box_space: tuple[float, float] | None = None
    missing_reason: str | None = None


@dataclass(frozen=True, slots=True)
class SourceLoad:
    """A parsed source: its records and its taxonomy (class id -> name)."""

    name: str
    kind: str
    records: Sequence[SourceRecord]
    taxonomy: Mapping[str, int | None] = field(default_factory=dict)
    quarantine_missing: bool = False


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

    def line(self) -> str:
        ingest_line = self.ingest.line() if self.ingest else "no image files present"
        return (
            f"{self.source}: {self.records} records, {self.linked} linked to images, "
            f"{len(self.missing)} without an image file, {self.labels} labels "
            f"({self.boxes} boxes); images: {ingest_line}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "records": self.records,
            "linked": self.linked,
            "missing": len(self.missing),
            "missing_examples": self.missing[:20],
            "labels": self.labels,
            "boxes": self.boxes,
            "ingest": self.ingest.as_dict() if self.ingest else None,
        }


def synthetic_uid(*parts: str) -> str:
    """A stable DICOM-style UID (2.25 + 128-bit hash) for sources without a hierarchy."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


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
    """Ingest a parsed source's images and write its metadata and labels; re-runnable.

    Raises:
        StorageError, CatalogError: the store or the catalog failed.
    """
    present = [r for r in load.records if r.path is not None]
    # Images are known by the key ingest gives their path (absolute, lossless).
    key_of = {str(r.path): input_key(str(r.path)) for r in present}
    sha_by_key = _already_catalogued(engine, list(key_of.values()))

    def remember(result: CataloguedInput | RejectedInput) -> None:
        if isinstance(result, CataloguedInput):
            sha_by_key[result.source_key] = result.sha256

    summary = None
    to_read = [path for path, key in key_of.items() if key not in sha_by_key]
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
        )
    missing = [r for r in load.records if r.path is None]

    def write(session: Session) -> tuple[int, int, int]:
        source_id = ensure_source(session, name=load.name, kind=load.kind)
        # Two loads of one source at once: the second waits here until the first has
        # committed, then replaces its labels instead of adding a second copy.
        lock_source(session, source_id)
        _write_taxonomy(session, source_id, load.taxonomy)
        if load.quarantine_missing and missing:
            add_quarantined(
                session,
                source_id=source_id,
                job_id=summary.job_id if summary else None,
                rejects=[
                    RejectedInput(r.key, r.missing_reason or "file listed in the source is absent")
                    for r in missing
                ],
            )
        images = _images_by_sha(session, list(sha_by_key.values()))
        linked = {
            r.key: images[sha_by_key[key_of[str(r.path)]]]
            for r in present
            if key_of[str(r.path)] in sha_by_key
        }
        _place_images(session, load, source_id, linked, pseudonymizer)
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


def _write_taxonomy(session: Any, source_id: int, taxonomy: Mapping[str, int | None]) -> None:
    known = set(session.scalars(select(LabelClass.name).where(LabelClass.source_id == source_id)))
    rows = [
        {"source_id": source_id, "name": name, "class_id": class_id}
        for name, class_id in sorted(taxonomy.items())
        if name not in known
    ]
    insert_missing(session, LabelClass, rows, key="name")


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


def _images_by_sha(session: Any, shas: Sequence[str]) -> dict[str, _Linked]:
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
        ).where(Image.sha256.in_(chunk))
        for sha, *values in session.execute(statement):
            found[sha] = _Linked(*values)
    return found


def _place_images(
    session: Any,
    load: SourceLoad,
    source_id: int,
    linked: Mapping[str, _Linked],
    pseudonymizer: Pseudonymizer,
) -> None:
    """Source attributes, modality/view and a patient -> study -> series per image.

    Images first ingested as a plain folder are claimed by the dataset that
    describes them, so selecting by that source finds them.
    """
    generic = set(session.scalars(select(Source.id).where(Source.kind == "folder")))
    records = {r.key: r for r in load.records}
    entries: dict[str, HierarchyEntry] = {}
    for key, image in linked.items():
        record = records[key]
        image.attributes = {**image.attributes, **record.attributes, "source_key": key}
        image.modality = image.modality or record.modality
        image.view_position = image.view_position or record.view
        if image.source_id in generic:
            image.source_id = source_id
        if image.series_id is None:  # DICOM keeps its real hierarchy
            pseudonym = pseudonymizer(record.patient_id) if record.patient_id else None
            entries[key] = HierarchyEntry(
                series_uid=synthetic_uid(load.name, key, "series"),
                study_uid=synthetic_uid(load.name, key, "study"),
                patient_pseudonym=pseudonym,
                modality=image.modality,
            )
    series_ids = upsert_hierarchy(session, list(entries.values()))
    for key, entry in entries.items():
        linked[key].series_id = series_ids[entry.series_uid]
    updates = [
        {
            "id": image.id,
            "attributes": image.attributes,
            "modality": image.modality,
            "view_position": image.view_position,
            "source_id": image.source_id,
            "series_id": image.series_id,
        }
        for image in linked.values()
    ]
    for batch in batches(updates, WRITE_BATCH):
        session.execute(update(Image), batch)  # bulk, by primary key


def _write_labels(
    session: Any, source_id: int, records: Sequence[SourceRecord], linked: Mapping[str, _Linked]
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
