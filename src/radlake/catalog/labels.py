"""Label queries and writes: an image's labels, imported labels, labels by source.

Keyword-only functions, session first. Every read names the origin it reads
(ground truth, prediction, feedback, consensus; None reads all and each row says
its own). Labels whose image has not arrived (image_id NULL, a labels-only source
such as VinBigData's train.csv) are read by their source's image key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from radlake.catalog.db import WRITE_BATCH, batches
from radlake.catalog.fit import fit_row
from radlake.catalog.models import Image, Label, LabelClass, Source
from radlake.catalog.upsert import insert_missing
from radlake.domain import Box, Finding, LabelOrigin
from radlake.pipelines.discover import path_of_key  # pure key decoding, no catalog

LabelKey = tuple[int, str, str | None, str]  # image, class, reader, origin


@dataclass(frozen=True, slots=True)
class ImageRef:
    """What matching a label file needs of a catalogued image."""

    id: int
    sha256: str
    name: str  # the basename of its source key
    columns: int
    rows: int


def _base_name(key: str) -> str:
    """The file name a source key stands for: keys of odd paths (a newline in a name)
    are quoted and escaped, and a label file names the file, not its key."""
    return PurePosixPath(path_of_key(key).replace("\\", "/")).name


def image_refs(session: Session, *, source: str | None = None) -> list[ImageRef]:
    """Every catalogued image (of one source when given), as plain rows."""
    statement = select(Image.id, Image.sha256, Image.source_key, Image.columns, Image.rows)
    if source is not None:
        statement = statement.join(Source, Image.source_id == Source.id).where(
            Source.name == source
        )
    return [
        ImageRef(image_id, sha, _base_name(key), columns, rows)
        for image_id, sha, key, columns, rows in session.execute(statement.order_by(Image.id))
    ]


def source_kind(session: Session, *, name: str) -> str | None:
    """The kind of the named source, None when there is none."""
    return session.scalar(select(Source.kind).where(Source.name == name))


def write_classes(session: Session, *, source_id: int, taxonomy: Mapping[str, int | None]) -> None:
    """A source's class names and ids; names it already has are left as they are."""
    known = set(session.scalars(select(LabelClass.name).where(LabelClass.source_id == source_id)))
    fitted = [
        fit_row(LabelClass, {"source_id": source_id, "name": name, "class_id": class_id})[0]
        for name, class_id in sorted(taxonomy.items())
    ]
    rows = list({row["name"]: row for row in fitted if row["name"] not in known}.values())
    insert_missing(session, LabelClass, rows, key="name")


def existing_labels(
    session: Session, *, source_id: int, image_ids: Sequence[int], origin: str
) -> dict[LabelKey, list[Box | None]]:
    """The boxes (None: image-level) the source already holds on these images, by
    (image, class, reader, origin)."""
    found: dict[LabelKey, list[Box | None]] = defaultdict(list)
    for chunk in batches(sorted(set(image_ids))):
        rows = session.execute(
            select(
                Label.image_id,
                Label.class_name,
                Label.reader,
                Label.origin,
                Label.x_min,
                Label.y_min,
                Label.x_max,
                Label.y_max,
            ).where(Label.source_id == source_id, Label.origin == origin, Label.image_id.in_(chunk))
        )
        for image_id, class_name, reader, row_origin, *corners in rows:
            assert image_id is not None  # selected by image id
            box = None if None in corners else Box(*corners)  # type: ignore[arg-type]
            found[(image_id, class_name, reader, row_origin)].append(box)
    return found


def add_labels(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Insert label rows (every row with every column: one statement shape)."""
    for batch in batches(rows, WRITE_BATCH):
        session.execute(insert(Label), list(batch))


def image_labels(session: Session, *, image_id: int, origin: str | None = None) -> list[Label]:
    """The labels of one image (of one origin, or all), boxes in stored pixels."""
    statement = select(Label).where(Label.image_id == image_id)
    if origin is not None:
        statement = statement.where(Label.origin == origin)
    return list(session.scalars(statement.order_by(Label.origin, Label.class_name, Label.id)))


def label_row(label: Label, source_names: Mapping[int, str]) -> dict[str, Any]:
    """One label as plain data for --json and tables."""
    corners = (label.x_min, label.y_min, label.x_max, label.y_max)
    return {
        "id": label.id,
        "class_name": label.class_name,
        "reader": label.reader,
        "origin": label.origin,
        "confidence": label.confidence,
        "box": None if None in corners else list(corners),
        "source": source_names.get(label.source_id),
    }


def source_names(session: Session) -> dict[int, str]:
    """Source id -> name."""
    return {source_id: name for source_id, name in session.execute(select(Source.id, Source.name))}


@dataclass(frozen=True, slots=True)
class Subject:
    """What agreement scores: an image, or a source's image key whose image is absent."""

    image_id: int | None
    source: str | None
    source_image_key: str | None


def reader_findings(
    session: Session,
    *,
    image_ids: Sequence[int] | None = None,
    source: str | None = None,
    origin: LabelOrigin = LabelOrigin.GROUND_TRUTH,
) -> tuple[list[Finding], dict[int, Subject]]:
    """Reader-attributed labels of one origin, numbered by subject.

    Labels attached to an image are grouped by image; labels whose image is not
    catalogued (image_id NULL) by (source, source image key), so a labels-only
    source gets the same groups it would get with its images. With image_ids only
    those images' labels are read; with source only that source's. Each finding's
    `image_id` is its subject's number (1, 2, ... in image id, then key order);
    the returned mapping says what each number stands for.
    """
    statement = select(
        Label.image_id,
        Label.source_id,
        Label.source_image_key,
        Label.class_name,
        Label.reader,
        Label.x_min,
        Label.y_min,
        Label.x_max,
        Label.y_max,
    ).where(Label.origin == origin.value, Label.reader.is_not(None))
    if source is not None:
        statement = statement.join(Source, Label.source_id == Source.id).where(
            Source.name == source
        )
    chunks: Sequence[Sequence[int] | None] = (
        [None] if image_ids is None else list(batches(sorted(set(image_ids))))
    )
    rows: list[Any] = []
    for chunk in chunks:
        chosen = statement if chunk is None else statement.where(Label.image_id.in_(chunk))
        rows.extend(session.execute(chosen.order_by(Label.id)))
    names = source_names(session)

    def subject_of(row: Any) -> Subject:
        if row.image_id is not None:
            return Subject(row.image_id, None, None)
        return Subject(None, names.get(row.source_id), row.source_image_key)

    def order(subject: Subject) -> tuple[int, int, str, str]:
        if subject.image_id is not None:
            return (0, subject.image_id, "", "")
        return (1, 0, subject.source or "", subject.source_image_key or "")

    subjects = sorted({subject_of(row) for row in rows}, key=order)
    number = {subject: n for n, subject in enumerate(subjects, start=1)}
    findings = []
    for row in rows:
        corners = (row.x_min, row.y_min, row.x_max, row.y_max)
        box = None if None in corners else Box(*corners)
        findings.append(Finding(number[subject_of(row)], row.class_name, box, row.reader, origin))
    return findings, {n: subject for subject, n in number.items()}
