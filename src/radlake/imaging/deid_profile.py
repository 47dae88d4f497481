"""PS3.15 Annex E: the Basic Application Level Confidentiality Profile, with options.

``deidentify`` applies Table E.1-1 (``deid_table``) to a copy of a dataset, recursing
into sequences, and marks the result (PatientIdentityRemoved, DeidentificationMethod
and its code sequence, PS3.16 CID 7050). Pixel data are untouched: burned-in text is
not this module's concern (BurnedInAnnotation is kept as it was).

Choices where the standard leaves one to the implementation:
- Combined actions (X/Z, X/D, X/Z/D, Z/D) resolve to Z when Z is an alternative,
  else D: we carry no IOD module types, and an empty (Z) or dummy (D) value keeps a
  Type 1/2 attribute conformant while carrying no information. X/Z/U* on a sequence
  keeps the sequence and remaps the UIDs inside it (so references stay consistent).
- Z empties the value; D puts a fixed dummy valid for the VR (``DUMMY_BY_VR``); D on a
  UI is a keyed UID; D on a sequence keeps it and cleans its items recursively; an
  element of ambiguous VR ("US or SS"), which has no safe dummy, is removed.
- U: ``2.25.<int of HMAC-SHA256(secret, uid)[:16]>``: deterministic under one secret,
  so the same original UID maps to the same new UID everywhere in the lake.
- C under Retain Longitudinal Temporal Information with Modified Dates: DA and DT
  values move by a whole number of days, the same for every file of one patient
  (keyed on PatientID), so intervals are kept; TM values and the timezone offset are
  kept (a whole-day shift does not change them); other VRs fall back to the basic
  action.
- C under Clean Descriptors keeps the text as it is: there is no NLP cleaning, so
  turning the option on is the caller's statement that its descriptors hold no
  identifiers. C under Retain Patient Characteristics (free-text allergies, special
  needs, ...) is kept only when Clean Descriptors is on as well, for the same reason;
  otherwise the basic action applies.
- Where two enabled options act on one attribute, K wins over C.
- Every private element (odd group) goes, with its private creator; Retain Safe
  Private is not supported.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from radlake import __version__
from radlake.imaging.deid_table import ProfileRow, ProfileTable, load_table
from radlake.imaging.dicom_dataset import quiet

UID_ROOT = "2.25."
DATE_SHIFT_MAX_DAYS = 3650
_DATE_SHIFT_LABEL = b"radlake/deid/date-shift\x00"  # keeps the offset apart from pseudonyms

# Dummy values for D, one per VR, valid under PS3.5 6.2 (length and character set).
DUMMY_BY_VR: Mapping[str, Any] = {
    "AE": "ANONYMIZED",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "",
    "UT": "ANONYMIZED",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}

# PS3.16 CID 7050 De-identification Method, coding scheme DCM.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
PATIENT_CHARACTERISTICS_CODE = ("113108", "Retain Patient Characteristics Option")
CLEAN_DESCRIPTORS_CODE = ("113105", "Clean Descriptors Option")

_DATE_VRS = frozenset({"DA", "DT"})


@dataclass(frozen=True, slots=True)
class DeidOptions:
    """The PS3.15 E.3 options radlake supports (all off: the Basic Profile alone)."""

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False

    @classmethod
    def from_codes(cls, codes: set[str]) -> DeidOptions:
        """Options declared by CID 7050 code values (as found in an object's marking)."""
        return cls(
            retain_longitudinal_modified_dates=MODIFIED_DATES_CODE[0] in codes,
            retain_patient_characteristics=PATIENT_CHARACTERISTICS_CODE[0] in codes,
            clean_descriptors=CLEAN_DESCRIPTORS_CODE[0] in codes,
        )

    def codes(self) -> list[tuple[str, str]]:
        """(code value, code meaning) of the profile and each enabled option."""
        chosen = [BASIC_PROFILE_CODE]
        if self.retain_longitudinal_modified_dates:
            chosen.append(MODIFIED_DATES_CODE)
        if self.retain_patient_characteristics:
            chosen.append(PATIENT_CHARACTERISTICS_CODE)
        if self.clean_descriptors:
            chosen.append(CLEAN_DESCRIPTORS_CODE)
        return chosen


@dataclass(frozen=True, slots=True)
class DeidResult:
    """A de-identified copy and what was done to it.

    ``uid_map`` holds original UIDs: keep it out of logs and away from researchers.
    """

    dataset: Dataset
    action_counts: Mapping[str, int]
    uid_map: Mapping[str, str]
    date_shift_days: int | None = None
    options: DeidOptions = field(default_factory=DeidOptions)


def remap_uid(uid: str, secret: bytes) -> str:
    """The keyed replacement of a UID: ``2.25.`` and 128 bits of HMAC-SHA256 (at most 44
    characters, a valid UID under PS3.5 9 and B.2)."""
    digest = hmac.new(secret, uid.strip().encode(), hashlib.sha256).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def date_shift_days(patient_id: str, secret: bytes) -> int:
    """The per-patient date offset in days, from -DATE_SHIFT_MAX_DAYS to -1.

    Keyed on the PatientID (stripped; an absent ID counts as ""), so every file of one
    patient moves by the same amount.
    """
    digest = hmac.new(secret, _DATE_SHIFT_LABEL + patient_id.strip().encode(), hashlib.sha256)
    return -(1 + int.from_bytes(digest.digest()[:8], "big") % DATE_SHIFT_MAX_DAYS)


def resolve_action(row: ProfileRow, options: DeidOptions) -> tuple[str, str]:
    """(action, reason) for a row under the options: the action is one of D, Z, X, K,
    U, "U*" (keep a sequence, remap UIDs inside), "shift" (date option C) or "keep"
    (a C kept as is); the reason names the column that decided it."""
    candidates: list[tuple[str, str]] = []
    characteristic = row.retain_patient_characteristics
    if options.retain_patient_characteristics and (
        characteristic == "K" or (characteristic == "C" and options.clean_descriptors)
    ):
        candidates.append(("K", "retain_patient_characteristics"))
    if options.retain_longitudinal_modified_dates and row.retain_long_modified_dates:
        candidates.append(("shift", "retain_long_modified_dates"))
    if options.clean_descriptors and row.clean_descriptors:
        candidates.append(("keep", "clean_descriptors"))
    if candidates:
        keep = [c for c in candidates if c[0] == "K"]
        return (keep or candidates)[0]
    alternatives = row.basic_actions
    if len(alternatives) == 1:
        only = alternatives[0]
        return ("X" if only == "C" else only), "basic_profile"
    if "U*" in alternatives:
        return "U*", "basic_profile"
    return ("Z" if "Z" in alternatives else "D"), "basic_profile"


def _shift_date(text: str, days: int, vr: str) -> str | None:
    """A DA or DT value moved by ``days``, or None when it does not parse."""
    text = text.strip()
    if not text:
        return text
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    shifted = (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    if vr == "DA" and len(text) != 8:
        return None
    return shifted + text[8:]


class _Deidentifier:
    """One run over one dataset (keeps the counts and the UID map)."""

    def __init__(self, table: ProfileTable, secret: bytes, options: DeidOptions, shift: int):
        self.table = table
        self.secret = secret
        self.options = options
        self.shift = shift
        self.counts: Counter[str] = Counter()
        self.uid_map: dict[str, str] = {}

    def uid(self, value: str) -> str:
        original = value.strip()
        new = self.uid_map.get(original)
        if new is None:
            new = self.uid_map[original] = remap_uid(original, self.secret)
        return new

    def _remap_value(self, elem: DataElement) -> None:
        value = elem.value
        if isinstance(value, MultiValue | list):
            elem.value = [self.uid(str(v)) if str(v).strip() else v for v in value]
        elif value:
            elem.value = self.uid(str(value))

    def _dummy(self, ds: Dataset, elem: DataElement) -> None:
        if elem.VR == "UI":
            self._remap_value(elem)
        elif elem.VR == "SQ":
            self.dataset(elem.value)
        elif elem.VR in DUMMY_BY_VR:
            elem.value = DUMMY_BY_VR[elem.VR]
        else:  # an ambiguous VR ("US or SS") has no safe dummy: remove instead
            del ds[elem.tag]

    def _shift(self, elem: DataElement, row: ProfileRow, ds: Dataset) -> None:
        if elem.VR == "SQ":
            self.dataset(elem.value)
            return
        if elem.VR not in _DATE_VRS:
            if elem.VR in ("TM", "SH"):  # times and the timezone offset survive whole-day shifts
                return
            self.apply(ds, elem, row, resolve_action(row, DeidOptions())[0])
            return
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        shifted = [
            _shift_date(str(v) if v is not None else "", self.shift, elem.VR) for v in values
        ]
        if any(s is None for s in shifted):  # unparseable: do not guess, use the basic action
            self.apply(ds, elem, row, resolve_action(row, DeidOptions())[0])
            return
        elem.value = shifted if len(shifted) > 1 else shifted[0]

    def apply(self, ds: Dataset, elem: DataElement, row: ProfileRow, action: str) -> None:
        if action == "shift":
            self.counts["C"] += 1
            self._shift(elem, row, ds)
            return
        self.counts["C" if action == "keep" else action.rstrip("*")] += 1
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif action == "D":
            self._dummy(ds, elem)
        elif action in ("U", "U*"):
            if elem.VR == "SQ":
                self.dataset(elem.value)
            else:
                self._remap_value(elem)
        elif elem.VR == "SQ":  # K, keep: still clean the items
            self.dataset(elem.value)

    def dataset(self, items: Dataset | Sequence) -> None:
        for ds in [items] if isinstance(items, Dataset) else list(items):
            for elem in list(ds):
                if elem.tag.is_private:
                    del ds[elem.tag]
                    self.counts["private"] += 1
                    continue
                row = self.table.lookup(int(elem.tag))
                if row is None:
                    if elem.VR == "SQ":
                        self.dataset(elem.value)
                    continue
                self.apply(ds, elem, row, resolve_action(row, self.options)[0])


def _clean_file_meta(meta: Dataset | None, ds: Dataset, run: _Deidentifier) -> FileMetaDataset:
    """A new file meta group: the SOP class, the remapped instance UID, the transfer
    syntax and radlake's own implementation. Nothing else is carried over: Table E.1-1
    has no rows for group 0002, yet its Source/Sending/Receiving AE titles and Private
    Information (0002,0016-0018, 0100-0102) can name a site or a patient."""
    new = FileMetaDataset()
    old = meta if meta is not None else Dataset()
    sop_class = old.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
    if sop_class:
        new.MediaStorageSOPClassUID = sop_class
    instance = old.get("MediaStorageSOPInstanceUID") or ds.get("SOPInstanceUID")
    if instance:
        new.MediaStorageSOPInstanceUID = UID(run.uid(str(instance)))
    implicit, _little = ds.original_encoding
    # A bare dataset (no preamble, no meta) keeps the encoding pydicom read it in.
    bare = ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian
    new.TransferSyntaxUID = old.get("TransferSyntaxUID") or bare
    new.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    new.ImplementationVersionName = f"RADLAKE_{__version__}"[:16]
    return new


def method_values(options: DeidOptions) -> list[str]:
    """De-identification Method (0012,0063) as radlake writes it for these options."""
    return ["radlake: DICOM PS3.15 E.1-1 (2026d)"] + [meaning for _, meaning in options.codes()]


def _mark(ds: Dataset, options: DeidOptions) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method_values(options)
    items = []
    for value, meaning in options.codes():
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if options.retain_longitudinal_modified_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"


def deidentify(ds: Dataset, *, secret: bytes, options: DeidOptions | None = None) -> DeidResult:
    """A de-identified copy of ``ds`` under the Basic Profile and ``options``.

    The input is not changed. The file meta's MediaStorageSOPInstanceUID is remapped
    like the SOPInstanceUID, so a written file stays consistent.

    Raises:
        ValueError: ``secret`` is empty.
    """
    if not secret:
        raise ValueError("the de-identification secret must not be empty")
    options = options or DeidOptions()
    with quiet():
        out = copy.deepcopy(ds)
        patient_id = str(out.get("PatientID", "") or "")
        shift = date_shift_days(patient_id, secret)
        run = _Deidentifier(load_table(), secret, options, shift)
        run.dataset(out)
        out.file_meta = _clean_file_meta(getattr(out, "file_meta", None), out, run)
        _mark(out, options)
    return DeidResult(
        dataset=out,
        action_counts=dict(run.counts),
        uid_map=dict(run.uid_map),
        date_shift_days=shift if options.retain_longitudinal_modified_dates else None,
        options=options,
    )
