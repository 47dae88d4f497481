"""`radlake warehouse build`: write the documents of changed images as new parts.

A build reads the watermark (state.py), asks the catalog which images changed
(changes.py), reads their documents in batches (documents.py), writes them as part
files of at most PART_DOCUMENTS documents, and writes the state last. A document
supersedes the older documents of its image (every document carries its build
number; the DuckDB views keep the newest), so nothing is rewritten in place and a
crash mid-build leaves the previous warehouse whole. `full` (and the first build,
or one after a schema change) writes every image's document afresh, makes those
parts the only live ones and deletes every other part under the format's folder.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.db import batches, run_transaction
from radlake.catalog.models import Image
from radlake.lake import Lake
from radlake.storage.store import ObjectStore
from radlake.warehouse.changes import (
    Changes,
    scan_changes,
    watermark_as_dict,
    watermark_from_dict,
)
from radlake.warehouse.documents import SCHEMA, Document, as_json_line, read_documents
from radlake.warehouse.state import (
    SCHEMA_VERSION,
    Format,
    Part,
    State,
    WarehouseError,
    load_state,
    part_key,
    parts_prefix,
    save_state,
)

PART_DOCUMENTS = 50_000  # documents per part file: bounded memory, few files
ROW_GROUP = 10_000  # documents per Parquet row group
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BuildSummary:
    """What a build did, for the CLI line and --json."""

    format: Format
    full: bool
    reason: str  # why full, or "incremental"
    build: int
    images_written: int
    parts_written: int
    parts: int  # live parts after the build
    images: int  # distinct images with a document
    documents: int  # documents in live parts (superseded ones included)
    parts_removed: int
    seconds: float

    @property
    def superseded(self) -> int:
        return self.documents - self.images

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "full": self.full,
            "reason": self.reason,
            "build": self.build,
            "images_written": self.images_written,
            "parts_written": self.parts_written,
            "parts": self.parts,
            "images": self.images,
            "documents": self.documents,
            "superseded": self.superseded,
            "parts_removed": self.parts_removed,
            "seconds": round(self.seconds, 3),
        }


class _PartWriter:
    """Documents into part files of at most PART_DOCUMENTS each, Parquet or JSON lines."""

    def __init__(self, store: ObjectStore, fmt: Format, build: int) -> None:
        self.store, self.fmt, self.build = store, fmt, build
        self.token = uuid.uuid4().hex[:8]
        self.parts: list[Part] = []
        self._pending: list[Document] = []  # not yet in the open part's buffer
        self._buffer = io.BytesIO()
        self._writer: pq.ParquetWriter | None = None
        self._in_part = 0

    def add(self, documents: Sequence[Document]) -> None:
        for document in documents:
            self._pending.append(document)
            if self._in_part + len(self._pending) >= PART_DOCUMENTS:
                self._flush_part()
        if len(self._pending) >= ROW_GROUP:
            self._flush_pending()

    def close(self) -> list[Part]:
        if self._in_part or self._pending:
            self._flush_part()
        return self.parts

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        if self.fmt == "jsonl":
            for document in self._pending:
                self._buffer.write(as_json_line(document).encode() + b"\n")
        else:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._buffer, SCHEMA, compression="zstd")
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=SCHEMA))
        self._in_part += len(self._pending)
        self._pending = []

    def _flush_part(self) -> None:
        self._flush_pending()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        data = self._buffer.getvalue()
        key = part_key(self.fmt, self.build, self.token, len(self.parts))
        self.store.put_bytes(key, data)
        self.parts.append(Part(key, self.build, self._in_part, len(data)))
        self._buffer, self._in_part = io.BytesIO(), 0


def build_warehouse(
    lake: Lake,
    *,
    fmt: Format = "parquet",
    full: bool = False,
    progress: Progress | None = None,
    retry_seconds: float = 30.0,
) -> BuildSummary:
    """Write the documents of the images that changed since the last build (all of
    them when full, on the first build, or after a schema change).

    Raises:
        WarehouseError: the warehouse's state is unreadable (not when full).
        CatalogUnavailable, StorageError: the catalog or the store failed.
    """
    started = time.monotonic()
    report = progress or (lambda done, total: None)
    try:
        previous = load_state(lake.store, fmt)
    except WarehouseError:
        if not full:
            raise
        # --full needs nothing from the old state (it rewrites every document and
        # deletes every other part), so it is the way out of a damaged one.
        previous = None
    reason = _full_reason(previous, full)
    now = datetime.now(UTC)
    last = None if reason != "incremental" or previous is None else previous.watermark

    def scan(session: Session) -> tuple[Changes, list[int]]:
        changes = scan_changes(
            session, None if last is None else watermark_from_dict(last), now=now.timestamp()
        )
        if changes.image_ids is not None:
            return changes, sorted(changes.image_ids)
        return changes, list(session.scalars(select(Image.id).order_by(Image.id)))

    changes, image_ids = run_transaction(lake.engine, scan, retry_seconds=retry_seconds)
    watermark = watermark_as_dict(changes.watermark)
    if previous is not None and reason == "incremental" and not image_ids:
        if watermark != previous.watermark:  # rows that touch no document (audit reads)
            save_state(lake.store, _replace_watermark(previous, watermark))
        return _summary(previous, reason, 0, 0, 0, started)

    # Without a state (the first build, or --full over a damaged one) the number goes
    # past any part left in the folder, so _remove_unlisted sees those as older.
    build = (previous.build if previous else _newest_part_build(lake.store, fmt)) + 1
    writer = _PartWriter(lake.store, fmt, build)
    written = 0
    report(0, len(image_ids))
    for chunk in batches(image_ids):

        def read(session: Session, chunk: Sequence[int] = chunk) -> list[Document]:
            return read_documents(session, chunk, build=build, built_at=now)

        documents = run_transaction(lake.engine, read, retry_seconds=retry_seconds)
        writer.add(documents)
        written += len(documents)
        report(written, len(image_ids))
    new_parts = writer.close()
    if previous is None or reason != "incremental":
        parts, images, base = tuple(new_parts), written, build
    else:
        parts = previous.parts + tuple(new_parts)
        images, base = previous.images + changes.new_images, previous.full_build
    state = State(
        format=fmt,
        build=build,
        built_at=now.isoformat(),
        watermark=watermark,
        parts=parts,
        images=images,
        full_build=base,
    )
    save_state(lake.store, state)  # the build is live from here on
    removed = 0 if reason == "incremental" else _remove_unlisted(lake.store, state)
    return _summary(state, reason, written, len(new_parts), removed, started)


def _full_reason(previous: State | None, full: bool) -> str:
    if previous is None:
        return "--full" if full else "first build"
    if previous.schema != SCHEMA_VERSION:
        return f"document schema {previous.schema} -> {SCHEMA_VERSION}"
    return "--full" if full else "incremental"


def _replace_watermark(previous: State, watermark: dict[str, Any]) -> State:
    return State(
        format=previous.format,
        build=previous.build,
        built_at=previous.built_at,
        watermark=watermark,
        parts=previous.parts,
        images=previous.images,
        full_build=previous.full_build,
    )


def _remove_unlisted(store: ObjectStore, state: State) -> int:
    """Delete the parts of older builds the new state does not list (superseded
    builds, dead builds).

    Two builds may run at once (nothing locks the warehouse). Parts of this build's
    number or a newer one may belong to a build still running, so they stay; and when
    another build's state replaced this one meanwhile, this build removes nothing,
    since the live state may list parts this one would call stale.
    """
    current = load_state(store, state.format)
    if current is None or current.parts != state.parts:
        return 0
    live = {part.key for part in state.parts}
    stale = [
        key
        for key in store.list(parts_prefix(state.format))
        if key not in live and _part_build(key) < state.build
    ]
    for key in stale:
        store.delete(key)
    return len(stale)


def _newest_part_build(store: ObjectStore, fmt: Format) -> int:
    return max((_part_build(key) for key in store.list(parts_prefix(fmt))), default=0)


def _part_build(key: str) -> int:
    """The build number in a part's key (part_key's layout); 0 for a foreign name, so
    a stray file in the folder is treated as stale."""
    name = key.rsplit("/", 1)[-1]
    fields = name.split("-")
    return int(fields[1]) if len(fields) >= 3 and fields[1].isdigit() else 0


def _summary(
    state: State, reason: str, written: int, parts_written: int, removed: int, started: float
) -> BuildSummary:
    return BuildSummary(
        format=state.format,
        full=reason != "incremental",
        reason=reason,
        build=state.build,
        images_written=written,
        parts_written=parts_written,
        parts=len(state.parts),
        images=state.images,
        documents=state.documents,
        parts_removed=removed,
        seconds=time.monotonic() - started,
    )
