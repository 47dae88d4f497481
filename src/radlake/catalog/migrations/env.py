"""Alembic environment: radlake passes its engine in config.attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

# Imported for their tables (feedback_models brings inference_models'): Base.metadata.
import radlake.catalog.deid_models
import radlake.catalog.feedback_models  # noqa: F401
from radlake.catalog.models import Base

config = context.config
engine: Engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
