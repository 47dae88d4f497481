"""The catalog tables the dashboard pages read, kept as numpy columns
(catalog.column_cache): ground-truth labels, image metadata, predictions' scores,
and each dataset version's members.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine, func, select

from radlake.catalog.column_cache import ColumnTable
from radlake.catalog.columns import floats, texts
from radlake.catalog.db import session_factory
from radlake.catalog.inference_models import InferenceRun, Prediction
from radlake.catalog.models import DatasetMember, Image, Label
from radlake.domain import LabelOrigin
from radlake.imaging.intensity import INTENSITY_FEATURES, INTENSITY_KEY

log = logging.getLogger("radlake.dashboard")
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}  # PS3.5 AS
CORNERS = ("x_min", "y_min", "x_max", "y_max")


def ints(values: Sequence[Any]) -> NDArray[np.int64]:
    return np.fromiter(values, np.int64, len(values))


def seconds(values: Sequence[datetime | None]) -> NDArray[np.float64]:
    """Aware datetimes as POSIX seconds (NaN for none)."""
    return np.array([np.nan if v is None else v.timestamp() for v in values], np.float64)


def age_years(values: Sequence[Any]) -> NDArray[np.float64]:
    """Ages as years: numbers as they are, DICOM age strings (045Y, 006M) converted."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if value is None:
            continue
        text = str(value).strip().upper()
        unit = _AGE_UNITS.get(text[-1:])
        try:
            out[i] = float(text[:-1] if unit is not None else text) * (unit or 1.0)
        except ValueError:
            continue
    return out


GROUND_TRUTH = ColumnTable(
    "ground-truth labels of catalogued images",
    lambda: select(
        Label.id,
        Label.image_id,
        Label.class_name,
        Label.reader,
        Label.x_min,
        Label.y_min,
        Label.x_max,
        Label.y_max,
        Label.created_at,
    ).where(Label.origin == LabelOrigin.GROUND_TRUTH.value, Label.image_id.is_not(None)),
    Label.id,
    {
        "image_id": ints,
        "class_name": texts,
        "reader": texts,
        **dict.fromkeys(CORNERS, floats),
        "created": seconds,
    },
    # SQLite gives a deleted newest id to the next row: a source load that replaces
    # its labels can keep both the newest id and the count. Their insert time moves.
    watch=("created",),
)


def _image_statement() -> Any:
    attributes = Image.attributes
    intensity = [
        attributes[(INTENSITY_KEY, name)].as_float().label(f"intensity_{name}")
        for name in INTENSITY_FEATURES
    ]
    return select(
        Image.id,
        Image.created_at,
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
        Image.source_id,
        Image.updated_at,
        *intensity,
    )


IMAGES = ColumnTable(
    "image metadata",
    _image_statement,
    Image.id,
    {
        "created": seconds,
        "rows": floats,
        "columns": floats,
        "pixel_spacing": floats,
        "patient_age": age_years,
        "view": texts,
        "sex": texts,
        "manufacturer": texts,
        "modality": texts,
        "format": texts,
        "source_id": ints,
        "updated": seconds,
        **{f"intensity_{name}": floats for name in INTENSITY_FEATURES},
    },
    # Rows changed in place (a dataset source's claim or re-run, an upload's facts)
    # carry updated_at.
    watch=("updated",),
)

SCORES = ColumnTable(
    "prediction scores",
    lambda: select(Prediction.id, InferenceRun.model_version_id, Prediction.score).join(
        InferenceRun, InferenceRun.id == Prediction.run_id
    ),
    Prediction.id,
    {"model_version_id": ints, "score": floats},
)

_members: dict[int, ColumnTable] = {}
_members_lock = threading.Lock()


def members_table(version_id: int) -> ColumnTable:
    """A dataset version's members (image id, split, image size), by image id."""
    with _members_lock:
        if version_id not in _members:
            _members[version_id] = ColumnTable(
                f"members of dataset version {version_id}",
                lambda: (
                    select(DatasetMember.image_id, DatasetMember.split, Image.columns, Image.rows)
                    .join(Image, Image.id == DatasetMember.image_id)
                    .where(DatasetMember.version_id == version_id)
                ),
                DatasetMember.image_id,
                {"split": texts, "columns": floats, "rows": floats},
            )
        return _members[version_id]


def warm(engine: Engine) -> None:
    """Read the lake-wide tables once (a server does this at start, so the first
    dashboard page does not pay for it). Best effort: a failure is logged, never raised."""
    try:
        with session_factory(engine)() as session:
            for table in (IMAGES, GROUND_TRUTH, SCORES):
                table.columns(session)
    except Exception as exc:  # the pages read them again and report their own faults
        log.warning("dashboard warm-up skipped: %s", type(exc).__name__)
