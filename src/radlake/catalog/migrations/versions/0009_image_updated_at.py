"""image.updated_at: when an image's catalogued metadata last changed in place

A dataset source claiming folder-ingested images, or its re-run with corrected
metadata, rewrites image rows in place (attributes, modality, view, source); an upload
adds its facts to the attributes. Nothing recorded that, so caches of the catalog (the
dashboard's) could not tell such a change from no change. Empty until a row changes.
Indexed, as is label.created_at: the dashboard reads the newest of each on every page
(SQLite reuses a deleted newest label id, so only the insert time shows a replacement).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 13:58:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_image_updated_at"), ["updated_at"], unique=False)
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_label_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_label_created_at"))
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_updated_at"))
        batch_op.drop_column("updated_at")
