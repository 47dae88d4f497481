"""What each role may see (issue 8, "Privacy by role"); every route asks here.

Viewers get a source-relative name, never an input path (archives name folders
after patients); originals, with their full headers, go to admins only, audited
(issue 13: everyone else gets the de-identified object); pixels that may show
burned-in patient data reach viewers only as a de-identified rendition. Curators see
paths and renderings; admins see everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException

from radlake.auth import Role

BURNED_IN_REASON = "may show burned-in patient data; awaiting a de-identified rendition"
ORIGINAL_REASON = (
    "originals keep their full identifying headers: they are for admins only "
    "(everyone else gets the de-identified object: GET /images/{id}/dicom)"
)
DEIDENTIFIED = "deidentified"  # the rendition name a later de-identification step writes
_QUOTE = '"'  # pipelines/discover.py quotes keys of names that are not UTF-8
_PATH_LIKE = re.compile(r'^(/|"|[A-Za-z]:[\\/]|\\\\)')


def sees_paths(role: Role) -> bool:
    """Curators and admins see full source keys and originals."""
    return role >= Role.CURATOR


def shown_key(key: str | None, role: Role) -> str | None:
    """The source key as role may see it: whole for curators, else its last component
    (never the folders above it, which real archives name after patients)."""
    if key is None or sees_paths(role):
        return key
    quoted = len(key) >= 2 and key.startswith(_QUOTE) and key.endswith(_QUOTE)
    inner = key[1:-1] if quoted else key
    # Inside quotes a backslash starts an escape (\xff), not a Windows separator.
    name = re.split(r"/" if quoted else r"[\\/]", inner.rstrip("/" if quoted else "/\\"))[-1]
    return f"{_QUOTE}{name}{_QUOTE}" if quoted else name


def shown_parameters(parameters: Mapping[str, Any] | None, role: Role) -> Any:
    """A job's parameters with every path-like text cut down as shown_key does."""
    if parameters is None or sees_paths(role):
        return parameters
    return {key: _shown_value(value, role) for key, value in parameters.items()}


def _shown_value(value: Any, role: Role) -> Any:
    if isinstance(value, str):
        return shown_key(value, role) if _PATH_LIKE.match(value) else value
    if isinstance(value, list):
        return [_shown_value(item, role) for item in value]
    if isinstance(value, dict):
        return {key: _shown_value(item, role) for key, item in value.items()}
    return value


def may_show_burned_in(attributes: Mapping[str, Any] | None) -> bool:
    """Flagged at ingest (imaging/dicom.py): BurnedInAnnotation YES, US, Secondary Capture."""
    return (attributes or {}).get("burned_in_annotation") == "YES"


def pixels_withheld(role: Role, attributes: Mapping[str, Any] | None) -> bool:
    """Whether role must not see this image's own renderings (a de-identified one may do)."""
    return not sees_paths(role) and may_show_burned_in(attributes)


def may_have_originals(role: Role) -> bool:
    """Admins only: an original keeps every identifying header (issue 13)."""
    return role >= Role.ADMIN


def require_original_access(role: Role) -> None:
    """403 with the reason unless role may have originals."""
    if not may_have_originals(role):
        raise HTTPException(403, detail=ORIGINAL_REASON)


def withheld(image_id: int | None = None) -> HTTPException:
    """The 403 for pixels withheld from a viewer."""
    prefix = "" if image_id is None else f"image {image_id} "
    return HTTPException(403, detail=prefix + BURNED_IN_REASON)
