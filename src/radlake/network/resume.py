"""What a pull still has to fetch: the instances a PACS lists, less those catalogued.

A pull is resumable because it asks first: the SOP Instance UIDs found at the
instance level are compared with the catalog's `image.sop_instance_uid` (indexed),
and only the missing ones are moved or retrieved. A pull that stopped half-way, run
again, fetches what is left; run once more, it fetches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, Select, select
from sqlalchemy.orm import Session

from radlake.catalog.db import run_transaction
from radlake.catalog.models import Image

LOOKUP_CHUNK = 500  # bound parameters per IN (...): far below every backend's limit


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance a PACS listed: where it sits and its SOP class (C-GET needs it)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""


@dataclass(slots=True)
class SeriesWork:
    """The instances of one series to fetch; `whole` when none of it is catalogued
    (then the series can be asked for as one, at SERIES level)."""

    study_uid: str
    series_uid: str
    instances: list[Instance] = field(default_factory=list)
    whole: bool = False


@dataclass(frozen=True, slots=True)
class PullPlan:
    """What a query found and what of it is missing from the catalog."""

    studies: int
    series: int
    found: int
    work: list[SeriesWork]

    @property
    def missing(self) -> int:
        return sum(len(item.instances) for item in self.work)

    @property
    def skipped(self) -> int:
        return self.found - self.missing


def catalogued_uids(engine: Engine, uids: Iterable[str]) -> set[str]:
    """The subset of `uids` that some catalogued image carries.

    Raises:
        CatalogError: the catalog kept failing (retried first).
    """
    wanted = sorted(set(uids))
    found: set[str] = set()
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start : start + LOOKUP_CHUNK]
        query = select(Image.sop_instance_uid).where(Image.sop_instance_uid.in_(chunk))

        def lookup(session: Session, query: Select[str | None] = query) -> set[str]:
            return {str(uid) for uid in session.scalars(query)}

        found |= run_transaction(engine, lookup)
    return found


def plan_pull(
    engine: Engine, studies: int, series: Sequence[tuple[str, str, list[Instance]]]
) -> PullPlan:
    """The plan for `series` ((study UID, series UID, its instances) as listed).

    Raises:
        CatalogError: the catalog kept failing.
    """
    present = catalogued_uids(engine, (i.sop_uid for _, _, items in series for i in items))
    work = []
    for study_uid, series_uid, items in series:
        missing = [i for i in items if i.sop_uid not in present]
        if missing:
            whole = len(missing) == len(items)
            work.append(SeriesWork(study_uid, series_uid, missing, whole))
    found = sum(len(items) for _, _, items in series)
    return PullPlan(studies=studies, series=len(series), found=found, work=work)
