"""Walking the inputs: every file found becomes a task or a rejection, never nothing."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from radlake.catalog.persist import RejectedInput
from radlake.errors import RadlakeError


class InputPathError(RadlakeError, FileNotFoundError):
    """A path given to ingest does not exist."""


@dataclass(frozen=True, slots=True)
class InputFile:
    """A file to ingest: where to read it, and the key it is known by (the path given)."""

    path: str
    source_key: str


@dataclass(frozen=True, slots=True)
class Discovery:
    files: list[InputFile]
    rejected: list[RejectedInput]


def _file_problem(path: str) -> str | None:
    """Why a directory entry cannot be read as a file, or None when it can."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: the link resolves to itself"
        if exc.errno == errno.ENOENT:
            return "broken symlink: its target does not exist"
        return f"unreadable: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device)"
    return None


def discover(paths: Sequence[str | Path]) -> Discovery:
    """Files under paths (folders are walked, symlinks followed once), sorted.

    Raises:
        InputPathError: a given path does not exist.
    """
    files: list[InputFile] = []
    rejected: list[RejectedInput] = []
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        raise InputPathError(f"no such file or folder: {missing[0]}")
    for given in paths:
        top = str(given)
        if not os.path.isdir(top):
            problem = _file_problem(top)
            if problem:
                rejected.append(RejectedInput(source_key=top, reason=problem))
            else:
                files.append(InputFile(top, top))
            continue
        _walk(top, files, rejected)
    return Discovery(files, rejected)


def _walk(top: str, files: list[InputFile], rejected: list[RejectedInput]) -> None:
    visited: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        rejected.append(
            RejectedInput(source_key=str(exc.filename), reason=f"unreadable folder: {exc.strerror}")
        )

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=on_error):
        info = os.stat(dirpath)
        identity = (info.st_dev, info.st_ino)
        if identity in visited:
            # A folder link back into the walk (a loop, or a second link to one folder):
            # following it again would repeat work or never end.
            rejected.append(
                RejectedInput(
                    source_key=dirpath,
                    reason="symlink loop: this folder link leads to a folder already walked",
                )
            )
            dirnames[:] = []
            continue
        visited.add(identity)
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            problem = _file_problem(path)
            if problem:
                rejected.append(RejectedInput(source_key=path, reason=problem))
            else:
                files.append(InputFile(path, path))
