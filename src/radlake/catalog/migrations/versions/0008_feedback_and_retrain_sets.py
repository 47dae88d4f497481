"""feedback and retrain sets: reviewers' verdicts on predicted boxes (tied to the
run they reviewed) and the retraining sets made of them, with their lineage (issue 11)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:48:49
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# 8-byte reals on MySQL/MariaDB too (see 0007).
REAL = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retrain_set",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column(
            "model_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "base_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "dataset_version_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("store_prefix", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_version_id"],
            ["dataset_version.id"],
            name=op.f("fk_retrain_set_base_version_id_dataset_version"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["dataset_version.id"],
            name=op.f("fk_retrain_set_dataset_version_id_dataset_version"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_retrain_set_job_id_job")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_retrain_set_model_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_set")),
        sa.UniqueConstraint("dataset_version_id", name=op.f("uq_retrain_set_dataset_version_id")),
        sa.UniqueConstraint("name", name=op.f("uq_retrain_set_name")),
    )
    with op.batch_alter_table("retrain_set", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retrain_set_model_version_id"), ["model_version_id"], unique=False
        )

    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "prediction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "model_version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("verdict", sa.String(length=10), nullable=False),
        sa.Column("class_name", sa.String(length=100), nullable=True),
        sa.Column("x_min", REAL, nullable=True),
        sa.Column("y_min", REAL, nullable=True),
        sa.Column("x_max", REAL, nullable=True),
        sa.Column("y_max", REAL, nullable=True),
        sa.Column("confidence", REAL, nullable=True),
        sa.Column("reviewer", sa.String(length=100), nullable=False),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["image.id"], name=op.f("fk_feedback_image_id_image"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_feedback_model_version_id_model_version"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["prediction.id"],
            name=op.f("fk_feedback_prediction_id_prediction"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["inference_run.id"],
            name=op.f("fk_feedback_run_id_inference_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_feedback_fingerprint")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_image_id"), ["image_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_feedback_prediction_id"), ["prediction_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_feedback_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            "ix_feedback_version_created", ["model_version_id", "created_at"], unique=False
        )

    op.create_table(
        "retrain_set_feedback",
        sa.Column(
            "retrain_set_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "feedback_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["feedback_id"],
            ["feedback.id"],
            name=op.f("fk_retrain_set_feedback_feedback_id_feedback"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["retrain_set_id"],
            ["retrain_set.id"],
            name=op.f("fk_retrain_set_feedback_retrain_set_id_retrain_set"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "retrain_set_id", "feedback_id", name=op.f("pk_retrain_set_feedback")
        ),
    )
    with op.batch_alter_table("retrain_set_feedback", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_retrain_set_feedback_feedback_id"), ["feedback_id"], unique=False
        )


def downgrade() -> None:
    # Whole tables only: MariaDB refuses to drop an index a foreign key uses.
    op.drop_table("retrain_set_feedback")
    op.drop_table("feedback")
    op.drop_table("retrain_set")
