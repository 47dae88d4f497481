"""Format detection from content: magic numbers, never file names.

- DICOM: "DICM" at byte 128 (PS3.10 7.1), or a bare dataset without the preamble
  that starts with a plausible group 0002/0008 element (older and raw files).
- NIfTI-1: sizeof_hdr 348 and magic "n+1"/"ni1" at 344; NIfTI-2: sizeof_hdr 540 and
  magic "n+2" at 4; either may be gzip-compressed (.nii.gz).
- PNG: the 8-byte signature; JPEG: SOI followed by a marker (FF D8 FF).
"""

from __future__ import annotations

import struct
import zlib

from radlake.domain import ImageFormat

SNIFF_BYTES = 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
GZIP_MAGIC = b"\x1f\x8b"
_DICOM_START_GROUPS = {0x0002, 0x0008}
_VR_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def sniff_format(head: bytes) -> ImageFormat | None:
    """Detect the format of content from its first bytes (at least 1 KiB when available)."""
    if head.startswith(PNG_SIGNATURE):
        return ImageFormat.PNG
    if head.startswith(JPEG_SOI):
        return ImageFormat.JPEG
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ImageFormat.DICOM
    if _is_nifti_header(head) or (
        head.startswith(GZIP_MAGIC) and _is_nifti_header(_gunzip_prefix(head))
    ):
        return ImageFormat.NIFTI
    if _looks_like_bare_dicom(head):
        return ImageFormat.DICOM
    return None


def is_gzip(head: bytes) -> bool:
    """True when content is gzip-compressed (a .nii.gz)."""
    return head.startswith(GZIP_MAGIC)


def _gunzip_prefix(head: bytes) -> bytes:
    # Only the first few hundred bytes are needed; a partial stream is fine.
    try:
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head, 600)
    except zlib.error:
        return b""


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348:
        for order in ("<", ">"):
            (size,) = struct.unpack(order + "i", head[:4])
            if size == 348 and head[344:347] in (b"n+1", b"ni1"):
                return True
            if size == 540 and head[4:7] in (b"n+2", b"ni2"):
                return True
    return False


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A dataset without preamble: its first element is in group 0002 or 0008."""
    if len(head) < 8:
        return False
    vr = head[4:6]
    explicit = vr[0] in _VR_LETTERS and vr[1] in _VR_LETTERS
    for order in ("<", ">"):  # explicit VR big endian exists without a preamble too
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in _DICOM_START_GROUPS or element > 0x0020:
            continue
        if explicit:
            return True
        # Implicit VR (always little endian): a small 4-byte length follows the tag.
        (length,) = struct.unpack("<I", head[4:8])
        return order == "<" and length < 1024
    return False
