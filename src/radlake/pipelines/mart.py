"""`radlake mart push`: a dataset version's YOLO or COCO export copied to a destination
outside the lake (a folder or an S3 prefix), incrementally, resumably and verified
(issue 12, point 3: the original system's "stage 5", which loaded COCO files and
X-ray images to an on-premise server).

The files come from the exporter itself (`export_version`), one at a time through a
`MartSink`, so the destination receives exactly what `radlake dataset export` writes
and nothing larger than one file is held in memory. For each file the sink decides:

- skip: the destination already holds these bytes. Quick check (rsync's rule): the
  size and modified time the destination reports equal what the destination manifest
  recorded when this content was last verified there. Anything else of the right size
  (a file pushed before a kill, a touched file, `checksum=True`) is read back and
  hashed; equal bytes are kept.
- copy: written atomically (the store's temporary key and rename on a folder, one PUT
  on S3), read back and compared with the sha256 and size of what was sent; a
  mismatch is an error, never a silent success.

The destination manifest `.radlake-mart.json` lists every file radlake put there with
its sha256, size and modified time. Before the first copy it is rewritten with
`complete: false` (and the export's own manifest.json is removed, since a manifest
present means the export finished); it is checkpointed while the push runs, so a
push killed half way leaves a record of what it verified; and it is written last,
with `complete: true`, once every file is in place. A file radlake put there that no
longer belongs to the export is stale: listed, and removed only with prune. Files
radlake never put there are counted and never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from fsspec.implementations.local import LocalFileSystem
from sqlalchemy import Engine

from radlake.catalog.db import session_factory
from radlake.curation.versions import get_version
from radlake.errors import ObjectNotFound, RadlakeError, StorageError, StoreUnavailable
from radlake.formats.manifest import MANIFEST_NAME
from radlake.formats.sink import check_relative_path
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.pipelines.export import export_version
from radlake.storage.store import TMP_PREFIX, ObjectInfo, ObjectStore

MartFormat = Literal["coco", "yolo"]
MART_FORMATS: tuple[MartFormat, ...] = get_args(MartFormat)
MART_MANIFEST = ".radlake-mart.json"
MANIFEST_KIND = "radlake-mart/1"
CHECKPOINT_SECONDS = 5.0  # how much verified work a kill can cost, at most (re-read, not re-sent)
CHECKPOINT_FILES = 500


class MartError(RadlakeError, ValueError):
    """A push request that cannot be done as asked (unknown format, a bad target)."""


class MartVerifyError(StorageError):
    """The destination holds other bytes than were sent, read back after a copy."""


@dataclass(frozen=True, slots=True)
class PushedFile:
    """One file as verified at the destination."""

    sha256: str
    size: int
    modified: float | None  # what the destination reported after the check


@dataclass
class MartSummary:
    """What one push did; bytes count what was sent, seconds the whole push."""

    destination: str
    dataset: str
    version: int
    format: str
    files: int = 0
    copied: int = 0
    skipped: int = 0
    repaired: int = 0  # copies of files that were there but differed (damaged, half-sent)
    bytes_copied: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    images: int = 0
    boxes: int = 0
    stale: list[str] = field(default_factory=list)
    pruned: int = 0
    foreign: int = 0  # files at the destination radlake never put there (left alone)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        rate = self.bytes_copied / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return {
            "destination": self.destination,
            "dataset": self.dataset,
            "version": self.version,
            "format": self.format,
            "files": self.files,
            "copied": self.copied,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "bytes_copied": self.bytes_copied,
            "bytes_total": self.bytes_total,
            "seconds": round(self.seconds, 3),
            "mb_per_second": round(rate, 2),
            "images": self.images,
            "boxes": self.boxes,
            "stale": list(self.stale),
            "pruned": self.pruned,
            "foreign": self.foreign,
            "notes": list(self.notes),
        }


def parse_target(text: str) -> tuple[str, int | None]:
    """DATASET[:VERSION] -> (name, version or None for the newest).

    Raises:
        MartError: an empty name, or a version that is not a positive whole number.
    """
    name, colon, number = text.partition(":")
    if not name:
        raise MartError(f"expected DATASET[:VERSION], got {text[:80]!r}")
    if not colon:
        return name, None
    if not number.isdigit() or int(number) < 1:
        raise MartError(f"expected a version number >= 1 after ':', got {number[:40]!r}")
    return name, int(number)


def check_format(fmt: str) -> MartFormat:
    """fmt when it is a mart format.

    Raises:
        MartError: any other value.
    """
    for known in MART_FORMATS:
        if fmt == known:
            return known
    raise MartError(f"expected --format {' or '.join(MART_FORMATS)}, got {fmt[:40]!r}")


def read_mart_manifest(store: ObjectStore) -> tuple[dict[str, PushedFile], bool]:
    """({path: file} radlake put at the destination, complete) from its manifest;
    ({}, False) when there is none.

    Raises:
        MartError: a manifest that radlake did not write (the folder is not a mart).
        StoreUnavailable, StorageError: the destination failed.
    """
    try:
        data = store.get_bytes(MART_MANIFEST)
    except ObjectNotFound:
        return {}, False
    try:
        parsed = json.loads(data)
        if parsed.get("kind") != MANIFEST_KIND:
            raise ValueError(f"kind {parsed.get('kind')!r}")
        files = {
            str(entry["path"]): PushedFile(
                str(entry["sha256"]),
                int(entry["size"]),
                None if entry.get("modified") is None else float(entry["modified"]),
            )
            for entry in [*parsed["files"], *parsed.get("stale", [])]
        }
        return files, bool(parsed["complete"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MartError(f"expected a radlake mart manifest at {MART_MANIFEST}: {exc!r}") from exc


def _manifest_bytes(
    files: Mapping[str, PushedFile],
    stale: Mapping[str, PushedFile],
    *,
    complete: bool,
    metadata: Mapping[str, object],
) -> bytes:
    def rows(entries: Mapping[str, PushedFile]) -> list[dict[str, object]]:
        return [
            {"path": path, "sha256": f.sha256, "size": f.size, "modified": f.modified}
            for path, f in sorted(entries.items())
        ]

    document = {
        "kind": MANIFEST_KIND,
        "complete": complete,
        "metadata": dict(metadata),
        "files": rows(files),
        "stale": rows(stale),
    }
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _destination_fault(exc: StorageError) -> StorageError:
    """The same error, saying it is the destination's (the lake's store is another)."""
    if isinstance(exc, StoreUnavailable):
        return StoreUnavailable(f"destination {exc}")
    return StorageError(f"destination {exc}")


class MartSink:
    """A Sink that keeps a destination in step with an export, file by file.

    `write` hashes each file and hands the check-and-copy to a pool of `jobs` threads
    (rendering the next image overlaps the upload of this one); at most 2 x jobs files
    wait in memory. The export's manifest.json waits for every file before it goes.
    """

    def __init__(
        self,
        store: ObjectStore,
        previous: Mapping[str, PushedFile],
        *,
        metadata: Mapping[str, object],
        checksum: bool = False,
        jobs: int = 4,
        on_file: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.previous = dict(previous)
        self.metadata = dict(metadata)
        self.checksum = checksum
        self.on_file = on_file
        self.placed: dict[str, PushedFile] = {}  # files of this export, verified in place
        self.copied = self.skipped = self.repaired = self.bytes_copied = self.bytes_total = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="mart")
        self._window = 2 * max(1, jobs)
        self._pending: deque[Future[None]] = deque()
        self._started = False  # the destination was marked incomplete
        self._last_checkpoint = time.monotonic()
        self._since_checkpoint = 0

    # --- the Sink protocol -----------------------------------------------------------

    def write(self, relative_path: str, data: bytes) -> None:
        """Bring the destination's file at relative_path to data (or leave it).

        Raises:
            MartError: the export would write the mart's own manifest.
            StoreUnavailable, StorageError, MartVerifyError: the destination failed.
        """
        check_relative_path(relative_path)
        if relative_path == MART_MANIFEST:
            raise MartError(f"an export may not write {MART_MANIFEST}")
        if relative_path == MANIFEST_NAME:
            self.drain()  # the export's manifest lands after every file it lists
        sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            self.bytes_total += len(data)
        self._pending.append(self._pool.submit(self._place, relative_path, data, sha256))
        while len(self._pending) >= self._window:
            self._pending.popleft().result()
        self._maybe_checkpoint()

    # --- one file ----------------------------------------------------------------------

    def _place(self, path: str, data: bytes, sha256: str) -> None:
        size = len(data)
        found = self._info(path)
        known = self.previous.get(path)
        # This very content was verified here before: other bytes now are damage (a
        # half-sent or changed file), not a new version of the file.
        damaged = found is not None and known is not None and known.sha256 == sha256
        if found is not None and found.size == size:
            trusted = (
                not self.checksum
                and known is not None
                and (known.sha256, known.size) == (sha256, size)
                and known.modified is not None
                and known.modified == found.modified
            )
            if trusted or self._digest(path) == (sha256, size):
                self._record(path, PushedFile(sha256, size, found.modified), copied=False)
                return
        self._mark_started()
        try:
            self.store.put_bytes(path, data, sync=False)
        except StorageError as exc:
            raise _destination_fault(exc) from exc
        if self._digest(path) != (sha256, size):
            raise MartVerifyError(
                f"{path}: read back from the destination, expected {size} bytes with sha256 "
                f"{sha256[:16]}..., got other content"
            )
        placed = self._info(path)
        modified = placed.modified if placed is not None else None
        self._record(path, PushedFile(sha256, size, modified), copied=True, repaired=damaged)

    def _info(self, path: str) -> ObjectInfo | None:
        try:
            return self.store.info(path)
        except ObjectNotFound:
            return None
        except StorageError as exc:
            raise _destination_fault(exc) from exc

    def _digest(self, path: str) -> tuple[str, int] | None:
        try:
            return self.store.digest(path)
        except ObjectNotFound:
            return None
        except StorageError as exc:
            raise _destination_fault(exc) from exc

    def _record(
        self, path: str, placed: PushedFile, *, copied: bool, repaired: bool = False
    ) -> None:
        with self._lock:
            self.placed[path] = placed
            if copied:
                self.copied += 1
                self.repaired += repaired
                self.bytes_copied += placed.size
                self._since_checkpoint += 1
            else:
                self.skipped += 1
        if self.on_file is not None:
            self.on_file(path, copied)

    # --- the destination manifest --------------------------------------------------------

    def _mark_started(self) -> None:
        """Before the first copy: the manifest says incomplete and the export's own
        manifest goes, so no reader takes a half-updated destination for a finished one."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._put_manifest(complete=False)
            try:
                self.store.delete(MANIFEST_NAME)
            except StorageError as exc:
                raise _destination_fault(exc) from exc

    def _maybe_checkpoint(self) -> None:
        with self._lock:
            due = self._since_checkpoint >= CHECKPOINT_FILES or (
                self._since_checkpoint
                and time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS
            )
            if self._started and due:
                self._put_manifest(complete=False)

    def _put_manifest(
        self,
        *,
        complete: bool,
        stale: Mapping[str, PushedFile] | None = None,
        prune: bool = False,
    ) -> None:
        """Write the destination manifest (the lock is held).

        While incomplete, files put there earlier and not (yet) placed by this push
        stay listed: they are at the destination, and the next push must know they
        are radlake's. Complete, it lists this export's files and the stale ones
        (none once pruned)."""
        if complete:
            files, left = dict(self.placed), dict(stale or {})
        else:
            files, left = self.previous | self.placed, {}
        try:
            if prune:
                for path in sorted(left):
                    self.store.delete(path)
                left = {}
            self.store.sync()  # every file listed is durable before the list is
            data = _manifest_bytes(files, left, complete=complete, metadata=self.metadata)
            self.store.put_bytes(MART_MANIFEST, data)
        except StorageError as exc:
            raise _destination_fault(exc) from exc
        self._last_checkpoint, self._since_checkpoint = time.monotonic(), 0

    def drain(self) -> None:
        """Wait for every file handed over so far; the first failure raises."""
        while self._pending:
            self._pending.popleft().result()

    def finish(self, *, prune: bool) -> list[str]:
        """After the export: every file in place, the files radlake put there that no
        longer belong (stale) removed with prune, the manifest written last; returns
        the stale paths.

        Raises:
            StoreUnavailable, StorageError, MartVerifyError: the destination failed.
        """
        self.drain()
        stale = {
            path: pushed
            for path, pushed in self.previous.items()
            if path not in self.placed and self._info(path) is not None
        }
        with self._lock:
            wanted = _manifest_bytes(
                self.placed, {} if prune else stale, complete=True, metadata=self.metadata
            )
            # A push that changed nothing rewrites nothing: the destination stays
            # byte-identical (and a read-only consumer sees no write at all).
            if self._started or stale or self._current_manifest() != wanted:
                self._put_manifest(complete=True, stale=stale, prune=prune)
        return sorted(stale)

    def _current_manifest(self) -> bytes | None:
        try:
            return self.store.get_bytes(MART_MANIFEST)
        except ObjectNotFound:
            return None
        except StorageError as exc:
            raise _destination_fault(exc) from exc

    def close(self) -> None:
        """Stop the threads (pending copies are abandoned after an error)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def push_version(
    *,
    engine: Engine,
    lake_store: ObjectStore,
    destination: ObjectStore,
    dataset: str,
    version: int | None,
    fmt: str,
    size: int | None = 1024,
    mode: Literal["pad", "stretch"] = "pad",
    prune: bool = False,
    checksum: bool = False,
    jobs: int = 4,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    on_file: Callable[[str, bool], None] | None = None,
) -> MartSummary:
    """Push one version's export to destination; recorded in the catalog as an export.

    Raises:
        MartError: an unknown format, or a destination manifest radlake did not write.
        DatasetError: no such dataset or version.
        FormatError, StorageError: the exporter or the lake's store failed.
        StoreUnavailable, StorageError, MartVerifyError: the destination failed (the
            message starts with "destination").
    """
    chosen = check_format(fmt)
    started = time.monotonic()
    # The version first: a bad name or number touches nothing at the destination.
    with session_factory(engine)() as session:
        number = get_version(session, dataset, version).version
    try:
        destination.remove_stale_temporary()  # a killed push's temporaries (folders only)
        previous, _ = read_mart_manifest(destination)
    except StorageError as exc:
        raise _destination_fault(exc) from exc
    metadata: dict[str, object] = {
        "dataset": dataset,
        "version": number,
        "format": chosen,
        "size": size,
        "mode": mode,
    }
    sink = MartSink(
        destination, previous, metadata=metadata, checksum=checksum, jobs=jobs, on_file=on_file
    )
    try:
        exported = export_version(
            engine=engine,
            store=lake_store,
            dataset=dataset,
            version=number,
            fmt=chosen,
            sink=sink,
            location=destination.url,
            size=size,
            mode=mode,
            max_decoded_bytes=max_decoded_bytes,
        )
        stale = sink.finish(prune=prune)
    finally:
        sink.close()
    try:
        keys = set(destination.list(""))
    except StorageError as exc:
        raise _destination_fault(exc) from exc
    _remove_empty_tmp(destination)
    foreign = keys - set(sink.placed) - set(stale) - {MART_MANIFEST}
    return MartSummary(
        destination=destination.url,
        dataset=dataset,
        version=number,
        format=chosen,
        files=len(sink.placed),
        copied=sink.copied,
        skipped=sink.skipped,
        repaired=sink.repaired,
        bytes_copied=sink.bytes_copied,
        bytes_total=sink.bytes_total,
        seconds=time.monotonic() - started,
        images=exported.images_written,
        boxes=exported.boxes_written,
        stale=[] if prune else stale,
        pruned=len(stale) if prune else 0,
        foreign=len(foreign),
        notes=list(exported.notes),
    )


def _remove_empty_tmp(store: ObjectStore) -> None:
    """A folder destination keeps no empty tmp/ (the store's temporaries) behind."""
    if isinstance(store.fs, LocalFileSystem):
        with contextlib.suppress(OSError):
            os.rmdir(f"{store.root}/{TMP_PREFIX}")
