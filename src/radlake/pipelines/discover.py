"""Walking the inputs: every file found becomes a task or a rejection, never nothing.

File names are bytes on POSIX and need not be UTF-8 (a Latin-1 `M\xfcller.dcm`, a
folder named 0xff 0xfe). The catalog stores text, so each input is known by
`key_of_path(path)`: the path itself when it is clean UTF-8 text, else a quoted form
in the manner of git's core.quotePath, `"M\\xfcller.dcm"` (undecodable bytes and
control characters as \\xNN, backslash and quote escaped), which `path_of_key`
turns back into the exact bytes.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from radlake.domain import RejectedInput
from radlake.errors import RadlakeError


class InputPathError(RadlakeError, FileNotFoundError):
    """A path given to ingest does not exist."""


_QUOTE = '"'
_ESCAPED = re.compile(r'\\(x[0-9a-f]{2}|\\|")')


def _needs_quoting(text: str) -> bool:
    return text.startswith(_QUOTE) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def key_of_path(path: str | Path) -> str:
    """The text an input path is catalogued under (lossless; see the module docstring)."""
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not _needs_quoting(text):
            return text
    out = [_QUOTE]
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif char in ("\\", _QUOTE):
            out.append("\\" + char)
        else:
            out.append(char)
    out.append(_QUOTE)
    return "".join(out)


def path_of_key(key: str) -> str:
    """The path (as os functions take it) an input key stands for."""
    if not (len(key) >= 2 and key.startswith(_QUOTE) and key.endswith(_QUOTE)):
        return key
    raw = bytearray()
    position = 1
    for match in _ESCAPED.finditer(key, 1, len(key) - 1):
        raw += key[position : match.start()].encode("utf-8")
        escape = match.group(1)
        raw += bytes([int(escape[1:], 16)]) if escape.startswith("x") else escape.encode()
        position = match.end()
    raw += key[position : len(key) - 1].encode("utf-8")
    return os.fsdecode(bytes(raw))


def input_key(path: str | Path) -> str:
    """The key an input path is catalogued under: absolute (a re-run or `verify
    --repair` from another folder finds it) and lossless (key_of_path)."""
    return key_of_path(os.path.abspath(path))


@dataclass(frozen=True, slots=True)
class InputFile:
    """A file to ingest: where to read it, and the key it is known by (key_of_path)."""

    path: str
    source_key: str

    @classmethod
    def at(cls, path: str) -> InputFile:
        return cls(path, input_key(path))


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
        raise InputPathError(f"no such file or folder: {key_of_path(missing[0])}")
    for given in paths:
        top = str(given)
        if not os.path.isdir(top):
            problem = _file_problem(top)
            if problem:
                rejected.append(RejectedInput(source_key=input_key(top), reason=problem))
            else:
                files.append(InputFile.at(top))
            continue
        _walk(top, files, rejected)
    return Discovery(files, rejected)


def _walk(top: str, files: list[InputFile], rejected: list[RejectedInput]) -> None:
    visited: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        rejected.append(
            RejectedInput(
                source_key=input_key(str(exc.filename)),
                reason=f"unreadable folder: {exc.strerror}",
            )
        )

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=on_error):
        info = os.stat(dirpath)
        identity = (info.st_dev, info.st_ino)
        if identity in visited:
            # A folder link back into the walk (a loop, or a second link to one folder):
            # following it again would repeat work or never end.
            rejected.append(
                RejectedInput(
                    source_key=input_key(dirpath),
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
                rejected.append(RejectedInput(source_key=input_key(path), reason=problem))
            else:
                files.append(InputFile.at(path))
