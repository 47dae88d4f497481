"""One uploaded object through the ingest pipeline: the REST upload and STOW-RS parts."""

from __future__ import annotations

from radlake.api.decoding import decode_slot
from radlake.lake import Lake
from radlake.pipelines.ingest import BytesOutcome, ingest_bytes


def ingest_upload(lake: Lake, data: bytes, *, source: str, key: str) -> BytesOutcome:
    """Ingest data inside a decode slot (the preview decodes it); nothing is kept of a
    rejected upload: its sender has it, and gets the reason.

    Raises:
        StorageError, CatalogError: the store or catalog failed past its retries.
    """
    with decode_slot():
        return ingest_bytes(
            data,
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            source=source,
            source_kind="upload",
            source_key=key,
            limits=lake.limits,
            keep_rejected=False,
        )
