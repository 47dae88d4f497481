"""Saved cohorts: named filters that a zip or a dataset version can be made from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radlake.catalog.models import Cohort
from radlake.errors import RadlakeError


class CohortExists(RadlakeError, ValueError):
    """A cohort with this name is already saved."""


def list_cohorts(session: Session) -> list[Cohort]:
    """Every saved cohort, by name."""
    return list(session.scalars(select(Cohort).order_by(Cohort.name)))


def find_cohort(session: Session, *, name: str) -> Cohort | None:
    """The cohort named name, or None."""
    return session.scalar(select(Cohort).where(Cohort.name == name))


def add_cohort(
    session: Session, *, name: str, selection: Mapping[str, Any], created_by: str
) -> Cohort:
    """Save a cohort (flushed, so a clash shows here rather than at commit).

    Raises:
        CohortExists: a cohort with this name is already saved.
    """
    cohort = Cohort(name=name, selection=dict(selection), created_by=created_by)
    session.add(cohort)
    try:
        session.flush()
    except IntegrityError:
        # The unique name decides, also between two concurrent saves.
        session.rollback()
        raise CohortExists(f"a cohort named {name!r} exists") from None
    return cohort


def delete_cohort(session: Session, *, name: str) -> bool:
    """Delete the cohort named name (its images stay); False when there is none."""
    cohort = find_cohort(session, name=name)
    if cohort is None:
        return False
    session.delete(cohort)
    return True
