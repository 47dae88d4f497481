"""Reads behind DICOMweb (PS3.18): QIDO-RS matching and WADO-RS retrieval, answered
from deid_instance alone, so only de-identified UIDs and values ever go out.

Rows whose pixels were withheld (text suspected and not removable) are never
listed. Matching (PS3.4 C.2.2.2): a UID key takes a list; a text key with `*` or `?`
is a wildcard match, case-insensitive on every backend (LIKE is case-sensitive on
PostgreSQL only: lowering both sides makes the three agree); without one it is an
exact match (descriptions and modality case-insensitive too); a date key is a single
date or an inclusive range with either end open.

Any key works at any level, relationally: a study or series matches when one of
its instances does, and its answer counts every served instance of the study or
series, not only the ones a key matched (PS3.18 10.6.3.3:
NumberOfStudyRelatedInstances).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, distinct, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from radlake.catalog.db import batches
from radlake.catalog.deid_models import PIXELS_WITHHELD, DeidInstance

D = DeidInstance
_LIKE_ESCAPE = "!"


@dataclass(frozen=True, slots=True)
class DateRange:
    """An inclusive range of YYYYMMDD dates; None leaves that end open."""

    first: str | None = None
    last: str | None = None


@dataclass(frozen=True, slots=True)
class QidoMatch:
    """The matching keys of one search (PS3.18 10.6.1.2); empty means any value."""

    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    patient_id: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    modalities: tuple[str, ...] = ()
    study_date: DateRange | None = None
    series_number: int | None = None
    instance_number: int | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """A study or a series found: its first instance (whose study and series
    attributes speak for the group), its counts and, for a study, its modalities."""

    sample: DeidInstance
    series: int
    instances: int
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Page:
    """One page of answers and whether more match beyond it."""

    groups: list[Group]
    more: bool


@dataclass(frozen=True, slots=True)
class Stored:
    """What retrieving or rendering one de-identified object needs."""

    sop_uid: str
    sop_class_uid: str | None
    transfer_syntax: str | None
    key: str
    sha256: str
    size_bytes: int
    rows: int | None
    columns: int | None
    frames: int | None
    pixels: str


def _wildcard(column: Any, pattern: str) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.4: `*` any run, `?` one character; LIKE's own `%`, `_` and the
    escape character are matched literally."""
    escaped = "".join(
        _LIKE_ESCAPE + ch if ch in ("%", "_", _LIKE_ESCAPE) else ch for ch in pattern.lower()
    )
    like = escaped.replace("*", "%").replace("?", "_")
    return func.lower(column).like(like, escape=_LIKE_ESCAPE)


def _text(column: Any, value: str, *, fold_case: bool) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return _wildcard(column, value)
    if fold_case:
        return func.lower(column) == value.lower()
    return column == value  # type: ignore[no-any-return]


def conditions(match: QidoMatch) -> list[ColumnElement[bool]]:
    """SQL conditions for match (always: the instance's pixels are not withheld)."""
    found: list[ColumnElement[bool]] = [D.pixels != PIXELS_WITHHELD]
    lists: tuple[tuple[InstrumentedAttribute[Any], tuple[str, ...]], ...] = (
        (D.study_uid, match.study_uids),
        (D.series_uid, match.series_uids),
        (D.sop_uid, match.sop_uids),
        (D.sop_class_uid, match.sop_class_uids),
    )
    found.extend(column.in_(values) for column, values in lists if values)
    if match.patient_id:
        found.append(_text(D.patient_id, match.patient_id, fold_case=False))
    if match.accession_number:
        found.append(_text(D.accession_number, match.accession_number, fold_case=False))
    if match.study_description:
        found.append(_text(D.study_description, match.study_description, fold_case=True))
    if match.series_description:
        found.append(_text(D.series_description, match.series_description, fold_case=True))
    if match.modalities:
        found.append(or_(*(_text(D.modality, m, fold_case=True) for m in match.modalities)))
    if match.study_date is not None:
        if match.study_date.first is not None:
            found.append(D.study_date >= match.study_date.first)
        if match.study_date.last is not None:
            found.append(D.study_date <= match.study_date.last)
    if match.series_number is not None:
        found.append(D.series_number == match.series_number)
    if match.instance_number is not None:
        found.append(D.instance_number == match.instance_number)
    return found


def _samples(session: Session, ids: Sequence[int]) -> dict[int, DeidInstance]:
    found: dict[int, DeidInstance] = {}
    for chunk in batches(list(ids)):
        found.update((row.id, row) for row in session.scalars(select(D).where(D.id.in_(chunk))))
    return found


def search_studies(session: Session, *, match: QidoMatch, limit: int, offset: int) -> Page:
    """Studies with an instance matching match, in StudyInstanceUID order: limit of
    them after offset, each with its series and instance counts and modalities."""
    served = D.pixels != PIXELS_WITHHELD
    page = list(
        session.scalars(
            select(D.study_uid)
            .where(*conditions(match))
            .group_by(D.study_uid)
            .order_by(D.study_uid)
            .limit(limit + 1)
            .offset(offset)
        )
    )
    more, uids = len(page) > limit, page[:limit]
    if not uids:
        return Page([], more)
    counts = session.execute(
        select(D.study_uid, func.count(distinct(D.series_uid)), func.count(), func.min(D.id))
        .where(served, D.study_uid.in_(uids))
        .group_by(D.study_uid)
    ).all()
    modalities: dict[str, set[str]] = {}
    for study, modality in session.execute(
        select(D.study_uid, D.modality).where(served, D.study_uid.in_(uids)).distinct()
    ):
        if modality:
            modalities.setdefault(study, set()).add(modality)
    samples = _samples(session, [row[3] for row in counts])
    by_uid = {
        row[0]: Group(samples[row[3]], row[1], row[2], tuple(sorted(modalities.get(row[0], ()))))
        for row in counts
    }
    return Page([by_uid[uid] for uid in uids if uid in by_uid], more)


def search_series(session: Session, *, match: QidoMatch, limit: int, offset: int) -> Page:
    """Series with an instance matching match, in (study, series) UID order: limit of
    them after offset, each with its instance count."""
    page = session.execute(
        select(D.study_uid, D.series_uid)
        .where(*conditions(match))
        .group_by(D.study_uid, D.series_uid)
        .order_by(D.study_uid, D.series_uid)
        .limit(limit + 1)
        .offset(offset)
    ).all()
    more, keys = len(page) > limit, [tuple(row) for row in page[:limit]]
    if not keys:
        return Page([], more)
    series_uids = sorted({series for _, series in keys})
    counts = session.execute(
        select(D.study_uid, D.series_uid, func.count(), func.min(D.id))
        .where(D.pixels != PIXELS_WITHHELD, D.series_uid.in_(series_uids))
        .group_by(D.study_uid, D.series_uid)
    ).all()
    by_key = {(row[0], row[1]): row for row in counts}
    samples = _samples(session, [row[3] for row in counts])
    groups = [Group(samples[by_key[k][3]], 1, by_key[k][2]) for k in keys if k in by_key]
    return Page(groups, more)


def _instance_order() -> tuple[Any, ...]:
    # NULL sorts first on some backends and last on others: coalesce makes them agree.
    return (D.study_uid, D.series_uid, func.coalesce(D.instance_number, 0), D.sop_uid, D.id)


def search_instances(
    session: Session, *, match: QidoMatch, limit: int, offset: int
) -> tuple[list[DeidInstance], bool]:
    """Instances matching match in (study, series, instance number) order: limit of
    them after offset, and whether more match."""
    rows = list(
        session.scalars(
            select(D)
            .where(*conditions(match))
            .order_by(*_instance_order())
            .limit(limit + 1)
            .offset(offset)
        )
    )
    return rows[:limit], len(rows) > limit


def _scope(study_uid: str, series_uid: str | None, sop_uid: str | None) -> list[Any]:
    found: list[Any] = [D.study_uid == study_uid]
    if series_uid is not None:
        found.append(D.series_uid == series_uid)
    if sop_uid is not None:
        found.append(D.sop_uid == sop_uid)
    return found


def stored_instances(
    session: Session, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[Stored]:
    """The de-identified objects of a study, a series or one instance, withheld ones
    included (the caller says why it will not serve them), in instance order."""
    rows = session.execute(
        select(
            D.sop_uid,
            D.sop_class_uid,
            D.transfer_syntax,
            D.key,
            D.sha256,
            D.size_bytes,
            D.rows,
            D.columns,
            D.frames,
            D.pixels,
        )
        .where(*_scope(study_uid, series_uid, sop_uid))
        .order_by(*_instance_order())
    ).all()
    return [Stored(**row._asdict()) for row in rows]


def headers(
    session: Session, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[dict[str, Any]]:
    """The stored DICOM JSON headers of the served instances of a study, a series or
    one instance (WADO-RS metadata), in instance order."""
    return list(
        session.scalars(
            select(D.header)
            .where(D.pixels != PIXELS_WITHHELD, *_scope(study_uid, series_uid, sop_uid))
            .order_by(*_instance_order())
        )
    )


def locations(session: Session, *, image_ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
    """(study, series, SOP instance) remapped UIDs of each image's de-identified object."""
    found: dict[int, tuple[str, str, str]] = {}
    for chunk in batches(sorted(set(image_ids))):
        rows = session.execute(
            select(D.image_id, D.study_uid, D.series_uid, D.sop_uid).where(D.image_id.in_(chunk))
        )
        found.update((row[0], (row[1], row[2], row[3])) for row in rows)
    return found
