"""Key layout of the store (DESIGN.md "Store layout")."""

from __future__ import annotations

import re

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _check_sha(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"expected a lowercase hex sha256, got {sha256[:80]!r}")
    return sha256


def raw_key(sha256: str, extension: str) -> str:
    """raw/<sha256[:2]>/<sha256>.<ext>: originals, immutable, content-addressed."""
    _check_sha(sha256)
    return f"raw/{sha256[:2]}/{sha256}.{extension}"


def derived_key(sha256: str, rendition: str, extension: str) -> str:
    """derived/<sha256>/<rendition>.<ext>: previews, slices, normalised images."""
    _check_sha(sha256)
    if not _NAME.match(rendition):
        raise ValueError(f"expected a rendition name like 'preview', got {rendition[:80]!r}")
    return f"derived/{sha256}/{rendition}.{extension}"


def quarantine_key(sha256: str) -> str:
    """quarantine/<sha256[:2]>/<sha256>: rejected inputs, kept so nothing is lost."""
    _check_sha(sha256)
    return f"quarantine/{sha256[:2]}/{sha256}"
