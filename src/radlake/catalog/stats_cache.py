"""Dashboard aggregates, cached until the catalog changes.

Every dashboard request reads the catalog's stamp: the newest id and the row count of
each table the dashboards read, and what moves when rows change in place: finished
jobs, open quarantine rows, the images' newest updated_at, the labels' newest insert
time (SQLite reuses a deleted newest id), the newest audit event (a reviewer's change
of mind) and a digest of the model versions' metrics (evaluations write there). It is
two queries. A cached aggregate is reused while the stamp is the one it was computed
under, so a figure is never stale: a new image, label, run, review or job makes the
next request compute it again. Entries are kept per catalog (engine) in a small LRU.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, func, select
from sqlalchemy.orm import Session

from radlake.catalog.feedback_models import Feedback, RetrainSet
from radlake.catalog.inference_models import InferenceRun, ModelAliasEvent, ModelVersion
from radlake.catalog.models import AuditEvent, DatasetVersion, Image, Job, Label, Quarantine

T = TypeVar("T")
MAX_ENTRIES = 128
_TABLES: tuple[Any, ...] = (
    Image,
    Label,
    Job,
    Quarantine,
    DatasetVersion,
    ModelVersion,
    ModelAliasEvent,
    InferenceRun,
    Feedback,
    RetrainSet,
)
_lock = threading.Lock()
# Per engine, weakly (a new engine never finds a dead one's entries), then by key.
_entries: weakref.WeakKeyDictionary[Engine, OrderedDict[tuple[Hashable, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def catalog_stamp(session: Session) -> tuple[Any, ...]:
    """What changes whenever a dashboard figure could: see the module docstring."""
    parts: list[ColumnElement[Any]] = []
    for table in _TABLES:
        parts.append(select(func.max(table.id)).scalar_subquery())
        parts.append(select(func.count(table.id)).scalar_subquery())
    parts.append(select(func.count(Job.id)).where(Job.finished_at.is_not(None)).scalar_subquery())
    parts.append(
        select(func.count(Quarantine.id)).where(Quarantine.resolved_at.is_(None)).scalar_subquery()
    )
    # Changes in place: images (a dataset source's claim or re-run) carry updated_at;
    # labels a source load replaced under reused ids (SQLite) have newer insert times;
    # a reviewer's change of mind rewrites a feedback row and is audited.
    parts.append(select(func.max(Image.updated_at)).scalar_subquery())
    parts.append(select(func.max(Label.created_at)).scalar_subquery())
    parts.append(select(func.max(AuditEvent.id)).scalar_subquery())
    row = session.execute(select(*parts)).one()
    # An evaluation writes into its model version's metrics in place; versions are few.
    metrics = session.execute(
        select(ModelVersion.id, ModelVersion.metrics).order_by(ModelVersion.id)
    )
    digest = hashlib.sha256(
        json.dumps([tuple(r) for r in metrics], sort_keys=True, default=str).encode()
    )
    return (*row, digest.hexdigest())


def cached(session: Session, key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
    """compute()'s value for key on this catalog, computed again when the catalog's
    stamp has moved since. Exceptions are not cached."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    stamp = catalog_stamp(session)
    with _lock:
        kept = _entries.setdefault(engine, OrderedDict())
        found = kept.get(key)
        if found is not None and found[0] == stamp:
            kept.move_to_end(key)
            return found[1]  # type: ignore[no-any-return]
    value = compute()
    with _lock:
        kept[key] = (stamp, value)
        kept.move_to_end(key)
        while len(kept) > MAX_ENTRIES:
            kept.popitem(last=False)
    return value


def clear() -> None:
    """Forget every cached aggregate (tests, and after a restore replaced the catalog)."""
    with _lock:
        _entries.clear()
