"""An object store over fsspec: file://, memory:// and s3:// behave the same.

Writes are atomic, so a crash never leaves a half object under a real key: on a
local folder bytes go to a temporary file under tmp/ and are renamed into place
(rename is atomic within a file system); on S3 a PUT is atomic by itself (a reader
sees the old object or the whole new one), so it is written directly rather than
paying for a server-side copy and delete; memory:// stores whole values.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from radlake.errors import ObjectNotFound, StorageError

TMP_PREFIX = "tmp"


class ObjectStore:
    """Keys are '/'-separated paths relative to the store's root URL."""

    def __init__(self, url: str, **options: Any) -> None:
        if url.startswith("s3://"):
            # A listing must never make exists()/get() answer from a stale cache: other
            # processes (workers, the API) write to the same bucket.
            options.setdefault("use_listings_cache", False)
        try:
            self.fs, root = fsspec.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open store {url!r}: {exc}") from exc
        self.url = url
        self._options = options
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    def __reduce__(self) -> tuple[Any, ...]:
        # Stores travel to worker processes by URL and options, never as live clients.
        return (_reopen, (self.url, self._options))

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"expected a relative key without '..', got {key[:120]!r}")
        return f"{self.root}/{key}"

    def exists(self, key: str) -> bool:
        """True when an object is stored under key."""
        try:
            return bool(self.fs.exists(self._path(key)))
        except OSError as exc:
            raise StorageError(f"store error checking {key}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store data under key atomically (replacing any object there)."""
        target = self._path(key)
        try:
            if self._local:
                self._put_local(target, data)
            else:
                self.fs.pipe_file(target, data)
        except OSError as exc:
            raise StorageError(f"store error writing {key}: {exc}") from exc

    def _put_local(self, target: str, data: bytes) -> None:
        # Plain os calls: on the ingest hot path fsspec's wrappers cost ~0.2 ms a write.
        temporary = f"{self.root}/{TMP_PREFIX}/{uuid.uuid4().hex}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(temporary), exist_ok=True)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def remove_stale_temporary(self, max_age_seconds: float = 3600.0) -> int:
        """Delete temporary files a killed writer left behind (local stores only);
        returns how many. Only old ones: a live writer's file is never touched."""
        if not self._local:
            return 0
        folder = f"{self.root}/{TMP_PREFIX}"
        removed = 0
        cutoff = time.time() - max_age_seconds
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store data unless key exists (content-addressed keys); True when written."""
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    def get_bytes(self, key: str) -> bytes:
        """The object under key.

        Raises:
            ObjectNotFound: nothing is stored under key.
            StorageError: the store failed.
        """
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object under key {key}") from exc
        except OSError as exc:
            raise StorageError(f"store error reading {key}: {exc}") from exc

    def size(self, key: str) -> int:
        """Size in bytes of the object under key."""
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object under key {key}") from exc

    def delete(self, key: str) -> None:
        """Remove the object under key (no error when absent)."""
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"store error deleting {key}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under prefix, sorted; temporary objects are not listed."""
        base = self.root if not prefix else self._path(prefix.rstrip("/"))
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return iter(())
        keys = sorted(path[len(self.root) + 1 :] for path in found)
        return iter(key for key in keys if not key.startswith(TMP_PREFIX + "/"))


def _reopen(url: str, options: dict[str, Any]) -> ObjectStore:
    return ObjectStore(url, **options)


def open_store(url: str, **options: Any) -> ObjectStore:
    """Open the store at url (file path or URL) with fsspec options."""
    return ObjectStore(url, **options)
