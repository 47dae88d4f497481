"""Zip archives streamed as they are built, for bulk downloads (`GET /images.zip`).

The archive leaves in chunks while it is being written: the first bytes go out as soon
as the first entry is read, whatever the archive's size, and memory stays flat (about
one entry plus a chunk). The system radlake replaces built multi-GB zips in memory
before sending the first byte, and users waited 90 s for it.

The standard library's `zipfile.ZipFile` writes into an unseekable sink that the
generator drains. Without `seek()` zipfile cannot go back to patch sizes and CRCs into
the local headers, so it sets general purpose bit 3 and writes them in a data
descriptor after each entry's data (APPNOTE.TXT 4.3.9); the central directory at the
end carries them too. Readers that use the central directory read these archives
(tested: Python's zipfile and Info-ZIP unzip, with ZIP64 too); readers that walk local
headers only (Java's `ZipInputStream`) refuse stored entries with a data descriptor.

ZIP64: each entry's size is known once `read()` returns, so ZIP64 local headers and
descriptors are asked for (`force_zip64`) only for entries near or above 4 GiB, with
zipfile's own 5 % margin for deflate output that grows. Archives above 4 GiB in total
or above 65,535 entries get ZIP64 central-directory records from zipfile by itself.

Archives are reproducible: fixed timestamps, Unix "made by" and mode bits whatever
the host, and deflate at zlib's default level, so the same entries give the same bytes
with the same zlib build, however they are chunked.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

from radlake.errors import RadlakeError

__all__ = ["ZipEntry", "ZipNameError", "stream_zip"]

# zipfile's own rule (ZipFile._open_to_write): deflate may grow data a little, so
# ask for ZIP64 records once the entry comes within 5 % of the 4 GiB limit.
_ZIP64_ENTRY_THRESHOLD = int(zipfile.ZIP64_LIMIT / 1.05)
# APPNOTE.TXT 4.4.2: "version made by" 3 = UNIX, so external_attr holds st_mode bits.
_MADE_BY_UNIX = 3
_FILE_MODE = (stat.S_IFREG | 0o644) << 16
_MAX_NAME_BYTES = 0xFFFF  # the local header stores the name length in 2 bytes


class ZipNameError(RadlakeError, ValueError):
    """An entry's name is not a safe relative path, or repeats an earlier entry's name."""


def _name_problem(name: str) -> str | None:
    """What makes name unsafe to extract (zip slip, Windows paths), or None."""
    if not name:
        return "an empty name"
    if name.startswith("/"):
        return "a name starting with '/'"
    if "\\" in name:
        return "a name containing a backslash"
    if "\x00" in name:
        return "a name containing a NUL character"
    if len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        return "a name starting with a drive letter"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a name with an empty, '.' or '..' path component"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "a name that is not valid Unicode text"
    if len(encoded) > _MAX_NAME_BYTES:
        return f"a name of {len(encoded)} bytes in UTF-8"
    return None


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One file of the archive; `read` is called only when the entry is written.

    `name` is the path inside the archive, '/'-separated and relative: no '..' or '.'
    components, no leading '/', no backslash, no drive letter ('a..b.dcm' is fine).
    `compress=False` stores the bytes as they are (ZIP_STORED), for data that is
    already compressed (JPEG, PNG, DICOM with a JPEG transfer syntax).

    Raises ZipNameError when the name is unsafe; the message leaves the name out, as
    archive paths may be built from patient identifiers.
    """

    name: str
    read: Callable[[], bytes]
    compress: bool = True
    modified: tuple[int, int, int, int, int, int] = (1980, 1, 1, 0, 0, 0)

    def __post_init__(self) -> None:
        problem = _name_problem(self.name)
        if problem is not None:
            raise ZipNameError(
                f"expected a relative archive path like 'study/series/0001.dcm', got {problem}"
            )


class _Sink:
    """Unseekable output: no tell() or seek(), so zipfile writes data descriptors."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:  # part of typeshed's writable protocol; zipfile never calls it
        pass


def _zip_info(entry: ZipEntry) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(entry.name, date_time=entry.modified)
    info.compress_type = zipfile.ZIP_DEFLATED if entry.compress else zipfile.ZIP_STORED
    # ZipInfo says "made by" Windows (0) on Windows and Unix (3) elsewhere; fix it so
    # the bytes do not depend on the host.
    info.create_system = _MADE_BY_UNIX
    info.external_attr = _FILE_MODE
    return info


def _drain(buffer: bytearray, chunk_size: int, *, everything: bool = False) -> Iterator[bytes]:
    while len(buffer) >= chunk_size:
        chunk = bytes(buffer[:chunk_size])
        del buffer[:chunk_size]
        yield chunk
    if everything and buffer:
        chunk = bytes(buffer)
        buffer.clear()
        yield chunk


def stream_zip(
    entries: Iterable[ZipEntry], *, chunk_size: int = 64 * 1024
) -> Generator[bytes, None, None]:
    """Yield the archive's bytes as entries are produced.

    Never holds more than about one entry plus a chunk. `entries` is consumed lazily,
    one entry at a time, and each entry's `read()` is called only when that entry is
    written. Chunks are `chunk_size` bytes except the last; bytes of a finished entry
    that do not fill a chunk wait for the next entry (at most chunk_size - 1 bytes:
    small entries share chunks, which is what makes many small files fast). What is kept across
    entries is only zipfile's record of each entry for the central directory (about
    100 bytes plus the name). It is a generator: `close()` it when the client goes
    away, and no further entry is read.

    Raises ValueError (at the call) when chunk_size is below 1, and, while iterating,
    ZipNameError when an entry repeats an earlier entry's name (before that entry's
    `read()` is called). An exception from an entry's `read()` propagates unchanged,
    with a note giving the entry's position. The stream then ends without the central
    directory: by then the HTTP layer has sent its headers and status, so the client
    gets a truncated body, which zip readers reject as a bad archive.
    """
    if chunk_size < 1:
        raise ValueError(f"expected chunk_size >= 1, got {chunk_size}")
    return _stream(entries, chunk_size)


def _stream(entries: Iterable[ZipEntry], chunk_size: int) -> Generator[bytes, None, None]:
    sink = _Sink()
    seen: set[str] = set()
    # On an exception or an early close() the context managers still finish the entry
    # and write the central directory, but into the sink only: nothing more is yielded.
    with zipfile.ZipFile(sink, "w") as archive:
        for number, entry in enumerate(entries, start=1):
            if entry.name in seen:
                raise ZipNameError(
                    f"expected unique entry names, got entry #{number} repeating an "
                    "earlier entry's name"
                )
            seen.add(entry.name)
            try:
                data = entry.read()
            except Exception as exc:
                exc.add_note(f"raised by read() of zip entry #{number}; the archive is truncated")
                raise
            force_zip64 = len(data) > _ZIP64_ENTRY_THRESHOLD
            with archive.open(_zip_info(entry), "w", force_zip64=force_zip64) as member:
                view = memoryview(data)
                for start in range(0, len(view), chunk_size):
                    member.write(view[start : start + chunk_size])
                    yield from _drain(sink.buffer, chunk_size)
            # Let go of this entry's bytes before the next read(): one entry at a time.
            # Only full chunks leave here: small entries (thumbnails, label files) share
            # a chunk, so the server pays its per-chunk cost once per 64 KiB, not per file.
            del data, view
            yield from _drain(sink.buffer, chunk_size)
    yield from _drain(sink.buffer, chunk_size, everything=True)
