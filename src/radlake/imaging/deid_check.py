"""Verification: what is left in a dataset that PS3.15 Table E.1-1 would not keep.

``check`` walks a dataset (and its sequences) against the table under the options the
object itself declares in DeidentificationMethodCodeSequence (CID 7050; none declared
means the Basic Profile alone). It reports, attribute by attribute:
- a private element (odd group);
- an attribute whose every allowed action removes or blanks it (X, Z) but that is
  present with a value;
- a D attribute whose value is not one of radlake's dummies (``DUMMY_BY_VR``): a real
  value cannot be told from another tool's dummy, so the finding asks for a look;
- a U attribute whose UID is not under ``2.25.`` (not remapped);
- the object not marked PatientIdentityRemoved = YES.
Whether dates were shifted cannot be seen from one object, so dates kept under the
modified-dates option are not reported. Findings name tags and keywords, never values,
so a report is safe to log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from radlake.imaging.deid import PSEUDONYM_HEX_CHARS
from radlake.imaging.deid_profile import DUMMY_BY_VR, UID_ROOT, DeidOptions, resolve_action
from radlake.imaging.deid_table import ProfileRow, ProfileTable, load_table
from radlake.imaging.dicom_dataset import quiet

# File meta elements (0002,eeee) a Part 10 file needs: group length, version, SOP class
# and instance, transfer syntax, implementation class and version.
_NEEDED_FILE_META = frozenset({0x0000, 0x0001, 0x0002, 0x0003, 0x0010, 0x0012, 0x0013})
# radlake writes the patient's keyed pseudonym (imaging/deid.py) into these.
PSEUDONYM_KEYWORDS = frozenset({"PatientID", "PatientName"})
_PSEUDONYM = re.compile(f"[0-9a-f]{{{PSEUDONYM_HEX_CHARS}}}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One attribute left that can identify. ``path`` locates it inside sequences,
    e.g. ``ReferencedImageSequence[0].ReferencedSOPInstanceUID``."""

    path: str
    tag: str
    action: str
    reason: str


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The result of ``check_path``: files checked, files skipped (not DICOM or
    unreadable) and the findings of each file that has any (paths relative to the
    folder)."""

    checked: int
    skipped: int
    findings: Mapping[str, tuple[Finding, ...]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.findings


def _declared_options(ds: Dataset) -> DeidOptions:
    codes: set[str] = set()
    for item in ds.get("DeidentificationMethodCodeSequence", None) or []:
        if item.get("CodingSchemeDesignator") == "DCM" and item.get("CodeValue"):
            codes.add(str(item.CodeValue))
    return DeidOptions.from_codes(codes)


def _values(elem: DataElement) -> list[object]:
    value = elem.value
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    return [v for v in items if v is not None and str(v).strip() != ""]


def _is_dummy(elem: DataElement) -> bool:
    if elem.keyword in PSEUDONYM_KEYWORDS and all(
        _PSEUDONYM.fullmatch(str(v)) for v in _values(elem)
    ):
        return True  # the lake's keyed pseudonym (pipelines/deidentify.py), not a name
    if elem.VR == "UI":
        return all(str(v).startswith(UID_ROOT) for v in _values(elem))
    dummy = DUMMY_BY_VR.get(elem.VR, "ANONYMIZED")
    return all(v == dummy or str(v) == str(dummy) for v in _values(elem))


class _Checker:
    def __init__(self, table: ProfileTable, options: DeidOptions) -> None:
        self.table = table
        self.options = options
        self.findings: list[Finding] = []

    def _add(self, path: str, elem: DataElement, action: str, reason: str) -> None:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        self.findings.append(Finding(path=path, tag=tag, action=action, reason=reason))

    def _element(self, path: str, elem: DataElement, row: ProfileRow) -> None:
        action, _ = resolve_action(row, self.options)
        if action in ("K", "keep", "shift"):
            if elem.VR == "SQ":
                self.sequence(path, elem)
            return
        allowed = set(row.basic_actions)
        empty = not _values(elem) if elem.VR != "SQ" else len(elem.value) == 0
        if empty:
            return  # an empty value carries nothing, whatever the action
        if elem.VR == "SQ" and allowed & {"D", "U*", "K", "C"}:
            self.sequence(path, elem)  # kept sequences are judged by their items
            return
        if "U" in allowed or "U*" in allowed:
            if elem.VR == "UI" and all(str(v).startswith(UID_ROOT) for v in _values(elem)):
                return
            self._add(path, elem, row.basic_profile, "UID not remapped under 2.25")
            return
        # Z and D both allow "a dummy value consistent with the VR" (PS3.15 E.1.1).
        if allowed & {"D", "Z"} and _is_dummy(elem):
            return
        if "D" in allowed:
            self._add(path, elem, row.basic_profile, "value is not a known dummy")
        else:
            self._add(path, elem, row.basic_profile, "present with a value")

    def file_meta(self, meta: Dataset) -> None:
        """Group 0002 beyond what a file needs (Table E.1-1 has no rows for it): the
        Source/Sending/Receiving AE titles and Private Information can name a site or
        a patient."""
        for elem in meta:
            if elem.tag.element not in _NEEDED_FILE_META and _values(elem):
                self._add(
                    elem.keyword or str(elem.tag), elem, "X", "file meta beyond what a file needs"
                )

    def sequence(self, path: str, elem: DataElement) -> None:
        for index, item in enumerate(elem.value):
            self.dataset(item, f"{path}[{index}].")

    def dataset(self, ds: Dataset, prefix: str = "") -> None:
        for elem in ds:
            path = prefix + (elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})")
            if elem.tag.is_private:
                self._add(path, elem, self.table.private_row.basic_profile, "private attribute")
                continue
            row = self.table.lookup(int(elem.tag))
            if row is None:
                if elem.VR == "SQ":
                    self.sequence(path, elem)
                continue
            self._element(path, elem, row)


def check(ds: Dataset) -> list[Finding]:
    """Every attribute left in ``ds`` (and its file meta) that Table E.1-1 would not keep
    as is under the options ``ds`` declares; empty for a de-identified object."""
    with quiet():
        checker = _Checker(load_table(), _declared_options(ds))
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            checker.dataset(meta)
            checker.file_meta(meta)
        checker.dataset(ds)
        if str(ds.get("PatientIdentityRemoved", "") or "").upper() != "YES":
            checker.findings.append(
                Finding(
                    path="PatientIdentityRemoved",
                    tag="(0012,0062)",
                    action="marking",
                    reason="not marked PatientIdentityRemoved = YES",
                )
            )
    return checker.findings


def check_path(folder: str | os.PathLike[str]) -> CheckReport:
    """``check`` every DICOM file under ``folder`` (or that one file; headers only);
    files that are not DICOM, or cannot be parsed, are counted as skipped.

    Raises:
        NotADirectoryError: ``folder`` is neither a folder nor a file.
    """
    root = Path(folder)
    if root.is_file():
        paths, root = [root], root.parent
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        raise NotADirectoryError(f"expected a folder or a file to check; got {root.name!r}")
    checked = skipped = 0
    findings: dict[str, tuple[Finding, ...]] = {}
    for path in paths:
        try:
            with quiet():
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            skipped += 1  # not DICOM, or truncated beyond parsing
            continue
        checked += 1
        found = check(ds)
        if found:
            findings[path.relative_to(root).as_posix()] = tuple(found)
    return CheckReport(checked=checked, skipped=skipped, findings=findings)
