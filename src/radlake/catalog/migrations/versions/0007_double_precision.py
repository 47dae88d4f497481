"""every real-valued column as double precision; export formats up to 20 characters

MySQL and MariaDB store SQLAlchemy's plain Float as a 4-byte FLOAT: boxes, pixel
spacing and slice positions came back with about 6 significant digits (a box at
1234.567 px read as 1234.57), so coordinates were not exact on those backends.
PostgreSQL's FLOAT and SQLite's REAL were already 8 bytes; the change is a no-op there
but keeps the schema one and the same on every backend.

export.format was 10 characters: "classification" and "imagefolder" (issue 9) failed
on PostgreSQL and MariaDB, which enforce the length.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 05:40:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, nullable) for every Float column of revision 0006.
COLUMNS: dict[str, tuple[tuple[str, bool], ...]] = {
    "job": (("seconds", True),),
    "image": (
        ("pixel_spacing_row", True),
        ("pixel_spacing_col", True),
        ("slice_thickness", True),
        ("slice_location", True),
        ("slice_position", True),
    ),
    "rendition": (("window_center", True), ("window_width", True)),
    "label": (
        ("confidence", True),
        ("x_min", True),
        ("y_min", True),
        ("x_max", True),
        ("y_max", True),
    ),
    "inference_run": (
        ("score_threshold", False),
        ("iou_threshold", False),
        ("latency_ms", False),
    ),
    "prediction": (
        ("score", False),
        ("x_min", False),
        ("y_min", False),
        ("x_max", False),
        ("y_max", False),
    ),
}


def _retype(old: sa.types.TypeEngine[Any], new: sa.types.TypeEngine[Any]) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        # PostgreSQL's FLOAT and SQLite's REAL are 8 bytes already (and SQLite could only
        # retype by copying every table: slow on a big lake).
        return
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name, nullable in columns:
                batch_op.alter_column(name, existing_type=old, type_=new, nullable=nullable)


def _format_length(old: int, new: int) -> None:
    with op.batch_alter_table("export", schema=None) as batch_op:
        batch_op.alter_column(
            "format", existing_type=sa.String(old), type_=sa.String(new), nullable=False
        )


DOUBLE = mysql.DOUBLE(asdecimal=False)


def upgrade() -> None:
    _retype(sa.Float(), DOUBLE)
    _format_length(10, 20)


def downgrade() -> None:
    _format_length(20, 10)
    _retype(DOUBLE, sa.Float())
