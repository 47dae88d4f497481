"""Reading a multipart/related request body (RFC 2387) as it arrives, one part at a
time, under a byte limit per part: what STOW-RS stores (PS3.18 10.5).

python-multipart parses the framing (it is boundary-driven, so multipart/related
reads like multipart/form-data). A part over the limit is drained, not kept: it is
reported as too large and the parts after it are still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from radlake.api.dicomweb_media import parameters


class BodyError(ValueError):
    """The body is not a multipart/related message with the declared boundary."""


@dataclass(slots=True)
class ReceivedPart:
    """One part: its Content-Type (lowercased, '' when absent), its bytes (empty when
    it passed the limit) and how many bytes it had."""

    media: str = ""
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_large: bool = False


def boundary_of(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type and parameters of a request's Content-Type."""
    return parameters(content_type)


class PartReader:
    """Feed it the body's chunks; `take()` hands over the parts completed so far."""

    def __init__(self, boundary: str, *, part_limit: int) -> None:
        self.part_limit = part_limit
        self._done: list[ReceivedPart] = []
        self._part: ReceivedPart | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self.parts_seen = 0
        try:
            self._parser = MultipartParser(
                boundary.encode("latin-1"),
                {
                    "on_part_begin": self._begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._data,
                    "on_part_end": self._end,
                },
            )
        except (ValueError, UnicodeEncodeError) as exc:
            raise BodyError(f"the boundary parameter is not usable: {exc}") from None

    def _begin(self) -> None:
        self._part = ReceivedPart()
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if self._part is not None:
            self._part.media = parameters(self._headers.get("content-type", ""))[0]

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        part.size += end - start
        if part.size > self.part_limit:
            part.too_large = True
            part.data = bytearray()
        else:
            part.data += data[start:end]

    def _end(self) -> None:
        if self._part is not None:
            self._done.append(self._part)
            self.parts_seen += 1
        self._part = None

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body.

        Raises:
            BodyError: the bytes do not follow the multipart framing.
        """
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BodyError(f"the body is not multipart/related: {str(exc)[:120]}") from None

    def finish(self) -> None:
        """The body ended.

        Raises:
            BodyError: it ended inside a part, or held no part at all.
        """
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise BodyError(f"the body is not multipart/related: {str(exc)[:120]}") from None
        if self._part is not None:
            raise BodyError("the body ended inside a part (no closing boundary)")
        if self.parts_seen == 0:
            raise BodyError("the body holds no part with the declared boundary")

    def take(self) -> list[ReceivedPart]:
        """The parts completed since the last call."""
        done, self._done = self._done, []
        return done
