"""DICOM JSON (PS3.18 F.2) of DICOMweb answers: QIDO-RS matches at each level and
the STOW-RS response, built from deid_instance rows and their stored headers.

The attributes each level returns are those of PS3.18 Table 10.6.3-3 (study),
10.6.3-4 (series) and 10.6.3-5 (instance); a series or instance answer also carries
its study's (and series') attributes, so a search of all series or all instances
needs no second query. Values the row does not hold come from the group's first
instance's de-identified header; an attribute absent there is returned empty, as a
Type 2 return key is (PS3.4 C.2.2.1.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from radlake.catalog.deid_models import DeidInstance
from radlake.catalog.dicomweb_queries import Group

Json = dict[str, Any]

# Attributes each level answers with (PS3.18 Tables 10.6.3-3 to -5) that the row holds
# no column for: read from the stored header, empty when it lacks them.
STUDY_FROM_HEADER = (
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
)
SERIES_FROM_HEADER = (
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
INSTANCE_FROM_HEADER = ("BitsAllocated",)
# What includefield=all adds at the study and series levels: attributes of the
# patient, study and series modules and of the equipment, never per-instance ones.
_STUDY_GROUPS = frozenset({0x0010, 0x0032})
_STUDY_EXTRA = frozenset(
    tag_for_keyword(k) or 0
    for k in ("StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "StudyID")
)
_SERIES_EXTRA = frozenset(
    tag_for_keyword(k) or 0
    for k in (
        "SeriesDate",
        "SeriesTime",
        "Modality",
        "SeriesDescription",
        "BodyPartExamined",
        "Laterality",
        "PatientPosition",
        "ProtocolName",
        "Manufacturer",
        "ManufacturerModelName",
        "InstitutionName",
        "StationName",
    )
)


@dataclass(frozen=True, slots=True)
class Returned:
    """What a search returns beyond its level's attributes: the tags named by
    includefield or by a matching key radlake does not match on, or every one (all)."""

    tags: frozenset[int] = frozenset()
    all: bool = False


def vr_of(tag: int) -> str:
    """The dictionary VR of a tag; the first of an ambiguous one ("US or SS")."""
    return dictionary_VR(tag).split(" or ")[0]


def tag_key(tag: int) -> str:
    """The JSON key of a tag: eight uppercase hex digits (PS3.18 F.2.1.1)."""
    return f"{tag:08X}"


def element(keyword: str, value: Any) -> tuple[str, Json]:
    """One attribute as (tag key, {"vr", "Value"}); None or "" gives an empty one."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"not a DICOM keyword: {keyword}")
    vr = vr_of(tag)
    if value is None or value == "" or value == []:
        return tag_key(tag), {"vr": vr}
    values = list(value) if isinstance(value, list | tuple) else [value]
    if vr == "PN":  # PS3.18 F.2.2: a person name is an object of its groups
        values = [{"Alphabetic": str(v)} for v in values]
    return tag_key(tag), {"vr": vr, "Value": values}


def _from_header(header: Mapping[str, Any], keywords: Iterable[str]) -> Json:
    found: Json = {}
    for keyword in keywords:
        key, empty = element(keyword, None)
        found[key] = header.get(key, empty)
    return found


def _returned(header: Mapping[str, Any], returned: Returned, level: str) -> Json:
    """The header's attributes that includefield asks for at this level."""
    found: Json = {}
    for key, value in header.items():
        tag = int(key, 16)
        if returned.all and _at_level(tag, level):
            found[key] = value
    for tag in returned.tags:
        key = tag_key(tag)
        found[key] = header.get(key, {"vr": vr_of(tag)})
    return found


def _at_level(tag: int, level: str) -> bool:
    if level == "instance":
        return True
    study = tag >> 16 in _STUDY_GROUPS or tag in _STUDY_EXTRA
    return study or (level == "series" and tag in _SERIES_EXTRA)


def _ordered(attributes: Json) -> Json:
    # PS3.18 F.2.1.1: the attributes of a data set are in tag order.
    return {key: attributes[key] for key in sorted(attributes)}


MODALITY, MODALITIES_IN_STUDY = "00080060", "00080061"

# Attributes each level reads from the row's columns: (keyword, column).
STUDY_COLUMNS = (
    ("StudyInstanceUID", "study_uid"),
    ("StudyDate", "study_date"),
    ("StudyTime", "study_time"),
    ("AccessionNumber", "accession_number"),
    ("StudyDescription", "study_description"),
    ("PatientID", "patient_id"),
)
SERIES_COLUMNS = (
    ("SeriesInstanceUID", "series_uid"),
    ("Modality", "modality"),
    ("SeriesDescription", "series_description"),
    ("SeriesNumber", "series_number"),
)
INSTANCE_COLUMNS = (
    ("SOPClassUID", "sop_class_uid"),
    ("SOPInstanceUID", "sop_uid"),
    ("InstanceNumber", "instance_number"),
    ("Rows", "rows"),
    ("Columns", "columns"),
    ("NumberOfFrames", "frames"),
)


def _columns(row: DeidInstance, columns: Iterable[tuple[str, str]]) -> Json:
    return dict(element(keyword, getattr(row, column)) for keyword, column in columns)


def _study(row: DeidInstance) -> Json:
    own = _columns(row, STUDY_COLUMNS) | dict([element("InstanceAvailability", "ONLINE")])
    return own | _from_header(row.header, STUDY_FROM_HEADER)


def _series(row: DeidInstance) -> Json:
    own = _columns(row, SERIES_COLUMNS) | _from_header(row.header, SERIES_FROM_HEADER)
    return _study(row) | own


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{study_url(base, study)}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{series_url(base, study, series)}/instances/{sop}"


def study_match(group: Group, base: str, returned: Returned) -> Json:
    """A study found (PS3.18 Table 10.6.3-3); base is the DICOMweb root URL."""
    row = group.sample
    pairs = [
        element("ModalitiesInStudy", list(group.modalities)),
        element("NumberOfStudyRelatedSeries", group.series),
        element("NumberOfStudyRelatedInstances", group.instances),
        element("RetrieveURL", study_url(base, row.study_uid)),
    ]
    extra = _returned(row.header, returned, "study")
    found = extra | _study(row) | dict(pairs)
    # A study whose objects carry no Modality: both modality attributes are left out
    # rather than sent without a Value, which OHIF v2's study list cannot read.
    for tag in (MODALITY, MODALITIES_IN_STUDY):
        if tag in found and "Value" not in found[tag]:
            del found[tag]
    return _ordered(found)


def series_match(group: Group, base: str, returned: Returned) -> Json:
    """A series found (PS3.18 Table 10.6.3-4), with its study's attributes."""
    row = group.sample
    pairs = [
        element("NumberOfSeriesRelatedInstances", group.instances),
        element("RetrieveURL", series_url(base, row.study_uid, row.series_uid)),
    ]
    extra = _returned(row.header, returned, "series")
    return _ordered(extra | _series(row) | dict(pairs))


def instance_match(row: DeidInstance, base: str, returned: Returned) -> Json:
    """An instance found (PS3.18 Table 10.6.3-5), with its study's and series'."""
    url = instance_url(base, row.study_uid, row.series_uid, row.sop_uid)
    own = _columns(row, INSTANCE_COLUMNS) | dict([element("RetrieveURL", url)])
    own |= _from_header(row.header, INSTANCE_FROM_HEADER)
    return _ordered(_returned(row.header, returned, "instance") | _series(row) | own)


@dataclass(frozen=True, slots=True)
class StowItem:
    """One instance of a STOW-RS request: the UIDs it was sent with (may be empty
    when the part was not readable), and either where it can be retrieved now or
    why it failed (PS3.18 10.5.3, PS3.4 B.2.3 status codes)."""

    sop_class_uid: str | None
    sop_uid: str | None
    retrieve_url: str | None = None
    failure: int | None = None
    warning: int | None = None
    reason: str | None = None


def _stow_item(item: StowItem) -> Json:
    pairs = [
        element("ReferencedSOPClassUID", item.sop_class_uid),
        element("ReferencedSOPInstanceUID", item.sop_uid),
    ]
    if item.retrieve_url is not None:
        pairs.append(element("RetrieveURL", item.retrieve_url))
    if item.failure is not None:
        pairs.append(element("FailureReason", item.failure))
    if item.warning is not None:
        pairs.append(element("WarningReason", item.warning))
    if item.reason:
        # A text reason a person can act on (never patient data): Transaction Status
        # Comment (0008,0418), the standard's free text on a transaction's outcome.
        pairs.append(element("TransactionStatusComment", item.reason))
    return _ordered(dict(pairs))


def stow_response(items: Sequence[StowItem], retrieve_url: str | None) -> Json:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-2)."""
    stored = [_stow_item(i) for i in items if i.failure is None]
    failed = [_stow_item(i) for i in items if i.failure is not None]
    answer: Json = {}
    if retrieve_url is not None:
        answer.update([element("RetrieveURL", retrieve_url)])
    if stored:
        answer.update([element("ReferencedSOPSequence", stored)])
    if failed:
        answer.update([element("FailedSOPSequence", failed)])
    return _ordered(answer)
