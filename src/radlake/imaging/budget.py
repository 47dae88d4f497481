"""The decode budget: how many bytes of pixels one input may decode to.

Every reader checks it from headers before any pixel is decoded (issue 7, "ingest
that never stops"): a 333-byte JPEG may claim 16000 x 16000 pixels, a 4 KB DICOM may
carry a JPEG whose frame header claims 30000 x 30000, a 1 MB .nii.gz may claim 1024^3
float voxels, and a small deflated DICOM may inflate to hundreds of megabytes. The
figures are what the headers claim; refusing them costs a few bytes of parsing.

This module also reads the few codestream headers the check needs (JPEG and JPEG-LS
SOFn, JPEG 2000 SIZ, PNG IHDR) and inflates deflate/gzip streams piece by piece,
so that no stream is ever inflated past the budget.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from radlake.errors import TooLargeToDecode

MIB = 2**20
_TIMES = "\N{MULTIPLICATION SIGN}"
DEFAULT_MAX_DECODED_BYTES = 1024 * MIB
# Inflate at most this much at a time, so a bomb is caught after one piece.
INFLATE_PIECE = MIB
_INPUT_SLICE = 256 * 1024

# ITU-T T.81 B.1.1.3 start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) and T.87
# SOF55 (JPEG-LS); they all carry precision, lines, samples per line, components.
_JPEG_SOF = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)])
_JPEG_SOF |= frozenset([*range(0xCD, 0xD0), 0xF7])
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # ISO 15444-1 A.4.1, A.5.1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples per pixel (ISO 15948 11.2.2).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def describe_bytes(count: int) -> str:
    """A budget as people configure it: in MiB (RADLAKE_MAX_DECODED_MB), else bytes."""
    return f"{count / MIB:.6g} MiB" if count >= MIB else f"{count} B"


def check_decoded_size(figures: Sequence[int], max_decoded_bytes: int) -> int:
    """Refuse pixels whose decoded size, the product of figures, passes the budget.

    figures are the dimensions as the header states them (rows, columns, frames or
    slices, samples per pixel, ...) and last the bytes per sample; the message joins
    them with multiplication signs, as in "16000 x 16000 x 1 x 1 B" written tight.

    Returns:
        The decoded size in bytes.

    Raises:
        TooLargeToDecode: the product is larger than max_decoded_bytes.
    """
    total = math.prod(max(0, int(figure)) for figure in figures)
    if total > max_decoded_bytes:
        shown = _TIMES.join(str(int(figure)) for figure in figures)
        raise TooLargeToDecode(
            f"too large to decode safely: {shown} B > budget ({describe_bytes(max_decoded_bytes)})"
        )
    return total


@dataclass(frozen=True, slots=True)
class CodestreamSize:
    """The frame size a compressed codestream's own header claims."""

    rows: int
    columns: int
    samples: int
    bits: int

    @property
    def bytes_per_sample(self) -> int:
        return max(1, math.ceil(self.bits / 8))


def codestream_size(prefix: bytes) -> CodestreamSize | None:
    """Rows, columns, components and precision from the start of a codestream.

    Reads JPEG (any SOFn), JPEG-LS (SOF55) and JPEG 2000 (SIZ, bare or inside JP2
    boxes). None when the prefix holds no such header.
    """
    if prefix.startswith(b"\xff\xd8"):
        return _jpeg_size(prefix)
    siz = prefix.find(_J2K_SOC_SIZ)
    if siz >= 0:
        return _j2k_size(prefix, siz + 2)
    return None


def _jpeg_size(data: bytes) -> CodestreamSize | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None  # not at a marker: a malformed stream; the decoder decides
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte (T.81 B.1.1.2)
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI):
            return None  # scan data before any frame header
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in _JPEG_SOF:
            if position + 10 > len(data):
                return None
            bits, rows, columns, components = struct.unpack_from(">BHHB", data, position + 4)
            return CodestreamSize(rows, columns, components, bits)
        position += 2 + length
    return None


def _j2k_size(data: bytes, siz: int) -> CodestreamSize | None:
    # SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz, then per
    # component Ssiz (bit depth - 1, sign in the top bit) XRsiz YRsiz.
    if siz + 40 > len(data):
        return None
    fields = struct.unpack_from(">HHIIIIIIIIH", data, siz + 2)
    x_size, y_size, x_offset, y_offset, components = (*fields[2:6], fields[10])
    depths = data[siz + 40 : siz + 40 + 3 * components : 3]
    bits = max(((depth & 0x7F) + 1 for depth in depths), default=8)
    return CodestreamSize(
        max(0, y_size - y_offset), max(0, x_size - x_offset), max(1, components), bits
    )


def png_size(data: bytes) -> CodestreamSize | None:
    """Rows, columns, samples and bit depth from a PNG's IHDR (always the first chunk)."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    return CodestreamSize(height, width, _PNG_SAMPLES.get(colour, 4), depth)


def inflate_pieces(
    data: bytes | memoryview, wbits: int, piece: int = INFLATE_PIECE
) -> Iterator[bytes]:
    """Inflate a deflate (wbits -15), zlib (15) or gzip (31) stream piece by piece.

    Never holds more than one piece of output, and feeds the input in slices so that
    no step copies the rest of a large input. gzip streams may have several members
    (bgzip, pigz), which follow one another; bytes after the last member or after a
    raw deflate stream are ignored.

    Raises:
        zlib.error: the stream is corrupt.
        EOFError: the stream ends before its final block.
    """
    view = memoryview(data)
    inflater = zlib.decompressobj(wbits)
    fed = 0  # input bytes handed to the current inflater, from `start`
    start = 0
    pending: bytes | memoryview = b""
    while True:
        if not pending:
            pending = view[start + fed : start + fed + _INPUT_SLICE]
            fed += len(pending)
        out = inflater.decompress(pending, piece)
        if out:
            yield out
        pending = inflater.unconsumed_tail
        if inflater.eof:
            start += fed - len(inflater.unused_data)  # where the next member would begin
            if not (wbits & 16 and bytes(view[start : start + 2]) == b"\x1f\x8b"):
                return
            inflater, fed, pending = zlib.decompressobj(wbits), 0, b""
        elif not out and not pending and start + fed >= len(view):
            raise EOFError("compressed stream ends before its last block")


def inflated_size(data: bytes | memoryview, wbits: int, limit: int) -> int | None:
    """How many bytes data inflates to, or None once it passes limit; keeps nothing.

    Raises:
        zlib.error, EOFError: as inflate_pieces.
    """
    total = 0
    for out in inflate_pieces(data, wbits):
        total += len(out)
        if total > limit:
            return None
    return total


def inflate_prefix(data: bytes | memoryview, wbits: int, count: int) -> bytearray:
    """At most the first count bytes data inflates to (fewer when it is shorter).

    Raises:
        zlib.error, EOFError: as inflate_pieces (EOFError only before count bytes).
    """
    # One growing buffer (realloc, not a list joined at the end): the peak stays
    # near count, not twice it.
    out = bytearray()
    for piece in inflate_pieces(data, wbits, piece=max(1, min(INFLATE_PIECE, count))):
        out += piece[: count - len(out)]
        if len(out) >= count:
            break
    return out
