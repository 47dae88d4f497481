"""The dashboard's aggregates and kept columns on every catalog backend (SQLite,
PostgreSQL, MariaDB): a VinBigData-layout lake with a dataset version, a model's
predictions and a review, each figure checked against pandas over the same tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats  # type: ignore[import-untyped]
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from radlake.catalog.column_cache import ColumnTable
from radlake.catalog.dashboard_dataset import dataset_figures
from radlake.catalog.dashboard_drift import drift_report
from radlake.catalog.dashboard_models import model_figures
from radlake.catalog.dashboard_overview import overview
from radlake.catalog.dashboard_tables import GROUND_TRUTH, IMAGES
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.feedback import Review
from radlake.catalog.models import Image, Label, Source
from radlake.catalog.stats_cache import catalog_stamp
from radlake.curation.versions import get_version
from radlake.lake import Lake
from tests.test_retrain_set import ALICE, boxes, review, reviewed_lake

__all__ = ["reviewed_lake"]  # the fixture, used by name
Lakes = tuple[Lake, dict[str, list[int]]]


def frame(lake: Lake, query: str) -> pd.DataFrame:
    with lake.engine.connect() as connection:
        return pd.read_sql_query(query, connection)


def test_figures_match_pandas_on_every_backend(reviewed_lake: Lakes) -> None:
    lake, by_split = reviewed_lake
    first = by_split["production"][0]
    review(lake, first, {name: Review("accept") for name in boxes(lake, first)}, ALICE)
    images = frame(lake, "SELECT id, modality, format, created_at FROM image")
    members = frame(lake, "SELECT image_id, split FROM dataset_member")
    labels = frame(
        lake,
        "SELECT l.image_id, l.class_name, l.x_min, l.x_max, i.columns, m.split FROM label l "
        "JOIN image i ON i.id = l.image_id JOIN dataset_member m ON m.image_id = l.image_id "
        "WHERE l.origin = 'ground_truth'",
    )
    with session_factory(lake.engine)() as session:
        shown = overview(session)
        assert shown.images == len(images)
        assert shown.by["format"] == images["format"].value_counts().to_dict()
        assert sum(n for _, n in shown.per_day) == len(images)

        data = dataset_figures(session, get_version(session, "lungs", 1))
        assert data.splits == members["split"].value_counts().to_dict()
        boxed = labels.dropna(subset=["x_min"])
        expected = boxed.groupby(["class_name", "split"]).size()
        for cls, per_split in data.class_boxes.items():
            for split, n in per_split.items():
                assert n == expected.get((cls, split), 0), (cls, split)

        report = drift_report(session, a="lungs@1/training", b="lungs@1/test")
        widths = (boxed["x_max"] - boxed["x_min"]) / boxed["columns"]
        a, b = widths[boxed["split"] == "training"], widths[boxed["split"] == "test"]
        box_width = next(f for f in report.features if f.feature == "box_width")
        if pd.concat([a, b]).nunique() > 5:
            expected_statistic = stats.ks_2samp(a.to_numpy(), b.to_numpy()).statistic
            assert box_width.test == "ks"
        else:  # few distinct widths: chi-squared of B's counts against A's shares
            keys = sorted(set(a) | set(b))
            ref, cur = a.value_counts(), b.value_counts()
            f_exp = [ref.get(k, 0) * len(b) / len(a) for k in keys]
            expected_statistic = stats.chisquare([cur.get(k, 0) for k in keys], f_exp).statistic
            assert box_width.test == "chi_squared"
        assert box_width.statistic == pytest.approx(expected_statistic)
        # A window of ingest days: every image of the lake was catalogued today (UTC).
        today = datetime.now(UTC).date()
        window = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
        assert drift_report(session, a=window, b="lungs@1").images == (len(images), len(members))

        models = model_figures(session)
        runs = frame(lake, "SELECT id, image_id FROM inference_run")
        scores = frame(lake, "SELECT score FROM prediction")
        (version,) = models.versions
        assert (version.runs, version.predictions) == (len(runs), len(scores))
        assert version.queue == runs["image_id"].nunique() - 1  # one image reviewed
        assert version.verdicts == {"accept": len(boxes(lake, first))}
        expected_scores = np.histogram(scores["score"].clip(0, 1), np.linspace(0, 1, 21))[0]
        assert version.scores == expected_scores.tolist()
        assert version.trained_on == "lungs@1"


def test_kept_columns_grow_by_new_rows_and_reload_after_a_deletion(reviewed_lake: Lakes) -> None:
    lake, by_split = reviewed_lake
    image = by_split["test"][0]
    with session_factory(lake.engine)() as session:
        before = GROUND_TRUTH.columns(session)
        source_id = session.scalar(select(Source.id).limit(1))
    with transaction(lake.engine) as session:
        session.execute(
            insert(Label).values(
                source_id=source_id,
                source_image_key="k",
                image_id=image,
                class_name="Added",
                reader="R9",
                origin="ground_truth",
                x_min=1.0,
                y_min=2.0,
                x_max=3.0,
                y_max=4.0,
            )
        )
    with session_factory(lake.engine)() as session:
        grown = GROUND_TRUTH.columns(session)
    assert len(grown["id"]) == len(before["id"]) + 1
    assert grown["class_name"][-1] == "Added" and grown["x_max"][-1] == 3.0
    assert np.array_equal(grown["id"][:-1], before["id"])
    with transaction(lake.engine) as session:
        session.execute(delete(Label).where(Label.class_name == "Added"))
        session.execute(delete(Label).where(Label.id == int(before["id"][0])))
    with session_factory(lake.engine)() as session:
        after = GROUND_TRUTH.columns(session)
    assert np.array_equal(after["id"], before["id"][1:])
    assert "Added" not in after["class_name"].tolist()


def test_kept_columns_see_rows_replaced_or_changed_in_place(reviewed_lake: Lakes) -> None:
    lake, by_split = reviewed_lake
    image = by_split["test"][0]
    with session_factory(lake.engine)() as session:
        before = GROUND_TRUTH.columns(session)
        IMAGES.columns(session)
        stamp = catalog_stamp(session)
    newest = int(before["id"][-1])
    # The newest label replaced by another: on SQLite it takes the same id (no
    # AUTOINCREMENT), so the count and the newest id stay.
    with transaction(lake.engine) as session:
        old = session.get_one(Label, newest)
        row = {
            c.key: getattr(old, c.key)
            for c in Label.__table__.columns
            if c.key not in ("id", "created_at")
        }
        session.delete(old)
        session.flush()
        session.execute(insert(Label).values(row | {"class_name": "Replaced"}))
    # An image's metadata changed in place (as a dataset source's re-run does).
    with transaction(lake.engine) as session:
        changed = session.get_one(Image, image)
        changed.view_position = "LL"
    with session_factory(lake.engine)() as session:
        after = GROUND_TRUTH.columns(session)
        images = IMAGES.columns(session)
        assert catalog_stamp(session) != stamp  # the per-page cache computes again
    assert len(after["id"]) == len(before["id"]) and after["class_name"][-1] == "Replaced"
    if lake.engine.dialect.name == "sqlite":
        assert np.array_equal(after["id"], before["id"])
    assert images["view"][np.searchsorted(images["id"], image)] == "LL"


def test_a_write_between_the_stamp_and_the_read_is_not_kept(
    reviewed_lake: Lakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, by_split = reviewed_lake
    GROUND_TRUTH.forget()
    with session_factory(lake.engine)() as session:
        source_id = session.scalar(select(Source.id).limit(1))
        truth = len(GROUND_TRUTH.columns(session)["id"])
    GROUND_TRUTH.forget()
    stamp_of = ColumnTable._stamp
    written: list[int] = []

    def stamp_then_write(self: ColumnTable, session: Session) -> tuple[object, ...]:
        found = stamp_of(self, session)
        if not written:  # a label lands right after the stamp, before the read
            with transaction(lake.engine) as other:
                other.execute(
                    insert(Label).values(
                        source_id=source_id,
                        source_image_key="late",
                        image_id=by_split["test"][0],
                        class_name="Late",
                        origin="ground_truth",
                    )
                )
            written.append(1)
        return found

    monkeypatch.setattr(ColumnTable, "_stamp", stamp_then_write)
    with session_factory(lake.engine)() as session:
        first = GROUND_TRUTH.columns(session)
        again = GROUND_TRUTH.columns(session)
    assert len(first["id"]) == truth + 1  # what was there when it read
    assert len(again["id"]) == truth + 1 and len(set(again["id"].tolist())) == truth + 1
