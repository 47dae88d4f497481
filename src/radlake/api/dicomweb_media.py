"""DICOMweb media: Accept negotiation (PS3.18 8.7) and multipart/related bodies
(RFC 2387), written as a stream one object at a time and read the same way.

Transfer syntaxes: objects are served as stored. A request naming transfer-syntax=*
or none gets them so (PS3.18 8.7.3.5.2 makes Explicit VR Little Endian the default
when none is named, but transcoding would decode every frame: radlake leaves it to
the client and says so); one naming other syntaxes only gets a 406 with the reason
when a stored object is in none of them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from fastapi import HTTPException, Request

from radlake.api.errors import short
from radlake.storage.store import ObjectStore

PREFIX = "/dicomweb"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"
CHUNK = 1 << 20  # bytes read from the store at a time while streaming an object
ANY_SYNTAX = "*"


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header: type/subtype, its parameters and weight."""

    media: str
    params: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0

    def covers(self, offered: str) -> bool:
        """Whether this range accepts the media type offered (wildcards allowed)."""
        kind, _, sub = offered.partition("/")
        mine, _, mysub = self.media.partition("/")
        return mine in ("*", kind) and mysub in ("*", sub)


def parameters(text: str) -> tuple[str, dict[str, str]]:
    """A media type's lowercased type/subtype and its parameters (quotes removed)."""
    media, *rest = (part.strip() for part in _split_outside_quotes(text, ";"))
    found: dict[str, str] = {}
    for item in rest:
        name, eq, value = item.partition("=")
        if eq:
            found[name.strip().lower()] = value.strip().strip('"')
    return media.lower(), found


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def accept_ranges(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best first; none given means */*."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for entry in _split_outside_quotes(header, ","):
        if not entry.strip():
            continue
        media, params = parameters(entry)
        try:
            weight = float(params.pop("q", "1"))
        except ValueError:
            weight = 1.0
        if weight > 0:
            ranges.append(MediaRange(media, params, weight))
    return sorted(ranges, key=lambda r: -r.weight)


def not_acceptable(header: str | None, offered: Iterable[str]) -> HTTPException:
    return HTTPException(
        406,
        detail=f"cannot answer Accept {short(header or '')!r}: this resource is "
        + " or ".join(offered),
    )


def negotiate(header: str | None, offered: Sequence[str]) -> str:
    """The first of offered (server's preference order) that the best range accepts.

    Raises:
        HTTPException: 406, nothing offered is acceptable.
    """
    for wanted in accept_ranges(header):
        for media in offered:
            if wanted.covers(media):
                return media
    raise not_acceptable(header, offered)


def retrieve_syntaxes(header: str | None) -> frozenset[str] | None:
    """The transfer syntaxes a WADO-RS retrieve accepts (None: any), from ranges of
    multipart/related with type application/dicom (or none), multipart/* or */*.

    Raises:
        HTTPException: 406, no range asks for DICOM objects.
    """
    syntaxes: set[str] = set()
    for wanted in accept_ranges(header):
        if wanted.media in ("*/*", "multipart/*"):
            return None
        if wanted.media == MULTIPART and wanted.params.get("type", DICOM).lower() == DICOM:
            syntax = wanted.params.get("transfer-syntax", ANY_SYNTAX)
            if syntax == ANY_SYNTAX:
                return None
            syntaxes.add(syntax)
    if not syntaxes:
        raise not_acceptable(header, [f'{MULTIPART}; type="{DICOM}"'])
    return frozenset(syntaxes)


def base_url(request: Request) -> str:
    """The DICOMweb root as the client reached it (RetrieveURL values start here)."""
    return str(request.base_url).rstrip("/") + PREFIX


def warning_header(warnings: Sequence[str]) -> dict[str, str]:
    """RFC 7234 5.5 Warning: 299 (miscellaneous persistent warning), one per reason."""
    if not warnings:
        return {}
    text = ", ".join(f'299 radlake "{w}"' for w in warnings)
    return {"Warning": text.encode("ascii", "replace").decode()}


def new_boundary() -> str:
    return f"radlake-{secrets.token_hex(16)}"


@dataclass(frozen=True, slots=True)
class Part:
    """One object to send: its store key and the part's Content-Type."""

    key: str
    media: str


def multipart_body(
    store: ObjectStore, parts: Sequence[Part], boundary: str, chunk_size: int = CHUNK
) -> Iterator[bytes]:
    """The parts as a multipart/related body, read from the store a chunk at a time:
    of all the objects, at most chunk_size bytes are in memory at once."""
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: {part.media}\r\n\r\n".encode()
        with store.open(part.key, block_size=chunk_size) as handle:
            while chunk := handle.read(chunk_size):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def dicom_part_media(transfer_syntax: str | None) -> str:
    """A part's Content-Type: application/dicom with the object's transfer syntax."""
    if transfer_syntax:
        return f"{DICOM}; transfer-syntax={transfer_syntax}"
    return DICOM


def multipart_type(boundary: str, media: str = DICOM) -> str:
    return f'{MULTIPART}; type="{media}"; boundary={boundary}'
