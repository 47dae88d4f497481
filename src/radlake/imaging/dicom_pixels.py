"""DICOM pixels: the decode budget checked from headers, then frames decoded on demand.

pydicom with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE) decodes; this
module adds Deflated Image Frame Compression (PS3.5 8.2.16), which pydicom 3.0 lacks.
Before anything is decoded, the claim of the headers is checked against the budget:
Rows x Columns x frames x samples x bytes per sample, and for JPEG, JPEG-LS and JPEG
2000 also the size the codestream's own frame header states. Whatever a decoder,
pydicom or numpy raises on bad input becomes CorruptImage with a reason.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragmented_frames, generate_fragments
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import RLELosslessDecoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from radlake.errors import CorruptImage, RenderError, UndecodableImage
from radlake.imaging.budget import (
    DEFAULT_MAX_DECODED_BYTES,
    check_decoded_size,
    codestream_size,
)
from radlake.imaging.dicom_dataset import (
    DeflatedImageFrameCompression,
    as_number,
    frame_count,
    functional_value,
    get_text,
    get_value,
    pixel_spacing,
    quiet,
    require_pixels,
    transfer_syntax_name,
    value_or_functional,
)
from radlake.imaging.pixels import (
    FloatArray,
    PixelSource,
    VoiTransform,
    Window,
    decoding,
    is_decoder_panic,
    safe_message,
)

_GREY = {"MONOCHROME1", "MONOCHROME2"}

# Codestreams whose own header states the frame size (T.81 SOFn, T.87 SOF55, 15444 SIZ).
_SIZED_CODESTREAMS = frozenset(
    [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes]
)

_CODESTREAM_HEADER_BYTES = 64 * 1024  # APPn segments (ICC profiles) come before SOFn

_NATIVE_PIXEL_KEYWORDS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


def _is_encapsulated(ds: Dataset) -> bool:
    # PS3.5 A.4: encapsulated pixel data, and only they, have an undefined length.
    return "PixelData" in ds and bool(ds["PixelData"].is_undefined_length)


def _codestream_prefix(ds: Dataset) -> bytes:
    """The first bytes of the first frame's codestream (the fragments after the BOT)."""
    prefix = b""
    try:
        fragments = generate_fragments(ds.PixelData)
        next(fragments, None)  # the Basic Offset Table item, always first (PS3.5 A.4)
        for fragment in fragments:
            prefix += fragment[: _CODESTREAM_HEADER_BYTES - len(prefix)]
            if len(prefix) >= _CODESTREAM_HEADER_BYTES:
                break
    except ValueError:  # malformed items: the decoder will say so
        pass
    return prefix


def check_pixel_budget(ds: Dataset, max_decoded_bytes: int) -> None:
    """Refuse pixel data whose headers claim more decoded bytes than the budget.

    The claim is Rows x Columns x frames x Samples per Pixel x bytes per sample; for
    JPEG, JPEG-LS and JPEG 2000 the first frame's codestream header states its own
    size, and the larger claim counts (a 4 KB object whose JPEG claims 30000 x 30000
    pixels is refused even when its Rows and Columns are small).

    Raises:
        TooLargeToDecode: the larger claim is over max_decoded_bytes.
    """
    frames = frame_count(ds)
    sample_bytes = math.ceil(max(1, as_number(get_value(ds, "BitsAllocated"), int) or 8) / 8)
    claims = [
        [
            as_number(get_value(ds, "Rows"), int) or 0,
            as_number(get_value(ds, "Columns"), int) or 0,
            frames,
            as_number(get_value(ds, "SamplesPerPixel"), int) or 1,
            sample_bytes,
        ]
    ]
    if ds.file_meta.TransferSyntaxUID in _SIZED_CODESTREAMS and _is_encapsulated(ds):
        size = codestream_size(_codestream_prefix(ds))
        if size is not None:
            sample_bytes = max(sample_bytes, size.bytes_per_sample)
            claims.append([size.rows, size.columns, frames, size.samples, sample_bytes])
    check_decoded_size(max(claims, key=math.prod), max_decoded_bytes)


def _decimal(value: Any, keyword: str) -> float:
    try:
        if isinstance(value, MultiValue | list):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise CorruptImage(f"malformed {keyword}: expected a decimal number") from exc
    if not math.isfinite(number):
        raise CorruptImage(f"malformed {keyword}: expected a finite number, got {number}")
    return number


def _element_value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds[keyword].value
    except Exception as exc:  # pydicom may fail to convert a malformed raw value
        raise CorruptImage(f"malformed {keyword}: {safe_message(exc)}") from exc


def _check_lut_item(sequence: Any, name: str, clause: str) -> None:
    """The first item of a LUT sequence, the one applied, has its descriptor and data."""
    item = sequence[0] if len(sequence) else Dataset()
    if "LUTDescriptor" not in item or "LUTData" not in item:
        raise CorruptImage(
            f"malformed {name}: its first item has no LUT Descriptor or LUT Data (PS3.3 {clause})"
        )


class DicomPixels(PixelSource):
    """Frames of a DICOM object after the modality LUT (per frame for Enhanced IODs).

    Greyscale values are float32: a 16-bit value times a rescale slope keeps its
    precision, at half the memory of float64.
    """

    def __init__(self, ds: Dataset, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> None:
        with quiet(), decoding("unreadable pixel module"):
            require_pixels(ds)
            check_pixel_budget(ds, max_decoded_bytes)
            self._setup(ds)

    def _setup(self, ds: Dataset) -> None:
        self._ds = ds
        self.frame_count = frame_count(ds)
        photometric = get_text(ds, "PhotometricInterpretation") or "MONOCHROME2"
        self._photometric = photometric
        self.invert = photometric == "MONOCHROME1"
        self.is_color = photometric not in _GREY
        row_mm, col_mm = pixel_spacing(ds)
        between = as_number(
            value_or_functional(ds, "SpacingBetweenSlices", "PixelMeasuresSequence")
        ) or as_number(value_or_functional(ds, "SliceThickness", "PixelMeasuresSequence"))
        if row_mm and col_mm:
            self.spacing = (between or row_mm, row_mm, col_mm)

    def _decode(self, index: int | None) -> np.ndarray:
        ts = self._ds.file_meta.TransferSyntaxUID
        if ts == DeflatedImageFrameCompression:
            return self._inflate_frames(index)
        options: dict[str, Any] = {}
        if ts == RLELossless and "pylibjpeg" in RLELosslessDecoder.available_plugins:
            # pydicom falls back to its pure-Python RLE decoder, which grows its output
            # without bound and takes minutes on a crafted segment; pylibjpeg-rle
            # decodes into the frame size the header states.
            options["decoding_plugin"] = "pylibjpeg"
        try:
            with quiet():
                return pixel_array(self._ds, index=index, **options)
        except (NotImplementedError, RuntimeError, ImportError) as exc:
            if _is_encapsulated(self._ds):
                raise UndecodableImage(
                    f"undecodable transfer syntax {transfer_syntax_name(ts)}: {safe_message(exc)}"
                ) from exc
            raise CorruptImage(f"undecodable pixel data: {safe_message(exc)}") from exc
        except MemoryError:
            raise
        except Exception as exc:  # short buffers, bad codestreams, bad descriptors
            raise CorruptImage(f"truncated or malformed pixel data: {safe_message(exc)}") from exc
        except BaseException as exc:  # a Rust decoder's panic is not an Exception
            if not is_decoder_panic(exc):
                raise
            raise CorruptImage(f"truncated or malformed pixel data: {safe_message(exc)}") from exc

    def _inflate_frames(self, index: int | None) -> np.ndarray:
        """Deflated Image Frame Compression: each frame is the native frame, deflated.

        Each is inflated to at most its native size (so it cannot be a bomb), then
        read by pydicom as native pixel data (bit-packed when Bits Allocated is 1).
        """
        ds = self._ds
        native = Dataset()
        native.file_meta = FileMetaDataset()
        native.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for keyword in _NATIVE_PIXEL_KEYWORDS:
            if keyword in ds:
                native[keyword] = ds[keyword]
        bits = as_number(get_value(ds, "BitsAllocated"), int) or 8
        frame_bytes = math.ceil(
            int(ds.Rows)
            * int(ds.Columns)
            * (as_number(get_value(ds, "SamplesPerPixel"), int) or 1)
            * bits
            / 8
        )
        wanted = range(self.frame_count) if index is None else range(index, index + 1)
        frames = []
        encoded = generate_fragmented_frames(ds.PixelData, number_of_frames=self.frame_count)
        for number, fragments in enumerate(encoded):
            if number not in wanted:
                continue
            frame = zlib.decompressobj(-zlib.MAX_WBITS).decompress(b"".join(fragments), frame_bytes)
            if len(frame) < frame_bytes:
                raise CorruptImage(
                    f"truncated or malformed pixel data: frame {number + 1} inflates to "
                    f"{len(frame)} of its {frame_bytes} bytes"
                )
            native.add_new(0x7FE00010, "OB" if bits <= 8 else "OW", frame)
            frames.append(pixel_array(native))
        if len(frames) != len(wanted):
            raise CorruptImage(f"truncated or malformed pixel data: {len(frames)} frames found")
        return frames[0] if index is not None or self.frame_count == 1 else np.stack(frames)

    def _to_display_values(self, raw: np.ndarray, index: int) -> np.ndarray:
        if self.is_color:
            if self._photometric == "PALETTE COLOR":
                if "RedPaletteColorLookupTableDescriptor" not in self._ds:
                    raise CorruptImage(
                        "PALETTE COLOR without its Palette Color Lookup Table descriptors "
                        "(PS3.3 C.7.6.3.1.5)"
                    )
                with quiet():
                    raw = apply_color_lut(raw, self._ds)
            bits = int(raw.dtype.itemsize * 8)
            if raw.dtype != np.uint8:
                raw = (raw.astype(np.float64) / (2**bits - 1) * 255).astype(np.uint8)
            return raw
        return self._modality_values(raw, index)

    def _rescale(self, index: int) -> tuple[float, float] | None:
        """The linear rescale (slope, intercept), or None under a Modality LUT Sequence."""
        ds = self._ds
        if "ModalityLUTSequence" in ds:
            _check_lut_item(ds.ModalityLUTSequence, "Modality LUT Sequence", "C.11.1")
            return None
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            return (
                _decimal(_element_value(ds, "RescaleSlope"), "RescaleSlope"),
                _decimal(_element_value(ds, "RescaleIntercept"), "RescaleIntercept"),
            )
        # Enhanced IODs: per frame, then shared functional groups.
        group = "PixelValueTransformationSequence"
        slope = functional_value(ds, index, group, "RescaleSlope")
        intercept = functional_value(ds, index, group, "RescaleIntercept")
        if slope is None or intercept is None:
            return 1.0, 0.0
        return _decimal(slope, "RescaleSlope"), _decimal(intercept, "RescaleIntercept")

    def _modality_values(self, raw: np.ndarray, index: int) -> np.ndarray:
        """PS3.3 C.11.1: the Modality LUT, or the rescale, in float32."""
        rescale = self._rescale(index)
        if rescale is None:  # non-linear: a table lookup, as pydicom does it
            return np.asarray(apply_modality_lut(raw, self._ds), dtype=np.float32)
        slope, intercept = rescale
        values = raw.astype(np.float32)
        if slope != 1:
            values *= np.float32(slope)
        if intercept != 0:
            values += np.float32(intercept)
        return values

    def stored_frame(self, index: int) -> tuple[np.ndarray, float, float]:
        if self.is_color:
            return super().stored_frame(index)
        self._check_index(index)
        with decoding("unrenderable pixel data"):
            raw = self._decode(index if self.frame_count > 1 else None)
            with quiet():
                rescale = self._rescale(index)
                if rescale is None:
                    return self._modality_values(raw, index), 1.0, 0.0
        return raw, *rescale

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.frame_count:
            raise RenderError(f"expected a frame in 0..{self.frame_count - 1}, got {index}")

    def frame(self, index: int) -> np.ndarray:
        self._check_index(index)
        with decoding("unrenderable pixel data"):
            raw = self._decode(index if self.frame_count > 1 else None)
            with quiet():
                return self._to_display_values(raw, index)

    def volume(self) -> np.ndarray:
        with decoding("unrenderable pixel data"):
            raw = self._decode(None)
            if self.frame_count == 1:
                raw = raw[np.newaxis]
            with quiet():
                return np.stack([self._to_display_values(raw[i], i) for i in range(len(raw))])

    def header_voi(self, index: int) -> Window | VoiTransform | None:
        with quiet(), decoding("malformed VOI LUT or window"):
            return self._header_voi(index)

    def _header_voi(self, index: int) -> Window | VoiTransform | None:
        ds = self._ds
        if get_value(ds, "VOILUTSequence"):
            _check_lut_item(ds.VOILUTSequence, "VOI LUT Sequence", "C.11.2")
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])

            def voi_lut(values: np.ndarray) -> FloatArray:
                with quiet(), decoding("malformed VOI LUT"):
                    out = np.asarray(apply_voi(values, ds), dtype=np.float64)
                return out / float(2**bits - 1)

            return voi_lut
        center = as_number(value_or_functional(ds, "WindowCenter", "FrameVOILUTSequence", index))
        width = as_number(value_or_functional(ds, "WindowWidth", "FrameVOILUTSequence", index))
        if center is None or width is None or not width > 0:
            return None
        return Window(center, width)
