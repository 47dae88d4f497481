"""DICOM bytes to a pydicom Dataset, and values read from it without surprises.

Parsing is bounded: a deflated data set (PS3.5 A.5) is inflated only once its
inflated size is known to fit the decode budget (budget.py). Values are read
tolerantly: a malformed value is treated as absent, never fatal, and pydicom's
warnings, which may quote values, are silenced.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from radlake.errors import CorruptImage, NoPixelData, TooLargeToDecode
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES, describe_bytes, inflated_size
from radlake.imaging.pixels import safe_message

# (7FE0,0010) Pixel Data, little endian: present in the bytes but not in the parse.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# PS3.5 8.2.16 (2023): every frame deflated on its own; pydicom 3.0 does not know it.
DeflatedImageFrameCompression = UID("1.2.840.10008.1.2.8.1")

_TRANSFER_SYNTAX_NAMES = {DeflatedImageFrameCompression: "Deflated Image Frame Compression"}

_DEFLATED_UID_BYTES = str(DeflatedExplicitVRLittleEndian).encode()

# Explicit VR elements with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


@contextmanager
def quiet() -> Iterator[None]:
    """Silence pydicom's warnings (non-conformant values); they may quote values."""
    # pydicom warns about non-conformant values; those warnings may quote values.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def get_value(ds: Dataset, keyword: str) -> Any:
    """The element's value, or None when absent, empty or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value is treated as absent, not fatal
        return None
    if value is None or value == "":
        return None
    return value


def get_text(ds: Dataset, keyword: str) -> str | None:
    """The element's value as stripped text (values of a multi-value joined by \\)."""
    value = get_value(ds, keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(item) for item in value)
    return str(value).strip() or None


def as_number(value: Any, kind: type[float] | type[int] = float) -> Any:
    """A value (the first of a multi-value) as float or int, or None when not a number."""
    if isinstance(value, MultiValue | list):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        return None


def functional_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """An attribute from the Enhanced IOD functional groups: per-frame, then shared."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = get_value(ds, groups_keyword)
        if groups is None or index >= len(groups):
            continue
        items = get_value(groups[index], sequence)
        if items:
            value = get_value(items[0], keyword)
            if value is not None:
                return value
    return None


def value_or_functional(ds: Dataset, keyword: str, sequence: str, frame: int = 0) -> Any:
    """The top-level value, else the one in the frame's functional groups."""
    value = get_value(ds, keyword)
    return value if value is not None else functional_value(ds, frame, sequence, keyword)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = get_value(meta, "TransferSyntaxUID") if meta is not None else None
    if uid is not None:
        return UID(str(uid))
    # No meta header (raw datasets): what the parser found tells the encoding.
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def transfer_syntax_name(ts: UID) -> str:
    """A transfer syntax's name, also for those pydicom does not know."""
    return _TRANSFER_SYNTAX_NAMES.get(ts, ts.name)


def _meta_end(data: bytes) -> int | None:
    """Where the File Meta Information (group 0002, explicit VR little endian) ends."""
    if data[128:132] != b"DICM":
        return None
    position = 132
    while position + 8 <= len(data):
        (group,) = struct.unpack_from("<H", data, position)
        if group != 0x0002:
            return position
        if data[position + 4 : position + 6] in _LONG_VRS:
            if position + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, position + 8)
            position += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            position += 8 + length
    return min(position, len(data))


def _check_deflated_size(data: bytes, max_decoded_bytes: int) -> None:
    """Refuse a deflated data set (PS3.5 A.5) that inflates past the budget.

    pydicom inflates the whole data set in one go (a 262 KB file can inflate to
    269 MB), so the inflated size is counted first, piece by piece, keeping nothing.
    """
    end = _meta_end(data)
    if end is None or _DEFLATED_UID_BYTES not in data[132:end]:
        return
    try:
        with quiet():
            meta = dcmread(io.BytesIO(data[:end]), force=True).file_meta
    except Exception as exc:  # as in read_dataset: garbage means "corrupt"
        raise CorruptImage(f"unreadable DICOM header: {safe_message(exc)}") from exc
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    body = memoryview(data)[end:]
    try:
        size = inflated_size(body, -zlib.MAX_WBITS, max_decoded_bytes)
    except (zlib.error, EOFError) as exc:
        raise CorruptImage(f"unreadable DICOM header: deflated data set: {exc}") from exc
    if size is None:
        raise TooLargeToDecode(
            f"too large to decode safely: {len(body)} B deflated data set inflates to over "
            f"{max_decoded_bytes} B > budget ({describe_bytes(max_decoded_bytes)})"
        )


def read_dataset(data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Dataset:
    """Parse a DICOM object from bytes (with or without the preamble).

    Raises:
        TooLargeToDecode: a deflated data set inflates past max_decoded_bytes.
        CorruptImage: the header cannot be parsed (truncated, malformed).
    """
    _check_deflated_size(data, max_decoded_bytes)
    try:
        with quiet():
            ds = dcmread(io.BytesIO(data), force=True)
            ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "corrupt"
        raise CorruptImage(f"unreadable DICOM header: {safe_message(exc)}") from exc
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS) and "SOPClassUID" not in ds:
        if _PIXEL_DATA_TAG in data:  # the parse stopped early: the file is cut short
            raise CorruptImage("truncated DICOM: the data set ends before its pixel data")
        raise CorruptImage("unreadable DICOM header: no SOP Class UID and no pixel data")
    return ds


def require_pixels(ds: Dataset) -> None:
    """Raises NoPixelData for objects without an image (a report, a plan)."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = get_value(ds, "SOPClassUID")
        kind = UID(str(sop)).name if sop is not None else "this object"
        raise NoPixelData(f"no pixel data: {kind} carries no image")


def frame_count(ds: Dataset) -> int:
    """Number of Frames, 1 when absent or not a positive number."""
    frames = as_number(get_value(ds, "NumberOfFrames"), int)
    return frames if frames and frames > 0 else 1


def pixel_spacing(ds: Dataset) -> tuple[float | None, float | None]:
    """(row, column) spacing in mm: Pixel Spacing, else Imager Pixel Spacing."""
    spacing = value_or_functional(ds, "PixelSpacing", "PixelMeasuresSequence")
    if spacing is None:
        spacing = get_value(ds, "ImagerPixelSpacing")  # projection radiography
    try:
        return float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return None, None
