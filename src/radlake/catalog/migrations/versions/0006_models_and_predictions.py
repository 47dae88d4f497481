"""models and predictions: model registry, aliases and their history, inference runs
and their predicted boxes (issue 10); predictions never go into `label`

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("name", name=op.f("uq_model_name")),
    )
    op.create_table(
        "model_version",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("store_key", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.JSON(), nullable=False),
        sa.Column("decoder", sa.String(length=40), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column(
            "trained_on_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_version_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["trained_on_id"],
            ["dataset_version.id"],
            name=op.f("fk_model_version_trained_on_id_dataset_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_version_model_id")),
    )
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_version_sha256"), ["sha256"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_model_version_trained_on_id"), ["trained_on_id"], unique=False
        )

    op.create_table(
        "model_alias",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("alias", sa.String(length=40), nullable=False),
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_alias_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_model_alias_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias")),
        sa.UniqueConstraint("model_id", "alias", name=op.f("uq_model_alias_model_id")),
    )
    with op.batch_alter_table("model_alias", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_alias_version_id"), ["version_id"], unique=False)

    op.create_table(
        "model_alias_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("alias", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_alias_event_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_model_alias_event_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias_event")),
    )
    with op.batch_alter_table("model_alias_event", schema=None) as batch_op:
        batch_op.create_index("ix_model_alias_event_alias", ["model_id", "alias"], unique=False)

    op.create_table(
        "inference_run",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "model_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("score_threshold", sa.Float(), nullable=False),
        sa.Column("iou_threshold", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("caller", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["image.id"],
            name=op.f("fk_inference_run_image_id_image"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_inference_run_model_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_run")),
    )
    with op.batch_alter_table("inference_run", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inference_run_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_inference_run_image_id"), ["image_id"], unique=False)
        batch_op.create_index(
            "ix_inference_run_version_image", ["model_version_id", "image_id"], unique=False
        )

    op.create_table(
        "prediction",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(length=100), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("x_min", sa.Float(), nullable=False),
        sa.Column("y_min", sa.Float(), nullable=False),
        sa.Column("x_max", sa.Float(), nullable=False),
        sa.Column("y_max", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["inference_run.id"],
            name=op.f("fk_prediction_run_id_inference_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction")),
    )
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prediction_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    # Dropping a table drops its indexes; MariaDB refuses to drop an index on its own
    # while a foreign key needs it.
    for table in (
        "prediction",
        "inference_run",
        "model_alias_event",
        "model_alias",
        "model_version",
        "model",
    ):
        op.drop_table(table)
