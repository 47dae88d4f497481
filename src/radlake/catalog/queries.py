"""Read queries over the catalog: keyword-only, session first; callers stay thin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from radlake.catalog.models import Image, Job, Patient, Quarantine, Series, Source, Study
from radlake.errors import ImageNotFound


@dataclass(frozen=True, slots=True)
class ImageFilter:
    """A selection of images; every field left None matches everything."""

    modality: str | None = None
    manufacturer: str | None = None  # case-insensitive prefix: "GE" matches "GE MEDICAL"
    series_uid: str | None = None
    study_uid: str | None = None
    patient: str | None = None  # a pseudonym
    format: str | None = None
    body_part: str | None = None
    view: str | None = None
    source: str | None = None
    min_rows: int | None = None
    min_columns: int | None = None


def _apply(statement: Select[Any], selection: ImageFilter) -> Select[Any]:
    if selection.modality:
        statement = statement.where(Image.modality == selection.modality.upper())
    if selection.manufacturer:
        prefix = selection.manufacturer.lower()
        statement = statement.where(
            func.lower(Image.manufacturer).startswith(prefix, autoescape=True)
        )
    if selection.format:
        statement = statement.where(Image.format == selection.format.lower())
    if selection.body_part:
        statement = statement.where(func.upper(Image.body_part) == selection.body_part.upper())
    if selection.view:
        statement = statement.where(func.upper(Image.view_position) == selection.view.upper())
    if selection.min_rows is not None:
        statement = statement.where(Image.rows >= selection.min_rows)
    if selection.min_columns is not None:
        statement = statement.where(Image.columns >= selection.min_columns)
    if selection.source:
        statement = statement.join(Source, Image.source_id == Source.id).where(
            Source.name == selection.source
        )
    if selection.series_uid or selection.study_uid or selection.patient:
        statement = statement.join(Series, Image.series_id == Series.id)
        if selection.series_uid:
            statement = statement.where(Series.series_uid == selection.series_uid)
        if selection.study_uid or selection.patient:
            statement = statement.join(Study, Series.study_id == Study.id)
            if selection.study_uid:
                statement = statement.where(Study.study_uid == selection.study_uid)
            if selection.patient:
                statement = statement.join(Patient, Study.patient_id == Patient.id).where(
                    Patient.pseudonym == selection.patient
                )
    return statement


def find_images(
    session: Session, *, selection: ImageFilter, limit: int | None = 100, offset: int = 0
) -> list[Image]:
    """Images matching selection: a series in slice order, everything else by id.

    Series order is the scanner's instance order, then position along the slice
    normal: multi-volume series (fMRI, DWI) come volume by volume, each in space order.
    """
    statement = _apply(select(Image), selection).options(
        selectinload(Image.series).selectinload(Series.study), selectinload(Image.renditions)
    )
    if selection.series_uid:
        statement = statement.order_by(Image.instance_number, Image.slice_position, Image.id)
    else:
        statement = statement.order_by(Image.id)
    statement = statement.offset(offset)
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.scalars(statement))


def count_images(session: Session, *, selection: ImageFilter) -> int:
    """How many images match selection."""
    return int(session.scalar(_apply(select(func.count(Image.id)), selection)) or 0)


def get_image(session: Session, *, image_id: int) -> Image:
    """One image with its series, study, patient and renditions.

    Raises:
        ImageNotFound: no image has this id.
    """
    image = session.scalar(
        select(Image)
        .where(Image.id == image_id)
        .options(
            selectinload(Image.series).selectinload(Series.study).selectinload(Study.patient),
            selectinload(Image.renditions),
            selectinload(Image.source),
        )
    )
    if image is None:
        raise ImageNotFound(f"no image with id {image_id}")
    return image


def list_quarantine(session: Session, *, limit: int | None = None) -> Sequence[Quarantine]:
    """Rejected inputs, oldest first, with their sources."""
    statement = select(Quarantine).options(selectinload(Quarantine.source)).order_by(Quarantine.id)
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.scalars(statement))


def summary_by_modality_format(session: Session) -> list[tuple[str | None, str, int, int, int]]:
    """(modality, format, images, series, bytes) per modality and format."""
    statement = (
        select(
            Image.modality,
            Image.format,
            func.count(Image.id),
            func.count(func.distinct(Image.series_id)),
            func.coalesce(func.sum(Image.size_bytes), 0),
        )
        .group_by(Image.modality, Image.format)
        .order_by(Image.format, Image.modality)
    )
    return [(m, f, int(n), int(s), int(b)) for m, f, n, s, b in session.execute(statement)]


def recent_jobs(session: Session, *, limit: int = 20) -> list[Job]:
    """The newest jobs first."""
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))
