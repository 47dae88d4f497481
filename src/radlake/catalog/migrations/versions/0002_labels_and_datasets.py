"""labels and datasets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:47:24.263003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "dataset",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
        sa.UniqueConstraint("name", name=op.f("uq_dataset_name")),
    )
    op.create_table(
        "dataset_version",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "dataset_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("split_spec", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("label_set", sa.String(length=20), nullable=False),
        sa.Column("fusion", sa.JSON(), nullable=True),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("leakage", sa.JSON(), nullable=False),
        sa.Column("manifest_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["dataset.id"], name=op.f("fk_dataset_version_dataset_id_dataset")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_version")),
        sa.UniqueConstraint("dataset_id", "version", name=op.f("uq_dataset_version_dataset_id")),
    )
    op.create_table(
        "label_class",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "source_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("class_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"], ["source.id"], name=op.f("fk_label_class_source_id_source")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_class")),
        sa.UniqueConstraint("source_id", "name", name=op.f("uq_label_class_source_id")),
    )
    op.create_table(
        "export",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("format", sa.String(length=10), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("manifest_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_version.id"],
            name=op.f("fk_export_version_id_dataset_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export")),
    )
    op.create_table(
        "dataset_member",
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("split", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_dataset_member_image_id_image")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_version.id"],
            name=op.f("fk_dataset_member_version_id_dataset_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "image_id", name=op.f("pk_dataset_member")),
    )
    with op.batch_alter_table("dataset_member", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_member_split", ["version_id", "split"], unique=False)

    op.create_table(
        "label",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "source_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("source_image_key", sa.String(length=255), nullable=False),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("class_name", sa.String(length=100), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=True),
        sa.Column("reader", sa.String(length=64), nullable=True),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("x_min", sa.Float(), nullable=True),
        sa.Column("y_min", sa.Float(), nullable=True),
        sa.Column("x_max", sa.Float(), nullable=True),
        sa.Column("y_max", sa.Float(), nullable=True),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_label_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_label_job_id_job")),
        sa.ForeignKeyConstraint(
            ["source_id"], ["source.id"], name=op.f("fk_label_source_id_source")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label")),
    )
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_label_class_name"), ["class_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_label_image_id"), ["image_id"], unique=False)
        batch_op.create_index(
            "ix_label_source_key", ["source_id", "source_image_key"], unique=False
        )


def downgrade() -> None:
    # Dropping a table drops its indexes (MariaDB refuses to drop an index alone while
    # a foreign key needs it); children before parents.
    for table in (
        "label",
        "dataset_member",
        "export",
        "label_class",
        "dataset_version",
        "dataset",
    ):
        op.drop_table(table)
