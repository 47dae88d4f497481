"""Conditional and partial requests (RFC 9110 13.1.2 If-None-Match, 14 Range).

If-None-Match carries a list of entity tags, weak or strong, or "*"; it matches when
any tag equals the current one by weak comparison (13.1.2). A single byte range is
served as 206 with Content-Range; several ranges, or a Range on a conditional that
failed, get the whole representation (14.2 lets a server ignore Range), and a range
outside the object is a 416.
"""

from __future__ import annotations

import re

_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def none_match(header: str | None, etag: str) -> bool:
    """True when an If-None-Match header matches etag (the answer is then a 304)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(match.group(2) == wanted for match in _TAG.finditer(header))


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single satisfiable range, inclusive; None to send all.

    Raises:
        ValueError: the range is well-formed but outside the object (answer 416).
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:  # several ranges, or another unit: the whole object
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # a suffix: the last N bytes
        count = int(last_text)
        if count == 0:
            raise ValueError("an empty suffix range")
        return max(0, size - count), size - 1
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or (last_text and int(last_text) < first):
        raise ValueError(f"range starts past the end of a {size}-byte object")
    return first, last
