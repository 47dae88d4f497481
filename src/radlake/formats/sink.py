"""Where an export's files go: a local folder or the lake's object store.

Exporters only call `write(relative_path, data)`; the two sinks here differ in
where the bytes land, never in what is written, so an export to a folder and one
to the store are byte-identical. Paths are '/'-separated and relative to the
export's root; anything that could escape it ('..', an absolute path, a backslash)
is refused before a byte is written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import uuid
from typing import Protocol

from radlake.errors import StorageError
from radlake.storage.store import ObjectStore

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# An empty, '.' or '..' component (which also catches '', a leading '/' and '//'),
# or a character that is a separator or root on Windows (backslash, drive colon),
# or NUL. One regex: it runs for each of the thousands of files of an export.
_UNSAFE_PATH = re.compile(r"(?:^|/)\.{0,2}(?:/|$)|[\\:\x00]")


class Sink(Protocol):
    """Receives the files of one export."""

    def write(self, relative_path: str, data: bytes) -> None:
        """Store data at relative_path (replacing any file there)."""


def check_relative_path(relative_path: str) -> str:
    """relative_path, when it is a safe path relative to the export's root.

    Raises:
        StorageError: the path is empty or absolute, or has '..', '.', an empty
            component, a backslash, a drive colon or a NUL.
    """
    if _UNSAFE_PATH.search(relative_path):
        raise StorageError(
            f"expected a relative path inside the export without '..', got {relative_path[:120]!r}"
        )
    return relative_path


def export_prefix(dataset: str, version: str, format_name: str) -> str:
    """exports/<dataset>/<version>/<format>/: where an export lives in the store.

    Raises:
        StorageError: a part is not a plain name (letters, digits, '_', '.', '-').
    """
    for part in (dataset, version, format_name):
        if not _NAME.match(part):
            raise StorageError(f"expected a plain name for an export key part, got {part[:80]!r}")
    return f"exports/{dataset}/{version}/{format_name}/"


class FolderSink:
    """Writes into a local folder (created when missing), one file at a time, atomically.

    Each file goes to a hidden temporary file in its destination folder, then
    os.replace moves it into place (atomic within a file system), so a crash never
    leaves a half-written file under a real name. No fsync: like the store, this
    guards against crashes of the process, not of the machine.

    Raises (on construction):
        StorageError: the folder cannot be created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(path))
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create export folder: {exc}") from exc
        # Folders already made: thousands of label files share a few folders.
        self._folders: set[str] = {self.root}
        # Temporary names: one random token per sink plus a counter (O_EXCL still
        # refuses a clash); a uuid4 per file costs more than the write of a label.
        self._token = uuid.uuid4().hex[:12]
        self._counter = itertools.count()

    def write(self, relative_path: str, data: bytes) -> None:
        """Write data to <root>/<relative_path> atomically.

        Raises:
            StorageError: the path is unsafe (see `check_relative_path`) or the
                file system failed.
        """
        check_relative_path(relative_path)
        target = f"{self.root}{os.sep}{relative_path}"
        if os.sep != "/":
            target = target.replace("/", os.sep)
        folder, _, name = target.rpartition(os.sep)
        temporary = f"{folder}{os.sep}.{name}.{self._token}{next(self._counter)}.tmp"
        try:
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                try:
                    view = memoryview(data)
                    while view:  # os.write may write less than asked
                        view = view[os.write(descriptor, view) :]
                finally:
                    os.close(descriptor)
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write export file {relative_path}: {exc}") from exc


class StoreSink:
    """Writes into an object store under a key prefix (see `export_prefix`).

    The store makes every put atomic (temporary file and rename locally, a single
    PUT on S3).

    Raises (on construction):
        StorageError: prefix is not empty and not a safe relative folder.
    """

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        prefix = prefix.rstrip("/")  # a leading '/' stays and is refused
        if prefix:
            check_relative_path(prefix)
        self.store = store
        self.prefix = f"{prefix}/" if prefix else ""

    def write(self, relative_path: str, data: bytes) -> None:
        """Put data under <prefix><relative_path>.

        Raises:
            StorageError: the path is unsafe or the store failed.
        """
        check_relative_path(relative_path)
        self.store.put_bytes(self.prefix + relative_path, data)
