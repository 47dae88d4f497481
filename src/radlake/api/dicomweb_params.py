"""DICOMweb request parsing: QIDO-RS query parameters (PS3.18 8.3.4), UIDs in paths
and Accept negotiation (PS3.18 8.7). Every refusal is a 400 (or 406 for Accept)
with one line saying what was expected; inputs are quoted cut short.

A matching key is a keyword or a tag (`PatientID` or `00100020`). Keys radlake
matches on are listed in MATCH_KEYS; a key of a lower level than the search works
relationally (studies?Modality=MR: the studies with an MR series; Modality is taken
as ModalitiesInStudy there). A valid DICOM attribute radlake does not match on
(and ModalitiesInStudy below the study level) is ignored with a Warning header
(PS3.18 8.3.4.1) and returned like an includefield. Anything else is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fastapi import HTTPException
from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword
from starlette.datastructures import QueryParams

from radlake.api.dicomweb_json import Returned
from radlake.api.errors import short
from radlake.catalog.dicomweb_queries import DateRange, QidoMatch

LEVELS = ("study", "series", "instance")
MAX_LIMIT = 1000  # answers per page; a larger limit is cut to this, with a Warning
_MAX_NUMBER = 2**31 - 1
_MAX_TEXT = 64  # LO, the longest VR among the text keys (PS3.5 6.2)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_DATE = re.compile(r"^[0-9]{8}$")
RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

# keyword -> (level, QidoMatch field, kind): the level is the key's own (PS3.18 10.6.1.2)
MATCH_KEYS: dict[str, tuple[str, str, str]] = {
    "StudyInstanceUID": ("study", "study_uids", "uids"),
    "PatientID": ("study", "patient_id", "text"),
    "AccessionNumber": ("study", "accession_number", "text"),
    "StudyDescription": ("study", "study_description", "text"),
    "StudyDate": ("study", "study_date", "date"),
    "ModalitiesInStudy": ("study", "modalities", "codes"),
    "SeriesInstanceUID": ("series", "series_uids", "uids"),
    "Modality": ("series", "modalities", "codes"),
    "SeriesDescription": ("series", "series_description", "text"),
    "SeriesNumber": ("series", "series_number", "number"),
    "SOPInstanceUID": ("instance", "sop_uids", "uids"),
    "SOPClassUID": ("instance", "sop_class_uids", "uids"),
    "InstanceNumber": ("instance", "instance_number", "number"),
}


def bad(reason: str) -> HTTPException:
    return HTTPException(400, detail=reason)


def check_uid(value: str, what: str) -> str:
    """value when it is a UID (PS3.5 9.1: digits and dots, at most 64 characters)."""
    if len(value) > 64 or not _UID.match(value):
        raise bad(f"{what}: expected a UID (digits and dots, at most 64), got {short(value)!r}")
    return value


@dataclass(frozen=True, slots=True)
class Search:
    """One parsed QIDO-RS request."""

    match: QidoMatch
    limit: int = MAX_LIMIT
    offset: int = 0
    returned: Returned = field(default_factory=Returned)
    warnings: tuple[str, ...] = ()
    nothing: bool = False  # the path and a key contradict each other: no match


def _keyword(key: str) -> str | None:
    """The keyword a parameter names (a keyword or eight hex digits), else None."""
    if _TAG.match(key):
        tag = int(key, 16)
        return (keyword_for_tag(tag) or None) if dictionary_has_tag(tag) else None
    return key if tag_for_keyword(key) is not None else None


def _split(value: str) -> list[str]:
    # PS3.18 8.3.4.1: a UID list is comma-separated; backslash is DICOM's own separator.
    return [part.strip() for part in re.split(r"[,\\]", value) if part.strip()]


def _date(value: str) -> DateRange:
    """PS3.4 C.2.2.2.5: D, D1-D2, -D or D-, each D a YYYYMMDD date."""
    first, dash, last = value.partition("-")
    ends = [first.strip(), last.strip()] if dash else [value.strip(), value.strip()]
    if not any(ends):
        raise bad(
            f"StudyDate: expected YYYYMMDD or a range such as 20200101-20201231, got {value!r}"
        )
    for end in ends:
        if end and not (_DATE.match(end) and _is_day(end)):
            raise bad(f"StudyDate: {short(end)!r} is not a date (expected YYYYMMDD)")
    if all(ends) and ends[0] > ends[1]:
        raise bad(f"StudyDate: the range {value!r} ends before it starts")
    return DateRange(ends[0] or None, ends[1] or None)


def _is_day(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _number(text: str, name: str, low: int, high: int = _MAX_NUMBER) -> int:
    if not re.fullmatch(r"[+-]?[0-9]{1,10}", text.strip()) or not low <= int(text) <= high:
        raise bad(f"{name}: expected an integer from {low} to {high}, got {short(text)!r}")
    return int(text)


def _value(keyword: str, kind: str, values: list[str]) -> Any:
    if kind in ("uids", "codes"):
        parts = [part for value in values for part in _split(value)]
        if kind == "uids":
            return tuple(check_uid(part, keyword) for part in parts)
        if any(len(part) > 16 for part in parts):
            raise bad(f"{keyword}: a code string has at most 16 characters")
        return tuple(parts)
    if len(values) > 1:
        raise bad(f"{keyword} given twice: it takes one value")
    value = values[0]
    if kind == "date":
        return _date(value)
    if kind == "number":
        return _number(value, keyword, -_MAX_NUMBER)
    if len(value) > _MAX_TEXT:
        raise bad(f"{keyword}: at most {_MAX_TEXT} characters, got {len(value)}")
    return value


def _includefield(values: Sequence[str]) -> Returned:
    tags: set[int] = set()
    everything = False
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name.lower() == "all":
                everything = True
                continue
            keyword = _keyword(name) if "." not in name else None
            tag = tag_for_keyword(keyword) if keyword else None
            if tag is None:
                raise bad(
                    f"includefield: expected 'all', a keyword or eight hex digits of a "
                    f"DICOM attribute (sequence paths are not supported), got {short(name)!r}"
                )
            tags.add(tag)
    return Returned(frozenset(tags), everything)


def parse_search(
    params: QueryParams, *, level: str, study: str | None = None, series: str | None = None
) -> Search:
    """The search a QIDO-RS request asks for at level; study and series come from
    the path (they narrow the search like StudyInstanceUID and SeriesInstanceUID)."""
    depth = LEVELS.index(level)
    fields: dict[str, Any] = {}
    warnings: list[str] = []
    ignored: set[int] = set()
    for key in sorted(set(params) - RESERVED):
        values = params.getlist(key)
        keyword = _keyword(key)
        if keyword is None:
            raise bad(
                f"unknown query parameter {short(key)!r}: expected a DICOM keyword or tag, "
                "limit, offset, includefield or fuzzymatching"
            )
        known = MATCH_KEYS.get(
            "ModalitiesInStudy" if keyword == "Modality" and depth == 0 else keyword
        )
        if known is None or (keyword == "ModalitiesInStudy" and depth):
            if any(values):
                warnings.append(f"{keyword} is not matched on at the {level} level: ignored")
            ignored.add(tag_for_keyword(keyword) or 0)
            continue
        if not any(v.strip("*") for v in values):
            continue  # PS3.4 C.2.2.2.3/4: empty, or only "*", is universal matching
        _, name, kind = known
        fields[name] = _value(keyword, kind, [v for v in values if v])
    nothing = False
    for name, uid in (("study_uids", study), ("series_uids", series)):
        if uid is not None:
            asked = fields.get(name, ())
            nothing = nothing or bool(asked and uid not in asked)
            fields[name] = (uid,)
    limit, offset = _page(params, warnings)
    returned = _includefield(params.getlist("includefield"))
    returned = replace(returned, tags=returned.tags | ignored)
    fuzzy = params.getlist("fuzzymatching")
    if any(v.lower() not in ("true", "false") for v in fuzzy):
        raise bad("fuzzymatching: expected true or false")
    if any(v.lower() == "true" for v in fuzzy):
        warnings.append("fuzzymatching is not supported: matching is exact or by wildcard")
    return Search(QidoMatch(**fields), limit, offset, returned, tuple(warnings), nothing)


def _page(params: QueryParams, warnings: list[str]) -> tuple[int, int]:
    for name in ("limit", "offset"):
        if len(params.getlist(name)) > 1:
            raise bad(f"{name} given twice: it takes one value")
    offset = _number(params.get("offset", "0"), "offset", 0)
    limit = _number(params.get("limit", str(MAX_LIMIT)), "limit", 1)
    if limit > MAX_LIMIT:
        # PS3.18 8.3.4.4: a server may return fewer than asked, saying so in a Warning.
        warnings.append(
            f"limit {limit} is above this server's maximum: {MAX_LIMIT} returned at most"
        )
        limit = MAX_LIMIT
    return limit, offset
