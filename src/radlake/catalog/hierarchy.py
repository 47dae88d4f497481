"""Series and studies by UID with their images: a fixed number of queries however
many series a study has (issue 8: no query per series)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.models import Image, Series, Study
from radlake.catalog.queries import find_images
from radlake.curation.filters import ImageFilter


@dataclass(frozen=True, slots=True)
class SeriesImages:
    """A series and its images in slice order."""

    series: Series
    images: list[Image]


@dataclass(frozen=True, slots=True)
class StudyImages:
    """A study and its series (in catalogue order), each with its images."""

    study: Study
    series: list[SeriesImages]


def series_with_images(session: Session, *, series_uid: str) -> SeriesImages | None:
    """The series with this UID and its images in slice order, or None."""
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        return None
    images = find_images(session, selection=ImageFilter(series_uid=series_uid), limit=None)
    return SeriesImages(series, images)


def study_with_images(session: Session, *, study_uid: str) -> StudyImages | None:
    """The study with this UID, its series and their images, or None: three queries
    (study, series, images) plus the images' eager loads."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    members = session.scalars(select(Series).where(Series.study_id == study.id).order_by(Series.id))
    # find_images orders a study series by series, each in slice order: one query.
    by_series: dict[int | None, list[Image]] = {}
    for image in find_images(session, selection=ImageFilter(study_uid=study_uid), limit=None):
        by_series.setdefault(image.series_id, []).append(image)
    return StudyImages(study, [SeriesImages(s, by_series.get(s.id, [])) for s in members])
