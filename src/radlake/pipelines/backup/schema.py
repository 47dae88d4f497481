"""Schema revisions for restore: which ones this code knows, and moving an empty
catalog to the one a backup was written at."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from radlake.catalog.db import MIGRATIONS


def alembic_config(engine: Engine) -> Config:
    """Alembic's configuration for the catalog's migrations on engine."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def known_revisions(engine: Engine) -> list[str]:
    """Every revision this code has a migration for, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def current_revision(engine: Engine) -> str | None:
    """The catalog's revision (None: no schema yet)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def move_to(engine: Engine, revision: str) -> None:
    """Upgrade (or, for an empty catalog made by a newer `init`, downgrade) the
    catalog's schema to revision."""
    order = known_revisions(engine)
    current = current_revision(engine)
    if current == revision:
        return
    config = alembic_config(engine)
    if current is None or order.index(current) < order.index(revision):
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)
