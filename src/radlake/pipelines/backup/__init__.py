"""Catalog backup and restore (issue 12): Parquet snapshots of every table.

snapshot.backup_catalog    one consistent read -> <prefix>/<UTC time>/*.parquet + manifest
restore.restore_catalog    a verified backup -> an empty catalog, any backend
retention.prune            --keep N: the last N complete backups stay
columns                    the explicit column type <-> Arrow type mapping
manifest                   manifest.json (written last) and backup names
"""

from __future__ import annotations

from radlake.pipelines.backup.columns import BackupError
from radlake.pipelines.backup.manifest import BACKUPS_PREFIX, Manifest, read_manifest
from radlake.pipelines.backup.restore import RestoreSummary, locate_backup, restore_catalog
from radlake.pipelines.backup.retention import list_backups, prune
from radlake.pipelines.backup.snapshot import BackupSummary, backup_catalog

__all__ = [
    "BACKUPS_PREFIX",
    "BackupError",
    "BackupSummary",
    "Manifest",
    "RestoreSummary",
    "backup_catalog",
    "list_backups",
    "locate_backup",
    "prune",
    "read_manifest",
    "restore_catalog",
]
