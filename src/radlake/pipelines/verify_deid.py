"""`radlake verify`'s pass over de-identified objects (issue 13): each deid_instance row's
object must be in the store with the bytes its row records (size and sha256).

A missing or changed object would otherwise be served as it is (garbage with a 200)
or break a DICOMweb stream halfway. With repair, the objects are made again from their
originals (the lake's de-identification, `remake`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import Engine, select

from radlake.catalog.db import session_factory
from radlake.catalog.deid_models import DeidInstance
from radlake.errors import ObjectNotFound
from radlake.pipelines.verify import PAGE_SIZE, Finding, Kind, Progress, Remake
from radlake.storage.store import ObjectStore


def check_deid_objects(
    engine: Engine,
    store: ObjectStore,
    *,
    report: Callable[[Finding], None],
    remake: Remake | None = None,
    progress: Progress | None = None,
) -> int:
    """Check every de-identified object; report each problem (repaired when remake is
    given and succeeds). Returns the number of objects checked.

    Raises:
        StorageError, CatalogError: the store or the catalog failed.
    """
    bad: list[tuple[Kind, str, int, str]] = []
    checked, after = 0, 0
    with session_factory(engine)() as session:
        while True:
            page = session.execute(
                select(DeidInstance.id, DeidInstance.image_id, DeidInstance.key,
                       DeidInstance.sha256, DeidInstance.size_bytes)
                .where(DeidInstance.id > after)
                .order_by(DeidInstance.id)
                .limit(PAGE_SIZE)
            ).all()  # fmt: skip
            if not page:
                break
            for row in page:
                checked += 1
                problem = _problem(store, row.key, row.sha256, row.size_bytes)
                if problem is not None:
                    bad.append((problem[0], row.key, row.image_id, problem[1]))
                if progress is not None:
                    progress("checking de-identified objects", checked, None)
            after = page[-1].id
    failed = remake([image_id for _, _, image_id, _ in bad]) if remake and bad else {}
    for kind, key, image_id, detail in bad:
        repaired = remake is not None and image_id not in failed
        if remake is not None:
            detail += "; made again from its original" if repaired else f"; {failed[image_id]}"
        report(Finding(kind, "deidentified", key, image_id, detail, repaired))
    return checked


def _problem(store: ObjectStore, key: str, sha256: str, size: int) -> tuple[Kind, str] | None:
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return "missing", "no object under its key"
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        return "corrupt", "its bytes differ from the catalog's size and sha256"
    return None
