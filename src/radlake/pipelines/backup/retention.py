"""Which backups a folder holds, and `--keep N`: the last N complete ones stay.

The rule: backups are ordered by name (their UTC start time). Keeping N keeps the N
newest complete backups (with a manifest) and always the one just written; older
complete ones are deleted. An incomplete backup (no manifest: a run that died) is
deleted when it is older than the newest complete one and nothing in it was written
for an hour, so a backup still being written by another process is never touched.
Folders whose name is not a backup name are never touched.

A backup is deleted manifest first: if the deletion stops half way, what is left is
an incomplete backup (never restored, removed by the next prune), never a manifest
that promises files which are gone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from radlake.errors import ObjectNotFound
from radlake.pipelines.backup.manifest import MANIFEST, join_key, name_order
from radlake.storage.store import ObjectStore

INCOMPLETE_MIN_AGE = 3600.0  # seconds without a write before an incomplete backup is old


@dataclass(frozen=True, slots=True)
class StoredBackup:
    """A backup folder: its name, whether it is complete, and its keys."""

    name: str
    complete: bool
    keys: tuple[str, ...]


def list_backups(store: ObjectStore, prefix: str) -> list[StoredBackup]:
    """The backups under prefix, oldest first (by name).

    Raises:
        StoreUnavailable, StorageError: the store failed.
    """
    keys: defaultdict[str, list[str]] = defaultdict(list)
    start = len(prefix.strip("/")) + 1 if prefix.strip("/") else 0
    for key in store.list(prefix):
        name, _, rest = key[start:].partition("/")
        if rest and name_order(name) is not None:
            keys[name].append(key)
    found = [
        StoredBackup(name, join_key(prefix, name, MANIFEST) in names, tuple(names))
        for name, names in keys.items()
    ]
    return sorted(found, key=lambda backup: name_order(backup.name) or ("", 0))


def prune(
    store: ObjectStore, prefix: str, keep: int, *, just_written: str, now: float | None = None
) -> list[str]:
    """Delete what the retention rule (module docstring) lets go; returns their names.

    Raises:
        ValueError: keep is below 1.
        StoreUnavailable, StorageError: the store failed.
    """
    if keep < 1:
        raise ValueError(f"expected keep >= 1, got {keep}")
    now = time.time() if now is None else now
    backups = list_backups(store, prefix)
    complete = [backup for backup in backups if backup.complete]
    kept = {backup.name for backup in complete[-keep:]} | {just_written}
    newest = name_order(complete[-1].name) if complete else None
    doomed = [
        backup
        for backup in backups
        if backup.name not in kept and (backup.complete or _abandoned(store, backup, newest, now))
    ]
    for backup in doomed:
        _delete(store, prefix, backup)
    return [backup.name for backup in doomed]


def _abandoned(
    store: ObjectStore, backup: StoredBackup, newest: tuple[str, int] | None, now: float
) -> bool:
    """An incomplete backup older than the newest complete one, idle for an hour."""
    order = name_order(backup.name)
    if newest is None or order is None or order >= newest:
        return False
    return _idle_since(store, backup) < now - INCOMPLETE_MIN_AGE


def _idle_since(store: ObjectStore, backup: StoredBackup) -> float:
    """When the last object of a backup was written (epoch seconds; now if unknown)."""
    latest = 0.0
    for key in backup.keys:
        try:
            modified = store.info(key).modified
        except ObjectNotFound:
            continue
        if modified is None:
            return time.time()
        latest = max(latest, modified)
    return latest


def _delete(store: ObjectStore, prefix: str, backup: StoredBackup) -> None:
    manifest = join_key(prefix, backup.name, MANIFEST)
    if manifest in backup.keys:
        store.delete(manifest)
    for key in backup.keys:
        if key != manifest:
            store.delete(key)
