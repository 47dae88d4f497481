"""`--query "Modality=CR StudyDate=20200101-"`: parsed, checked and turned into C-FIND
identifiers (PS3.4 C.6.2 Study Root) and QIDO-RS search filters (PS3.18 10.6).

Each attribute is matched at the level the Study Root model keeps it (PS3.4
C.6.2.1.2): study keys at STUDY, `Modality` at SERIES, instance keys at IMAGE. A
`Modality` filter is also sent as `ModalitiesInStudy` at STUDY level, so the PACS
lists only studies that hold such series (a PACS that ignores it still answers right:
the series level filters again).
"""

from __future__ import annotations

import datetime
import re
import shlex
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from radlake.errors import RadlakeError

STUDY, SERIES, IMAGE = "STUDY", "SERIES", "IMAGE"
LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    STUDY: (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "StudyDescription",
        "ReferringPhysicianName",
        "ModalitiesInStudy",
    ),
    SERIES: (
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
    ),
    IMAGE: ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
KEY_LEVEL = {key: level for level, keys in LEVEL_KEYS.items() for key in keys}
UNIQUE_KEY = {STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}
MAX_VALUE_LENGTH = 64  # LO, the longest of the matchable string VRs (PS3.5 6.2)
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
_RANGE = "expected YYYYMMDD, YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD"


class QueryError(RadlakeError, ValueError):
    """A --query that names an unknown attribute or holds a malformed value."""


@dataclass(frozen=True, slots=True)
class PacsQuery:
    """Filters by Study Root level (keyword -> matching value, PS3.4 C.2.2.2)."""

    study: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    image: dict[str, str] = field(default_factory=dict)

    def at(self, level: str) -> dict[str, str]:
        return {STUDY: self.study, SERIES: self.series, IMAGE: self.image}[level]


def _shown(keyword: str, value: str) -> str:
    # Patient attributes are never echoed (errors carry no patient data).
    return "a value" if keyword.startswith("Patient") else repr(value[:40])


def _check_range(keyword: str, value: str, pattern: re.Pattern[str], expected: str) -> None:
    # PS3.4 C.2.2.2.5: "a-b", "a-", "-b" or a single value.
    parts = value.split("-")
    if len(parts) > 2 or not any(parts) or any(p and not pattern.fullmatch(p) for p in parts):
        raise QueryError(f"{keyword}: {expected}, got {_shown(keyword, value)}")
    if pattern is _DATE:
        dates = []
        for part in filter(None, parts):
            try:
                dates.append(datetime.date(int(part[:4]), int(part[4:6]), int(part[6:])))
            except ValueError:
                raise QueryError(
                    f"{keyword}: {part if not keyword.startswith('Patient') else 'a date'} "
                    "is not a calendar date (YYYYMMDD)"
                ) from None
        if len(dates) == 2 and dates[0] > dates[1]:
            raise QueryError(f"{keyword}: the range starts after it ends")


def _check_value(keyword: str, value: str) -> None:
    vr = dictionary_VR(keyword)
    if not value:
        raise QueryError(f"{keyword}: a value is required (KEY=VALUE)")
    if vr == "DA":
        _check_range(keyword, value, _DATE, _RANGE)
    elif vr == "TM":
        _check_range(keyword, value, _TIME, "expected HHMMSS or a range HHMMSS-HHMMSS")
    elif vr == "UI":
        # PS3.4 C.2.2.2.2: a list of UIDs separated by backslashes; no wildcards.
        if not all(_UID.fullmatch(u) and len(u) <= 64 for u in value.split("\\")):
            raise QueryError(f"{keyword}: expected UIDs like 1.2.840.10008 separated by \\")
    elif vr == "IS":
        if not re.fullmatch(r"[+-]?\d{1,12}", value):
            raise QueryError(f"{keyword}: expected a whole number, got {_shown(keyword, value)}")
    elif len(value) > MAX_VALUE_LENGTH or ("\\" in value and keyword != "ModalitiesInStudy"):
        raise QueryError(
            f"{keyword}: expected one value of at most {MAX_VALUE_LENGTH} characters "
            "(wildcards * and ? allowed)"
        )


def parse_query(text: str) -> PacsQuery:
    """`KEY=VALUE ...` (shell quoting for values with spaces) as a PacsQuery.

    Raises:
        QueryError: a term is not KEY=VALUE, names an attribute that cannot be
            queried, repeats one, or holds a malformed value (a bad date range).
    """
    try:
        terms = shlex.split(text)
    except ValueError as exc:
        raise QueryError(f"cannot split the query into terms: {exc}") from None
    query = PacsQuery()
    for term in terms:
        keyword, equals, value = term.partition("=")
        if not equals:
            raise QueryError(f"expected KEY=VALUE terms, got {term[:40]!r}")
        if keyword not in KEY_LEVEL:
            what = "cannot be queried" if tag_for_keyword(keyword) else "is not a DICOM keyword"
            raise QueryError(
                f"attribute {keyword[:40]!r} {what}: expected one of {', '.join(sorted(KEY_LEVEL))}"
            )
        filters = query.at(KEY_LEVEL[keyword])
        if keyword in filters:
            raise QueryError(f"{keyword} is given twice")
        _check_value(keyword, value)
        filters[keyword] = value
    if "Modality" in query.series and "ModalitiesInStudy" not in query.study:
        query.study["ModalitiesInStudy"] = query.series["Modality"]
    return query


def identifier(level: str, filters: dict[str, str], parents: dict[str, str]) -> Dataset:
    """A C-FIND identifier at `level`: the parents' unique keys (PS3.4 C.4.1.2.1: a
    hierarchical query below STUDY names them), the filters, and the level's unique
    key (plus SOPClassUID at IMAGE level, which C-GET needs) as return keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in parents.items():
        setattr(ds, keyword, value)
    for keyword, value in filters.items():
        setattr(ds, keyword, value)
    for keyword in (UNIQUE_KEY[level], *(("SOPClassUID",) if level == IMAGE else ())):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def qido_filters(filters: dict[str, str]) -> dict[str, str]:
    """QIDO-RS search parameters (PS3.18 8.3.4.1: a list of values is comma-separated)."""
    return {keyword: value.replace("\\", ",") for keyword, value in filters.items()}
