"""Read queries over the catalog: keyword-only, session first; callers stay thin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    String,
    and_,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session, selectinload

from radlake.catalog.db import batches
from radlake.catalog.models import (
    AuditEvent,
    Dataset,
    DatasetMember,
    DatasetVersion,
    Image,
    Job,
    Label,
    Patient,
    Quarantine,
    Series,
    Source,
    Study,
)
from radlake.curation.filters import ImageFilter as ImageFilter  # re-exported for callers
from radlake.domain import LabelOrigin
from radlake.errors import ImageNotFound

SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")


def apply_filter(statement: SelectT, selection: ImageFilter) -> SelectT:
    """Add the selection's conditions (and the joins they need) to a SELECT over image.

    A field with several values matches any of them; `exclude` leaves out the ids its
    sub-filter selects (NOT IN, not NOT(...): a NULL column must not drop an image
    from both a group and its complement).
    """
    statement = statement.where(*_image_conditions(selection))
    if selection.finding or selection.reader:
        label = select(Label.id).where(Label.image_id == Image.id)
        if selection.finding:
            label = label.where(
                Label.class_name.in_(selection.finding),
                Label.origin == LabelOrigin.GROUND_TRUTH.value,
            )
        if selection.reader:
            label = label.where(Label.reader == selection.reader)
        statement = statement.where(label.exists())
    if selection.dataset:
        statement = statement.join(DatasetMember, DatasetMember.image_id == Image.id).where(
            DatasetMember.version_id == _version_id(selection.dataset, selection.version)
        )
        if selection.split:
            statement = statement.where(DatasetMember.split.in_(selection.split))
    if selection.source:
        statement = statement.join(Source, Image.source_id == Source.id).where(
            Source.name.in_(selection.source)
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
    if selection.exclude is not None:
        # correlate(None): the ids of the whole lake matching exclude, not a subquery
        # bound to the outer row.
        excluded = apply_filter(select(Image.id), selection.exclude).correlate(None)
        statement = statement.where(Image.id.not_in(excluded))
    return statement


def _image_conditions(selection: ImageFilter) -> list[ColumnElement[bool]]:
    """The conditions on the image row itself (no join needed)."""
    found: list[ColumnElement[bool]] = []
    if selection.modality:
        found.append(Image.modality.in_([value.upper() for value in selection.modality]))
    if selection.manufacturer:
        maker = func.lower(Image.manufacturer)
        found.append(
            or_(*(maker.startswith(v.lower(), autoescape=True) for v in selection.manufacturer))
        )
    if selection.format:
        found.append(Image.format.in_([value.lower() for value in selection.format]))
    if selection.body_part:
        found.append(func.upper(Image.body_part).in_([v.upper() for v in selection.body_part]))
    if selection.view:
        found.append(func.upper(Image.view_position).in_([v.upper() for v in selection.view]))
    if selection.min_rows is not None:
        found.append(Image.rows >= selection.min_rows)
    if selection.min_columns is not None:
        found.append(Image.columns >= selection.min_columns)
    # The shorter side is at least n when both are; at most n when either is (and the
    # other way round for the longer side): portable, no LEAST/GREATEST per dialect.
    for bound in (selection.min_size, selection.min_short_side):
        if bound is not None:
            found.append(and_(Image.rows >= bound, Image.columns >= bound))
    for bound in (selection.max_size, selection.max_long_side):
        if bound is not None:
            found.append(and_(Image.rows <= bound, Image.columns <= bound))
    if selection.max_short_side is not None:
        bound = selection.max_short_side
        found.append(or_(Image.rows <= bound, Image.columns <= bound))
    if selection.min_long_side is not None:
        bound = selection.min_long_side
        found.append(or_(Image.rows >= bound, Image.columns >= bound))
    for key, value in selection.attributes:
        found.append(cast(Image.attributes[key].as_string(), String) == value)
    return found


def _version_id(dataset: str, version: int | None) -> ScalarSelect[int]:
    """The id of a dataset's version (its newest when version is None), as a subquery."""
    statement = select(DatasetVersion.id).join(Dataset).where(Dataset.name == dataset)
    if version is not None:
        return statement.where(DatasetVersion.version == version).scalar_subquery()
    return statement.order_by(DatasetVersion.version.desc()).limit(1).scalar_subquery()


def find_images(
    session: Session,
    *,
    selection: ImageFilter,
    limit: int | None = 100,
    offset: int = 0,
    after_id: int | None = None,
) -> list[Image]:
    """Images matching selection: a series (or a study, series by series) in slice
    order, everything else by id.

    Series order is the scanner's instance order, then position along the slice
    normal: multi-volume series (fMRI, DWI) come volume by volume, each in space order.
    """
    statement = apply_filter(select(Image), selection).options(
        selectinload(Image.series).selectinload(Series.study), selectinload(Image.renditions)
    )
    if (selection.series_uid or selection.study_uid) and after_id is None:
        # A study comes series by series, each in slice order: one query, not one per
        # series.
        statement = statement.order_by(
            Image.series_id, Image.instance_number, Image.slice_position, Image.id
        )
    else:
        statement = statement.order_by(Image.id)
    if after_id:  # keyset pagination: stable however the catalog grows
        statement = statement.where(Image.id > after_id)
    statement = statement.offset(offset)
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.scalars(statement))


def count_images(session: Session, *, selection: ImageFilter, cap: int | None = None) -> int:
    """How many images match selection; with cap, counting stops at cap (a page's
    "10,000+" needs no full scan of a large catalog)."""
    if cap is None:
        return int(session.scalar(apply_filter(select(func.count(Image.id)), selection)) or 0)
    capped = apply_filter(select(Image.id), selection).limit(cap).subquery()
    return int(session.scalar(select(func.count()).select_from(capped)) or 0)


def finding_classes(session: Session, *, image_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each image's ground-truth label classes, sorted and distinct (one query a batch)."""
    found: dict[int, list[str]] = {}
    for chunk in batches(image_ids):
        rows = session.execute(
            select(Label.image_id, Label.class_name)
            .where(Label.image_id.in_(chunk), Label.origin == LabelOrigin.GROUND_TRUTH.value)
            .distinct()
            .order_by(Label.image_id, Label.class_name)
        )
        for image_id, class_name in rows:
            assert image_id is not None  # selected by image id
            found.setdefault(image_id, []).append(class_name)
    return found


def patient_pseudonyms(session: Session, *, image_ids: Sequence[int]) -> dict[int, str]:
    """Image id -> its patient's keyed pseudonym (images without a patient absent)."""
    found: dict[int, str] = {}
    for chunk in batches(image_ids):
        found.update(
            (image_id, pseudonym)
            for image_id, pseudonym in session.execute(
                select(Image.id, Patient.pseudonym)
                .join(Series, Image.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .join(Patient, Study.patient_id == Patient.id)
                .where(Image.id.in_(chunk))
            )
        )
    return found


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


def list_quarantine(
    session: Session, *, limit: int | None = None, include_resolved: bool = False
) -> Sequence[Quarantine]:
    """Rejected inputs, oldest first, with their sources; by default only those not
    catalogued since (see persist.resolve_quarantined)."""
    statement = select(Quarantine).options(selectinload(Quarantine.source)).order_by(Quarantine.id)
    if not include_resolved:
        statement = statement.where(Quarantine.resolved_at.is_(None))
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


def list_dataset_versions(session: Session) -> list[DatasetVersion]:
    """Every dataset version, by dataset name then version, with its dataset loaded."""
    statement = (
        select(DatasetVersion)
        .join(Dataset)
        .options(selectinload(DatasetVersion.dataset))
        .order_by(Dataset.name, DatasetVersion.version)
    )
    return list(session.scalars(statement))


def _counts(session: Session, column: Any, *joins: Any) -> dict[str, int]:
    statement = select(column, func.count(func.distinct(Image.id))).select_from(Image)
    for join in joins:
        statement = statement.join(*join)
    rows = session.execute(statement.group_by(column).order_by(column))
    return {str(key) if key is not None else "unknown": int(n) for key, n in rows}


def image_counts(session: Session) -> dict[str, Any]:
    """Images in all, and by modality, view, format, source, ground-truth class and
    dataset split (the web page's filter choices and the dashboards)."""
    ground_truth = (Label.image_id == Image.id) & (Label.origin == LabelOrigin.GROUND_TRUTH.value)
    return {
        "images": int(session.scalar(select(func.count(Image.id))) or 0),
        "modality": _counts(session, Image.modality),
        "view": _counts(session, Image.view_position),
        "format": _counts(session, Image.format),
        "source": _counts(session, Source.name, (Source, Image.source_id == Source.id)),
        "class": _counts(session, Label.class_name, (Label, ground_truth)),
        "split": _counts(
            session, DatasetMember.split, (DatasetMember, DatasetMember.image_id == Image.id)
        ),
    }


def recent_audit_events(session: Session, *, limit: int = 200) -> list[AuditEvent]:
    """The newest audit events first."""
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))
