"""The Drift dashboard's inputs: two sides of the lake and their features (issue 14).

A side is a dataset version (`NAME@V`), one split of it (`NAME@V/SPLIT`) or the images
catalogued in a window of days (`YYYY-MM-DD..YYYY-MM-DD`, both days included). Its
features are picked by a mask over the image metadata and ground-truth labels that
catalog.dashboard_tables keeps as columns, per image and per ground-truth box:

- numeric image metadata: rows, columns, pixel spacing, patient age (years);
- image intensity statistics of the stored preview (imaging/intensity.py);
- categorical metadata: view, sex, manufacturer, modality, format;
- box geometry, relative to the image: width, height, area, aspect, centre.

`curation.drift` picks and runs each feature's test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.column_cache import Columns
from radlake.catalog.dashboard_tables import CORNERS, GROUND_TRUTH, IMAGES, members_table
from radlake.catalog.models import Dataset, DatasetVersion
from radlake.curation.drift import FeatureDrift, categorical_drift, numeric_drift
from radlake.errors import RadlakeError
from radlake.imaging.intensity import INTENSITY_FEATURES

INTENSITY = tuple(f"intensity_{name}" for name in INTENSITY_FEATURES)
_VERSION = re.compile(r"(?P<name>[^@/]{1,100})@(?P<version>\d{1,9})(?:/(?P<split>[^/]{1,40}))?")
_WINDOW = re.compile(r"(?P<start>\d{4}-\d{2}-\d{2})\.\.(?P<end>\d{4}-\d{2}-\d{2})")
NUMERIC = ("rows", "columns", "pixel_spacing", "patient_age")
CATEGORICAL = ("view", "sex", "manufacturer", "modality", "format")
BOX = ("box_width", "box_height", "box_area", "box_aspect", "box_centre_x", "box_centre_y")


class DriftSideError(RadlakeError, ValueError):
    """A side that names no dataset version, split or window."""


@dataclass(frozen=True, slots=True)
class Side:
    """One side of the comparison, as the user wrote it: its images, by id or by the
    window [start, end) of ingest times (POSIX seconds)."""

    text: str
    image_ids: NDArray[np.int64] | None = None
    window: tuple[float, float] | None = None

    def picks(self, images: Columns) -> NDArray[np.bool_]:
        """Which rows of the image columns are on this side."""
        if self.image_ids is not None:
            return np.isin(images["id"], self.image_ids)
        low, high = self.window or (0.0, 0.0)
        return np.asarray((images["created"] >= low) & (images["created"] < high))


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Each feature's test on side A (reference) against side B (current)."""

    a: str
    b: str
    images: tuple[int, int]
    boxes: tuple[int, int]
    features: list[FeatureDrift]


def parse_side(session: Session, text: str) -> Side:
    """The side a text names (see the module docstring).

    Raises:
        DriftSideError: the text is neither form, or names no existing version or split.
    """
    text = text.strip()
    if match := _VERSION.fullmatch(text):
        version = session.scalar(
            select(DatasetVersion)
            .join(Dataset)
            .where(Dataset.name == match["name"], DatasetVersion.version == int(match["version"]))
        )
        if version is None:
            raise DriftSideError(f"there is no version {match['version']} of {match['name']!r}")
        members = members_table(version.id).columns(session)
        if not match["split"]:
            return Side(text, image_ids=members["id"])
        split = match["split"]
        if split not in (version.counts or {}):
            names = ", ".join(sorted(version.counts or {})) or "none"
            raise DriftSideError(
                f"{match['name']}@{match['version']} has no split {split!r} (it has {names})"
            )
        return Side(text, image_ids=members["id"][members["split"] == split])
    if match := _WINDOW.fullmatch(text):
        try:
            start, end = date.fromisoformat(match["start"]), date.fromisoformat(match["end"])
            low = datetime(start.year, start.month, start.day, tzinfo=UTC)
            high = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        except (ValueError, OverflowError) as exc:
            raise DriftSideError(f"{text!r} is not a window of real days: {exc}") from None
        if end < start:
            raise DriftSideError(f"window {text!r} ends before it starts")
        return Side(text, window=(low.timestamp(), high.timestamp()))
    raise DriftSideError(
        f"expected NAME@VERSION, NAME@VERSION/SPLIT or YYYY-MM-DD..YYYY-MM-DD, got {text[:80]!r}"
    )


def side_features(side: Side, images: Columns, labels: Columns) -> dict[str, Any]:
    """Every feature of a side's images and their ground-truth boxes, as columns."""
    chosen = side.picks(images)
    features: dict[str, Any] = {name: images[name][chosen] for name in (*NUMERIC, *INTENSITY)}
    for name in CATEGORICAL:
        values = images[name][chosen]
        features[name] = values[values != ""]  # an empty value is a missing one
    # Boxes: ground truth with all four corners, on the side's images.
    at = np.searchsorted(images["id"], labels["image_id"])
    at = np.clip(at, 0, max(len(images["id"]) - 1, 0))
    corners = np.stack([labels[c] for c in CORNERS], axis=1)
    known = images["id"][at] == labels["image_id"] if len(images["id"]) else at < 0
    boxed = known & chosen[at] & ~np.isnan(corners).any(axis=1) if len(at) else known
    box, columns, rows = corners[boxed], images["columns"][at[boxed]], images["rows"][at[boxed]]
    width_px, height_px = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    width, height = width_px / columns, height_px / rows
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.log2(width_px / height_px)
    features |= {
        "box_width": width,
        "box_height": height,
        "box_area": width * height,
        "box_aspect": np.where(np.isfinite(aspect), aspect, np.nan),
        "box_centre_x": (box[:, 0] + box[:, 2]) / 2 / columns,
        "box_centre_y": (box[:, 1] + box[:, 3]) / 2 / rows,
        "_images": int(chosen.sum()),
        "_boxes": int(boxed.sum()),
    }
    return features


def drift_report(session: Session, *, a: str, b: str) -> DriftReport:
    """Each feature's drift from side a (reference) to side b (current).

    Raises:
        DriftSideError: a side that names nothing (see parse_side).
    """
    first, second = parse_side(session, a), parse_side(session, b)
    images, labels = IMAGES.columns(session), GROUND_TRUTH.columns(session)
    ref, cur = side_features(first, images, labels), side_features(second, images, labels)
    numeric = [*NUMERIC, *INTENSITY, *BOX]
    results = [numeric_drift(name, ref[name], cur[name]) for name in numeric]
    results += [
        categorical_drift(name, ref[name].tolist(), cur[name].tolist()) for name in CATEGORICAL
    ]
    return DriftReport(
        first.text,
        second.text,
        (ref["_images"], cur["_images"]),
        (ref["_boxes"], cur["_boxes"]),
        results,
    )
