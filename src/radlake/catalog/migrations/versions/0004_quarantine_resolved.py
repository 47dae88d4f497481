"""quarantine rows resolved by a later catalogue; input keys as text

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 02:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_quarantine_sha256"), ["sha256"], unique=False)
        batch_op.alter_column(
            "source_key", existing_type=sa.String(length=1024), type_=sa.Text(), nullable=False
        )
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.alter_column(
            "source_key", existing_type=sa.String(length=1024), type_=sa.Text(), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.alter_column(
            "source_key", existing_type=sa.Text(), type_=sa.String(length=1024), nullable=False
        )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.alter_column(
            "source_key", existing_type=sa.Text(), type_=sa.String(length=1024), nullable=False
        )
        batch_op.drop_index(batch_op.f("ix_quarantine_sha256"))
        batch_op.drop_column("resolved_at")
