"""Cron strings for schedules, checked when settings load (no Prefect needed).

Accepted: five fields (minute hour day-of-month month day-of-week) of `*`, `*/STEP`,
`N`, `N-M`, `N-M/STEP` and comma lists of those, month and weekday names (jan, mon),
and the macros @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually.
That is a subset of what Prefect's scheduler (croniter) takes, so a string accepted
here is accepted by the server; croniter's own extensions (seconds, L, #, random H)
are refused rather than half-supported.
"""

from __future__ import annotations

import re

MACROS = frozenset(
    {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names for lowest, lowest + 1, ...)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),  # 0 and 7 are both Sunday
)
_ITEM = re.compile(r"^(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?$")
EXPECTED = "5 fields (minute hour day-of-month month day-of-week) or a macro like @daily"


class CronError(ValueError):
    """Not a cron string this module accepts; the message says which part and why."""


def _value(text: str, field: tuple[str, int, int, tuple[str, ...]]) -> int:
    name, low, high, names = field
    if text.isdigit():
        number = int(text)
    elif text in names:
        number = low + names.index(text)
    else:
        raise CronError(f"{name} {text!r:.20} is not a number or a name")
    if not low <= number <= high:
        raise CronError(f"{name} {number} is outside {low}-{high}")
    return number


def _check_field(text: str, field: tuple[str, int, int, tuple[str, ...]]) -> None:
    name, low, high, _ = field
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise CronError(f"{name} {item!r:.30} is not *, N, N-M or one of them /STEP")
        star, first, last, step = match.groups()
        if step is not None and not 1 <= int(step) <= high - low + 1:
            raise CronError(f"{name} step {step} is outside 1-{high - low + 1}")
        if star:
            continue
        start = _value(first, field)
        if last is not None and _value(last, field) < start:
            raise CronError(f"{name} range {item!r:.30} runs backwards")
        if step is not None and last is None:
            raise CronError(f"{name} {item!r:.30}: a step needs * or a range (N-M/STEP)")


def check_cron(text: str) -> str:
    """The cron string, whitespace normalised and lower-cased.

    Raises:
        CronError: not five valid fields nor a known macro; the message names the field.
    """
    cron = " ".join(text.lower().split())
    if cron.startswith("@"):
        if cron not in MACROS:
            raise CronError(f"unknown macro {cron!r:.30}; expected {EXPECTED}")
        return cron
    fields = cron.split(" ")
    if len(fields) != len(_FIELDS):
        raise CronError(f"expected {EXPECTED}, got {len(fields)} fields in {cron!r:.60}")
    for part, field in zip(fields, _FIELDS, strict=True):
        _check_field(part, field)
    return cron
