"""Reads behind the image routes and the web page: a page of a listing, one image's
labels, the columns pixel routes need, de-identified stand-ins, zip rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from radlake.catalog.db import batches
from radlake.catalog.models import Image, Label, Rendition
from radlake.catalog.queries import apply_filter, count_images, find_images
from radlake.curation.filters import ImageFilter
from radlake.errors import ImageNotFound

TOTAL_CAP = 10_000  # beyond this a listing says "10000+" unless an exact count is asked
ZIP_COLUMNS = (
    Image.id,
    Image.sha256,
    Image.format,
    Image.original_key,
    Image.modality,
    Image.view_position,
    Image.manufacturer,
    Image.rows,
    Image.columns,
    Image.source_key,
    Image.attributes,
)


@dataclass(frozen=True, slots=True)
class ImagePage:
    """One page of a listing: its images, the total (capped unless exact) and the
    cursor of the next page (None on the last)."""

    images: list[Image]
    total: int
    total_exact: bool
    next_cursor: int | None


def image_page(
    session: Session,
    *,
    selection: ImageFilter,
    limit: int = 100,
    after_id: int = 0,
    exact_count: bool = False,
) -> ImagePage:
    """Images matching selection in id order after after_id, limit of them, with the
    total: exact up to TOTAL_CAP, else TOTAL_CAP and total_exact False (a large
    catalog is not scanned whole for a page) unless exact_count."""
    cap = None if exact_count else TOTAL_CAP + 1
    total = count_images(session, selection=selection, cap=cap)
    found = find_images(session, selection=selection, limit=limit + 1, after_id=after_id)
    more = len(found) > limit
    page = found[:limit]
    exact = cap is None or total <= TOTAL_CAP
    return ImagePage(
        images=page,
        total=total if exact else TOTAL_CAP,
        total_exact=exact,
        next_cursor=page[-1].id if more and page else None,
    )


def image_labels(session: Session, *, image_id: int) -> list[Label]:
    """Every label of one image (findings and boxes, all origins), in id order.

    Raises:
        ImageNotFound: no image has this id.
    """
    if session.scalar(select(Image.id).where(Image.id == image_id)) is None:
        raise ImageNotFound(f"no image with id {image_id}")
    return list(session.scalars(select(Label).where(Label.image_id == image_id).order_by(Label.id)))


def pixel_columns(session: Session, *, image_id: int) -> Row[Any]:
    """sha256, format, original_key and attributes of one image: what pixel routes
    need, without loading its hierarchy (the hot path).

    Raises:
        ImageNotFound: no image has this id.
    """
    row = session.execute(
        select(Image.sha256, Image.format, Image.original_key, Image.attributes).where(
            Image.id == image_id
        )
    ).first()
    if row is None:
        raise ImageNotFound(f"no image with id {image_id}")
    return row


def rendition_keys(session: Session, *, image_ids: Sequence[int], name: str) -> dict[int, str]:
    """The store key of each image's rendition called name, for those that have one."""
    found: dict[int, str] = {}
    for chunk in batches(image_ids):
        statement = select(Rendition.image_id, Rendition.key).where(
            Rendition.image_id.in_(chunk), Rendition.name == name
        )
        found |= {image_id: key for image_id, key in session.execute(statement)}
    return found


def zip_rows(session: Session, *, selection: ImageFilter) -> list[Row[Any]]:
    """The ZIP_COLUMNS of every image matching selection, in id order."""
    statement = apply_filter(select(*ZIP_COLUMNS), selection).order_by(Image.id)
    return list(session.execute(statement))


def label_tallies(
    session: Session, *, image_ids: Sequence[int]
) -> tuple[dict[int, set[str]], dict[int, int]]:
    """Per image: the classes of its labels (all origins) and how many are boxes."""
    findings: dict[int, set[str]] = {}
    boxes: dict[int, int] = {}
    for chunk in batches(image_ids):
        statement = select(Label.image_id, Label.class_name, Label.x_min).where(
            Label.image_id.in_(chunk)
        )
        for image_id, class_name, x_min in session.execute(statement):
            assert image_id is not None  # selected by image id
            findings.setdefault(image_id, set()).add(class_name)
            boxes[image_id] = boxes.get(image_id, 0) + (x_min is not None)
    return findings, boxes
