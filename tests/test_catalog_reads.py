"""The read functions behind the API routes (catalog/hierarchy.py, cohorts.py,
image_reads.py), on real DICOM: answers, errors, and how many queries they cost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update

from radlake.catalog import cohorts
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.hierarchy import series_with_images, study_with_images
from radlake.catalog.image_reads import (
    image_labels,
    image_page,
    label_tallies,
    pixel_columns,
    rendition_keys,
    zip_rows,
)
from radlake.catalog.models import Image, Label, Series, Source, Study
from radlake.curation.filters import ImageFilter
from radlake.errors import ImageNotFound
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from tests.conftest import pydicom_file

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "US1_J2KR.dcm")


@pytest.fixture
def filled(lake: Lake) -> Lake:
    """The embedded lake with pydicom's sample images (one study and series each)."""
    files = [pydicom_file(name) for name in SAMPLES if pydicom_file(name).exists()]
    ingest(
        files,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    return lake


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements run on engine inside the block."""
    statements: list[str] = []

    def note(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", note)


def _merge_studies(lake: Lake, how_many: int) -> str:
    """Put the first how_many series under the first study; its UID."""
    with transaction(lake.engine) as session:
        series_ids = list(session.scalars(select(Series.id).order_by(Series.id)))[:how_many]
        assert len(series_ids) == how_many, "not enough sample series"
        study = session.scalars(select(Study).order_by(Study.id)).first()
        assert study is not None
        session.execute(update(Series).where(Series.id.in_(series_ids)).values(study_id=study.id))
        return study.study_uid


def test_a_study_costs_the_same_queries_with_one_series_or_four(filled: Lake) -> None:
    """Issue 8: /studies/{uid} must not run one query per series."""
    costs = {}
    for how_many in (1, 4):
        uid = _merge_studies(filled, how_many)
        with session_factory(filled.engine)() as session, counted(filled.engine) as statements:
            found = study_with_images(session, study_uid=uid)
        assert found is not None and len(found.series) == how_many
        # Every series comes with its own images, each in it.
        assert all(
            member.images and all(i.series_id == member.series.id for i in member.images)
            for member in found.series
        )
        costs[how_many] = len(statements)
    assert costs[1] == costs[4], costs
    assert costs[4] <= 6, costs  # study, series, images and their eager loads


def test_unknown_series_and_study_are_none(filled: Lake) -> None:
    with session_factory(filled.engine)() as session:
        assert series_with_images(session, series_uid="1.2.3.999") is None
        assert study_with_images(session, study_uid="1.2.3.999") is None
        uid = session.scalar(select(Series.series_uid).order_by(Series.id))
        assert uid is not None
        found = series_with_images(session, series_uid=uid)
        assert found is not None and found.series.series_uid == uid and found.images


def test_image_page_caps_the_total_and_pages_by_cursor(
    filled: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = ImageFilter()
    with session_factory(filled.engine)() as session:
        whole = image_page(session, selection=everything, limit=1000)
        assert whole.total == len(whole.images) == 4 and whole.total_exact
        assert whole.next_cursor is None
        seen, cursor = [], 0
        while True:
            page = image_page(session, selection=everything, limit=3, after_id=cursor)
            seen += [image.id for image in page.images]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [image.id for image in whole.images]
        # Past the cap the total is the cap and says it is not exact, unless asked.
        monkeypatch.setattr("radlake.catalog.image_reads.TOTAL_CAP", 2)
        capped = image_page(session, selection=everything, limit=1)
        assert (capped.total, capped.total_exact) == (2, False)
        exact = image_page(session, selection=everything, limit=1, exact_count=True)
        assert (exact.total, exact.total_exact) == (4, True)
        nothing = image_page(session, selection=ImageFilter(modality=("XA",)), limit=10)
        assert (nothing.images, nothing.total, nothing.next_cursor) == ([], 0, None)


def test_labels_tallies_and_pixel_columns(filled: Lake) -> None:
    with transaction(filled.engine) as session:
        image = session.scalars(select(Image).order_by(Image.id)).first()
        assert image is not None
        image_id, source_id = image.id, session.scalar(select(Source.id))
        assert source_id is not None
        for class_name, box in (("nodule", (1.0, 2.0, 30.5, 40.25)), ("normal", None)):
            x_min, y_min, x_max, y_max = box or (None, None, None, None)
            session.add(
                Label(
                    source_id=source_id,
                    source_image_key="k",
                    image_id=image_id,
                    class_name=class_name,
                    origin="ground_truth",
                    x_min=x_min,
                    y_min=y_min,
                    x_max=x_max,
                    y_max=y_max,
                )
            )
    with session_factory(filled.engine)() as session:
        labels = image_labels(session, image_id=image_id)
        assert [label.class_name for label in labels] == ["nodule", "normal"]
        assert labels[0].x_max == 30.5 and labels[1].x_min is None
        with pytest.raises(ImageNotFound):
            image_labels(session, image_id=10**9)
        findings, boxes = label_tallies(session, image_ids=[image_id, image_id + 1])
        assert findings == {image_id: {"nodule", "normal"}} and boxes == {image_id: 1}
        row = pixel_columns(session, image_id=image_id)
        assert len(row.sha256) == 64 and row.format == "dicom" and row.original_key
        with pytest.raises(ImageNotFound):
            pixel_columns(session, image_id=10**9)
        assert rendition_keys(session, image_ids=[image_id], name="deidentified") == {}
        previews = rendition_keys(session, image_ids=[image_id], name="preview")
        assert set(previews) == {image_id}
        rows = zip_rows(session, selection=ImageFilter(modality=("CT",)))
        assert [r.modality for r in rows] == ["CT"]


def test_cohorts_save_list_clash_and_delete(catalog: Engine) -> None:
    """On every backend: a second cohort of the same name is refused, and the
    transaction it happened in stays usable for the caller to end."""
    with transaction(catalog) as session:
        cohorts.add_cohort(session, name="ct", selection={"modality": "CT"}, created_by="curator")
    clash = pytest.raises(cohorts.CohortExists, match="'ct' exists")
    with clash, transaction(catalog) as session:
        cohorts.add_cohort(session, name="ct", selection={}, created_by="other")
    with session_factory(catalog)() as session:
        saved = cohorts.list_cohorts(session)
        assert [(c.name, c.selection, c.created_by) for c in saved] == [
            ("ct", {"modality": "CT"}, "curator")
        ]
        assert cohorts.find_cohort(session, name="nope") is None
    with transaction(catalog) as session:
        assert cohorts.delete_cohort(session, name="ct") is True
        assert cohorts.delete_cohort(session, name="ct") is False
    with session_factory(catalog)() as session:
        assert cohorts.list_cohorts(session) == []
