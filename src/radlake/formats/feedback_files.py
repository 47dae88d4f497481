"""Reading the original production pipeline's feedback files (issue 11), before they
meet the catalog.

The pipeline wrote one JSON file per image, `<image_id>.json`, whose stem is the
dataset's image id (VinBigData: the DICOM file stem), holding one object

    {"class_id": 0, "confidence": 0.95, "bbox": [x_min, y_min, x_max, y_max],
     "timestamp": "2021-03-04T05:06:07"}

or a list of such objects. `bbox` is in the image's pixels (a dict with x_min, y_min,
x_max, y_max is read too); `timestamp` is ISO 8601 (naive means UTC) or Unix seconds.

`read_feedback_folder` turns every entry of a folder into a `FeedbackFile`: its
boxes, or `rejection` (a reason code and a sentence a person can act on). Nothing
here knows the catalog: the image a file names and whether its boxes lie on it are
the import's business (pipelines/feedback_import.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 1024 * 1024
FIELDS = ("class_id", "confidence", "bbox", "timestamp")
_CORNERS = ("x_min", "y_min", "x_max", "y_max")
# The catalog's DATETIME (MySQL) holds years 1000-9999; feedback before Unix time or
# after 2100 is a wrong unit (milliseconds) or a wrong field, not a review.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a file is not imported: a reason code (summaries count by it) and a
    sentence that says what was expected and what was found."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class FeedbackBox:
    """One box as the file states it, checked for everything but the image's size."""

    class_id: int
    confidence: float
    corners: tuple[float, float, float, float]
    timestamp: datetime  # timezone-aware UTC


@dataclass(frozen=True, slots=True)
class FeedbackFile:
    """One entry of the folder: its shown name, the image id its name gives, the
    sha256 of its bytes, and its boxes or why it is rejected."""

    name: str  # printable (odd characters escaped)
    file_name: str  # the name as the folder gives it (what the image matcher reads)
    image_key: str
    sha256: str
    boxes: tuple[FeedbackBox, ...] = ()
    rejection: Rejection | None = None


def shown_name(name: str) -> str:
    """A file name safe to print on one line: control characters, undecodable bytes
    and quotes escaped as Python writes them, nothing else changed."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)


def _rejected(name: str, raw: str, reason: str, message: str, sha256: str = "") -> FeedbackFile:
    return FeedbackFile(name, raw, Path(raw).stem, sha256, (), Rejection(reason, message))


def read_feedback_folder(
    root: Path, *, class_names: Sequence[str], max_bytes: int = MAX_FILE_BYTES
) -> Iterator[FeedbackFile]:
    """Every entry of root (not its subfolders' entries), in name order, read and
    checked; a class id indexes class_names (the model's).

    Raises:
        OSError: root cannot be listed (the caller says so in one line).
    """
    for raw in sorted(os.listdir(root)):
        yield read_feedback_file(root / raw, class_names=class_names, max_bytes=max_bytes)


def read_feedback_file(
    path: Path, *, class_names: Sequence[str], max_bytes: int = MAX_FILE_BYTES
) -> FeedbackFile:
    """One file read and checked (never raises for what the file holds)."""
    raw = path.name
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(raw).decode("utf-8", "backslashreplace")
        return _rejected(
            shown_name(shown), raw, "bad_name", "the file name is not UTF-8: rename it"
        )
    name = shown_name(raw)
    if not raw.lower().endswith(".json") or raw.lower() == ".json":
        return _rejected(name, raw, "not_feedback", "expected a feedback file <image_id>.json")
    try:
        info = path.stat()  # follows a link to a file; a loop raises ELOOP
    except OSError as exc:
        return _rejected(name, raw, "unreadable", f"cannot read it ({exc.strerror})")
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return _rejected(name, raw, "not_a_file", f"{kind}, expected a JSON file")
    if info.st_size > max_bytes:
        return _rejected(
            name,
            raw,
            "too_large",
            f"{info.st_size} bytes; a feedback file is at most {max_bytes} bytes",
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)  # it may have grown since stat
    except OSError as exc:
        return _rejected(name, raw, "unreadable", f"cannot read it ({exc.strerror})")
    if len(data) > max_bytes:
        return _rejected(name, raw, "too_large", f"more than {max_bytes} bytes")
    sha256 = hashlib.sha256(data).hexdigest()
    boxes, rejection = parse_feedback(data, class_names=class_names)
    return FeedbackFile(name, raw, Path(raw).stem, sha256, boxes, rejection)


def parse_feedback(
    data: bytes, *, class_names: Sequence[str]
) -> tuple[tuple[FeedbackBox, ...], Rejection | None]:
    """A file's boxes, or no boxes and why: one bad box rejects the whole file (it is
    one review, imported whole or not at all)."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return (), Rejection("not_json", "not UTF-8 text, expected a JSON object")
    except (ValueError, RecursionError) as exc:
        return (), Rejection("not_json", f"not JSON ({str(exc)[:80]})")
    objects = document if isinstance(document, list) else [document]
    if not objects:
        return (), Rejection("missing_field", "an empty list: no feedback in it")
    boxes = []
    for index, item in enumerate(objects):
        where = "" if len(objects) == 1 else f"box {index}: "
        if not isinstance(item, dict):
            kind = type(item).__name__
            return (), Rejection("not_json", f"{where}expected a JSON object, got {kind}")
        try:
            boxes.append(_box(item, class_names))
        except _Bad as bad:
            return (), Rejection(bad.reason, where + bad.message)
    return tuple(boxes), None


class _Bad(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _number(value: Any, field: str) -> float:
    # JSON numbers only: "0.9" or true is a wrong type, not 0.9 or 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"bad_{field}", f"{field}: expected a number, got {json.dumps(value)[:40]}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise _Bad("not_finite", f"{field}: {str(value)[:40]} is out of range") from None
    if not math.isfinite(number):
        raise _Bad("not_finite", f"{field}: {number} is not a finite number")
    return number


def _box(item: Mapping[str, Any], class_names: Sequence[str]) -> FeedbackBox:
    missing = [field for field in FIELDS if field not in item]
    if missing:
        raise _Bad("missing_field", f"missing {', '.join(missing)} (expected {', '.join(FIELDS)})")
    class_id = _number(item["class_id"], "class_id")
    if not class_id.is_integer() or not 0 <= class_id < len(class_names):
        known = ", ".join(f"{n} {name}" for n, name in enumerate(class_names[:20]))
        raise _Bad(
            "bad_class_id",
            f"class_id {str(item['class_id'])[:20]} is not one of the model's: {known}",
        )
    confidence = _number(item["confidence"], "confidence")
    if not 0.0 <= confidence <= 1.0:
        raise _Bad("bad_confidence", f"confidence {confidence:g} is not in [0, 1]")
    return FeedbackBox(
        int(class_id), confidence, _corners(item["bbox"]), _timestamp(item["timestamp"])
    )


def _corners(bbox: Any) -> tuple[float, float, float, float]:
    if isinstance(bbox, dict):
        if any(key not in bbox for key in _CORNERS):
            raise _Bad("bad_bbox", f"bbox: expected keys {', '.join(_CORNERS)}")
        values: Sequence[Any] = [bbox[key] for key in _CORNERS]
    elif isinstance(bbox, list) and len(bbox) == 4:
        values = bbox
    else:
        raise _Bad("bad_bbox", "bbox: expected [x_min, y_min, x_max, y_max]")
    x_min, y_min, x_max, y_max = (_number(value, "bbox") for value in values)
    if not (0 <= x_min < x_max and 0 <= y_min < y_max):
        raise _Bad(
            "bad_bbox",
            f"bbox [{x_min:g}, {y_min:g}, {x_max:g}, {y_max:g}]: expected "
            "0 <= x_min < x_max and 0 <= y_min < y_max (pixels)",
        )
    return x_min, y_min, x_max, y_max


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(
                "bad_timestamp", f"timestamp {value[:40]!r} is not ISO 8601 or Unix seconds"
            ) from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    else:
        seconds = _number(value, "timestamp")
        try:
            when = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            when = _LATEST
    if not _EARLIEST <= when < _LATEST:
        hint = "" if isinstance(value, str) else " (Unix seconds, not milliseconds?)"
        raise _Bad("bad_timestamp", f"timestamp {str(value)[:40]} is not in 1970-2099{hint}")
    return when
