"""The Drift dashboard's inputs: two sides of the lake and their features (issue 14).

A side is a dataset version (`NAME@V`), one split of it (`NAME@V/SPLIT`) or the images
catalogued in a window of days (`YYYY-MM-DD..YYYY-MM-DD`, both days included). Its
features come from two queries whose condition the database evaluates (a subquery
of members, or a range of ingest times), one per image and one per ground-truth box:

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
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from radlake.catalog.models import Dataset, DatasetMember, DatasetVersion, Image, Label
from radlake.curation.drift import FeatureDrift, categorical_drift, numeric_drift
from radlake.domain import LabelOrigin
from radlake.errors import RadlakeError
from radlake.imaging.intensity import INTENSITY_FEATURES, INTENSITY_KEY

_VERSION = re.compile(r"(?P<name>[^@/]{1,100})@(?P<version>\d{1,9})(?:/(?P<split>[^/]{1,40}))?")
_WINDOW = re.compile(r"(?P<start>\d{4}-\d{2}-\d{2})\.\.(?P<end>\d{4}-\d{2}-\d{2})")
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}  # PS3.5 AS
NUMERIC = ("rows", "columns", "pixel_spacing", "patient_age")
CATEGORICAL = ("view", "sex", "manufacturer", "modality", "format")
BOX = ("box_width", "box_height", "box_area", "box_aspect", "box_centre_x", "box_centre_y")


class DriftSideError(RadlakeError, ValueError):
    """A side that names no dataset version, split or window."""


@dataclass(frozen=True, slots=True)
class Side:
    """One side of the comparison, as the user wrote it and as a condition on images."""

    text: str
    condition: ColumnElement[bool]


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
        members = select(DatasetMember.image_id).where(DatasetMember.version_id == version.id)
        if match["split"]:
            split = match["split"]
            if split not in (version.counts or {}):
                names = ", ".join(sorted(version.counts or {})) or "none"
                raise DriftSideError(
                    f"{match['name']}@{match['version']} has no split {split!r} (it has {names})"
                )
            members = members.where(DatasetMember.split == split)
        return Side(text, Image.id.in_(members))
    if match := _WINDOW.fullmatch(text):
        try:
            start, end = date.fromisoformat(match["start"]), date.fromisoformat(match["end"])
        except ValueError as exc:
            raise DriftSideError(f"{text!r} is not a window of real days: {exc}") from None
        if end < start:
            raise DriftSideError(f"window {text!r} ends before it starts")
        low = datetime(start.year, start.month, start.day, tzinfo=UTC)
        high = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        return Side(text, (Image.created_at >= low) & (Image.created_at < high))
    raise DriftSideError(
        f"expected NAME@VERSION, NAME@VERSION/SPLIT or YYYY-MM-DD..YYYY-MM-DD, got {text[:80]!r}"
    )


def _age_years(values: list[Any]) -> NDArray[np.float64]:
    """Ages as years: numbers as they are, DICOM age strings (045Y, 006M) converted."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if value is None:
            continue
        text = str(value).strip().upper()
        unit = _AGE_UNITS.get(text[-1:])
        number = text[:-1] if unit is not None else text
        try:
            out[i] = float(number) * (unit or 1.0)
        except ValueError:
            continue
    return out


def _image_features(session: Session, side: Side) -> dict[str, Any]:
    attributes = Image.attributes
    intensity = [attributes[(INTENSITY_KEY, name)].as_float() for name in INTENSITY_FEATURES]
    rows = session.execute(
        select(
            Image.rows,
            Image.columns,
            Image.pixel_spacing_row,
            # DICOM and NIH keep patient_age/_sex, the COVID-19 collection age/sex.
            func.coalesce(attributes["patient_age"].as_string(), attributes["age"].as_string()),
            Image.view_position,
            func.coalesce(attributes["patient_sex"].as_string(), attributes["sex"].as_string()),
            Image.manufacturer,
            Image.modality,
            Image.format,
            *intensity,
        ).where(side.condition)
    ).all()
    columns = list(zip(*rows, strict=True)) if rows else [()] * (9 + len(intensity))

    def numbers(values: tuple[Any, ...]) -> NDArray[np.float64]:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    features: dict[str, Any] = {
        "rows": numbers(columns[0]),
        "columns": numbers(columns[1]),
        "pixel_spacing": numbers(columns[2]),
        "patient_age": _age_years(list(columns[3])),
    }
    for name, values in zip(CATEGORICAL, columns[4:9], strict=True):
        features[name] = list(values)
    for name, values in zip(INTENSITY_FEATURES, columns[9:], strict=True):
        features[f"intensity_{name}"] = numbers(values)
    features["_images"] = len(rows)
    return features


def _box_features(session: Session, side: Side) -> dict[str, Any]:
    rows = session.execute(
        select(Label.x_min, Label.y_min, Label.x_max, Label.y_max, Image.columns, Image.rows)
        .join(Image, Image.id == Label.image_id)
        .where(
            side.condition,
            Label.origin == LabelOrigin.GROUND_TRUTH.value,
            Label.x_min.is_not(None),
            Label.y_min.is_not(None),
            Label.x_max.is_not(None),
            Label.y_max.is_not(None),
        )
    ).all()
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 6)
    width = (table[:, 2] - table[:, 0]) / table[:, 4]
    height = (table[:, 3] - table[:, 1]) / table[:, 5]
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.log2((table[:, 2] - table[:, 0]) / (table[:, 3] - table[:, 1]))
    return {
        "box_width": width,
        "box_height": height,
        "box_area": width * height,
        "box_aspect": np.where(np.isfinite(aspect), aspect, np.nan),
        "box_centre_x": (table[:, 0] + table[:, 2]) / 2 / table[:, 4],
        "box_centre_y": (table[:, 1] + table[:, 3]) / 2 / table[:, 5],
        "_boxes": len(rows),
    }


def side_features(session: Session, side: Side) -> dict[str, Any]:
    """Every feature of a side's images and ground-truth boxes, as columns."""
    return _image_features(session, side) | _box_features(session, side)


def drift_report(session: Session, *, a: str, b: str) -> DriftReport:
    """Each feature's drift from side a (reference) to side b (current).

    Raises:
        DriftSideError: a side that names nothing (see parse_side).
    """
    first, second = parse_side(session, a), parse_side(session, b)
    ref, cur = side_features(session, first), side_features(session, second)
    numeric = [*NUMERIC, *(f"intensity_{n}" for n in INTENSITY_FEATURES), *BOX]
    results = [numeric_drift(name, ref[name], cur[name]) for name in numeric]
    results += [categorical_drift(name, ref[name], cur[name]) for name in CATEGORICAL]
    return DriftReport(
        first.text,
        second.text,
        (ref["_images"], cur["_images"]),
        (ref["_boxes"], cur["_boxes"]),
        results,
    )
