"""The lake's analytics warehouse (issue 12): one denormalised document per image.

    catalog ──changes.py──► changed image ids (watermark: ids seen, per table)
            ──documents.py─► nested documents (image, series, study, patient, labels,
                             predictions, feedback, memberships), read in batches
            ──build.py─────► part files under warehouse/ in the store, then _state.json
    warehouse ──sql.py─────► DuckDB views (images, labels, predictions, feedback,
                             memberships) for `radlake sql`

Store layout (each format keeps its own state and parts):

    warehouse/_state.json                 parquet: watermark, live parts (written last)
    warehouse/images/part-*.parquet       parquet documents
    warehouse/jsonl/_state.json           the same for JSON lines
    warehouse/jsonl/images/part-*.jsonl   one document a line (MongoDB/DocumentDB import)

Each build appends parts; a newer document of an image supersedes older ones (the
views keep the newest per image); `--full` rewrites everything and drops old parts.
"""

from __future__ import annotations

from radlake.warehouse.state import WarehouseError

__all__ = ["WarehouseError"]
