"""deid_instance: each DICOM image's de-identified object and what DICOMweb serves from it

Issue 13: researchers and viewers get de-identified objects only (PS3.15 Annex E). The
object is a rendition in the store; this table keeps its remapped UIDs, the attributes
QIDO-RS matches on as they read after de-identification, its DICOM JSON header (WADO-RS
metadata) and the pixel check's verdict. SOP Instance UIDs are indexed, not unique: two
originals may carry one UID (the same instance in two transfer syntaxes).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 17:09:08.588468
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deid_instance",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("transfer_syntax", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_time", sa.String(length=16), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("study_description", sa.String(length=64), nullable=True),
        sa.Column("series_description", sa.String(length=64), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("header", sa.JSON(), nullable=False),
        sa.Column("pixels", sa.String(length=16), nullable=False),
        sa.Column("text_regions", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["image.id"],
            name=op.f("fk_deid_instance_image_id_image"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deid_instance")),
        sa.UniqueConstraint("image_id", name=op.f("uq_deid_instance_image_id")),
    )
    with op.batch_alter_table("deid_instance", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deid_instance_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_deid_instance_series_uid"), ["series_uid"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_deid_instance_sop_uid"), ["sop_uid"], unique=False)
        batch_op.create_index("ix_deid_instance_study_date", ["study_date"], unique=False)
        batch_op.create_index(
            "ix_deid_instance_study_series", ["study_uid", "series_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deid_instance", schema=None) as batch_op:
        batch_op.drop_index("ix_deid_instance_study_series")
        batch_op.drop_index("ix_deid_instance_study_date")
        batch_op.drop_index(batch_op.f("ix_deid_instance_sop_uid"))
        batch_op.drop_index(batch_op.f("ix_deid_instance_series_uid"))
        batch_op.drop_index(batch_op.f("ix_deid_instance_patient_id"))

    op.drop_table("deid_instance")
