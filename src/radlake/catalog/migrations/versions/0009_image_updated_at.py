"""image.updated_at: when an image's catalogued metadata last changed in place

A dataset source claiming folder-ingested images, or its re-run with corrected
metadata, rewrites image rows in place (attributes, modality, view, source); an upload
adds its facts to the attributes. Nothing recorded that, so caches of the catalog (the
dashboard's) could not tell such a change from no change. Empty until a row changes.

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


def downgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
