"""PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes) as data.

The table ships as ``data/ps3_15_table_e1_1.csv`` (see ``data/README.md`` for its
source, edition and license): one row per attribute with its Basic Profile action
and the action under each option column of the standard. This module only loads and
looks it up; applying it is ``deid_profile``'s job.

Tags are written ``gggg,eeee`` in upper-case hex; the standard's repeating groups
keep their patterns (``50xx,xxxx``, ``60xx,3000``), and the row ``gggg,eeee`` stands
for "Private Attributes" (every element of an odd group).
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

TABLE_RESOURCE = "ps3_15_table_e1_1.csv"
PRIVATE_ROW_TAG = "gggg,eeee"

# The standard's option columns, in its order (PS3.15 E.3.x).
OPTION_COLUMNS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
_BASIC_ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"})
_OPTION_ACTIONS = frozenset({"", "K", "C", "X"})


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """One attribute of Table E.1-1: its Basic Profile action and option actions.

    An option column holds "" where the option does not change the attribute.
    """

    tag: str
    name: str
    keyword: str
    retired: bool
    in_std_comp_iod: bool
    basic_profile: str
    retain_safe_private: str
    retain_uids: str
    retain_device_identity: str
    retain_institution_identity: str
    retain_patient_characteristics: str
    retain_long_full_dates: str
    retain_long_modified_dates: str
    clean_descriptors: str
    clean_structured_content: str
    clean_graphics: str

    @property
    def basic_actions(self) -> tuple[str, ...]:
        """The alternatives of the Basic Profile action: "X/Z/D" -> ("X", "Z", "D")."""
        return tuple(self.basic_profile.split("/"))

    def option(self, column: str) -> str:
        """The action in an option column ("" when the option leaves the row alone).

        Raises:
            KeyError: ``column`` is not one of OPTION_COLUMNS.
        """
        if column not in OPTION_COLUMNS:
            raise KeyError(f"expected one of {', '.join(OPTION_COLUMNS)}; got {column!r}")
        value: str = getattr(self, column)
        return value


def _pattern(tag: str) -> tuple[int, int]:
    """(mask, value) of a tag pattern: "60xx,3000" -> (0xFF00FFFF, 0x60003000)."""
    digits = tag.replace(",", "")
    mask = int("".join("0" if c == "x" else "F" for c in digits), 16)
    value = int("".join("0" if c == "x" else c for c in digits), 16)
    return mask, value


class ProfileTable:
    """Table E.1-1 indexed for lookup by tag (exact tags first, then patterns)."""

    __slots__ = ("_exact", "_patterns", "private_row", "rows")

    def __init__(self, rows: tuple[ProfileRow, ...]) -> None:
        self.rows = rows
        self._exact: dict[int, ProfileRow] = {}
        self._patterns: list[tuple[int, int, ProfileRow]] = []
        private: ProfileRow | None = None
        for row in rows:
            if row.tag == PRIVATE_ROW_TAG:
                private = row
            elif "x" in row.tag:
                mask, value = _pattern(row.tag)
                self._patterns.append((mask, value, row))
            else:
                self._exact[int(row.tag.replace(",", ""), 16)] = row
        if private is None:
            raise ValueError(f"expected a {PRIVATE_ROW_TAG} (Private Attributes) row; found none")
        self.private_row: ProfileRow = private

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, tag: int) -> ProfileRow | None:
        """The row for a standard (even-group) tag, or None when the table does not
        list it (the Basic Profile then keeps it). Private tags are not looked up here:
        callers treat every odd group by ``private_row``."""
        row = self._exact.get(tag)
        if row is not None:
            return row
        for mask, value, pattern_row in self._patterns:
            if tag & mask == value:
                return pattern_row
        return None

    def by_keyword(self, keyword: str) -> ProfileRow:
        """The row of a keyword (for tests and reports).

        Raises:
            KeyError: no row has this keyword.
        """
        for row in self.rows:
            if row.keyword == keyword:
                return row
        raise KeyError(f"no Table E.1-1 row with keyword {keyword!r}")


def _parse(text: str) -> tuple[ProfileRow, ...]:
    rows: list[ProfileRow] = []
    for number, record in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        basic = record["basic_profile"]
        options = {column: record[column] for column in OPTION_COLUMNS}
        if basic not in _BASIC_ACTIONS or not set(options.values()) <= _OPTION_ACTIONS:
            raise ValueError(f"{TABLE_RESOURCE} line {number}: unexpected action code")
        rows.append(
            ProfileRow(
                tag=record["tag"],
                name=record["name"],
                keyword=record["keyword"],
                retired=record["retired"] == "Y",
                in_std_comp_iod=record["in_std_comp_iod"] == "Y",
                basic_profile=basic,
                **options,
            )
        )
    return tuple(rows)


@functools.cache
def load_table() -> ProfileTable:
    """Table E.1-1 from the package data, parsed once per process.

    Raises:
        ValueError: the packaged CSV holds an unknown action code (a broken install).
    """
    resource = resources.files("radlake.imaging").joinpath("data").joinpath(TABLE_RESOURCE)
    text = resource.read_text("utf-8")
    return ProfileTable(_parse(text))
