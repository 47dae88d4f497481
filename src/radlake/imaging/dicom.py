"""DICOM: pydicom with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, RLE).

Headers are parsed once; pixels are decoded only to render, one frame at a time,
after the decode budget was checked from the headers (budget.py): the DICOM Rows,
Columns, frames, samples and bits, and for encapsulated pixel data also the size the
codestream's own frame header claims. Deflated data sets are inflated only once
their inflated size is known to fit the budget.
Direct identifiers are never copied out: the PatientID leaves this module only as a
keyed pseudonym (see deid.py).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragmented_frames, generate_fragments
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import RLELosslessDecoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)
from pydicom.valuerep import IS, DSfloat, PersonName

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import (
    CorruptImage,
    ImageError,
    NoPixelData,
    RenderError,
    TooLargeToDecode,
    UndecodableImage,
)
from radlake.imaging.budget import (
    DEFAULT_MAX_DECODED_BYTES,
    check_decoded_size,
    codestream_size,
    describe_bytes,
    inflated_size,
)
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import (
    FloatArray,
    PixelSource,
    VoiTransform,
    Window,
    decoding,
    is_decoder_panic,
    safe_message,
)
from radlake.imaging.reader import ImageReader

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = {"MONOCHROME1", "MONOCHROME2"}
# Acquisition descriptors kept as attributes: technique, not identity (PS3.15 E.3.1
# "Retain Device Identity" is not used: station names and serials stay out).
_ATTRIBUTE_KEYWORDS = (
    "ImageType",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "KVP",
    "ConvolutionKernel",
    "PatientPosition",
    "Laterality",
    "ImageLaterality",
    "SpacingBetweenSlices",
    "PixelRepresentation",
    "SamplesPerPixel",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
)
# PS3.15 "Retain Patient Characteristics": sex and age are kept, never birth dates.
_PATIENT_CHARACTERISTICS = {"PatientSex": "patient_sex", "PatientAge": "patient_age"}
# PS3.5 8.2.16 (2023): every frame deflated on its own; pydicom 3.0 does not know it.
DeflatedImageFrameCompression = UID("1.2.840.10008.1.2.8.1")
_TRANSFER_SYNTAX_NAMES = {DeflatedImageFrameCompression: "Deflated Image Frame Compression"}
# Codestreams whose own header states the frame size (T.81 SOFn, T.87 SOF55, 15444 SIZ).
_SIZED_CODESTREAMS = frozenset(
    [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes]
)
_CODESTREAM_HEADER_BYTES = 64 * 1024  # APPn segments (ICC profiles) come before SOFn
_DEFLATED_UID_BYTES = str(DeflatedExplicitVRLittleEndian).encode()
# PS3.5 9.1: a UID is at most 64 characters; the catalog keys studies and series on them.
_MAX_UID_CHARACTERS = 64
# Explicit VR elements with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
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


@contextmanager
def _quiet() -> Iterator[None]:
    # pydicom warns about non-conformant values; those warnings may quote values.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _json_value(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, IS | int):
        return int(value)
    if isinstance(value, PersonName):
        return None  # never: person names are identifiers
    if isinstance(value, bytes):
        return None
    return str(value)


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value is treated as absent, not fatal
        return None
    if value is None or value == "":
        return None
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(item) for item in value)
    return str(value).strip() or None


def _number(value: Any, kind: type[float] | type[int] = float) -> Any:
    if isinstance(value, MultiValue | list):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        return None


def _functional(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """An attribute from the Enhanced IOD functional groups: per-frame, then shared."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = _get(ds, groups_keyword)
        if groups is None or index >= len(groups):
            continue
        items = _get(groups[index], sequence)
        if items:
            value = _get(items[0], keyword)
            if value is not None:
                return value
    return None


def _attr(ds: Dataset, keyword: str, sequence: str, frame: int = 0) -> Any:
    value = _get(ds, keyword)
    return value if value is not None else _functional(ds, frame, sequence, keyword)


def _slice_position(ds: Dataset) -> float | None:
    """Position along the slice normal (mm): sorts a series in space, not in time."""
    position = _attr(ds, "ImagePositionPatient", "PlanePositionSequence")
    orientation = _attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    try:
        ipp = np.array([float(v) for v in position], dtype=np.float64)
        iop = np.array([float(v) for v in orientation], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return round(float(np.dot(ipp, normal)), 4)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = _get(meta, "TransferSyntaxUID") if meta is not None else None
    if uid is not None:
        return UID(str(uid))
    # No meta header (raw datasets): what the parser found tells the encoding.
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _transfer_syntax_name(ts: UID) -> str:
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
        with _quiet():
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
        with _quiet():
            ds = dcmread(io.BytesIO(data), force=True)
            ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "corrupt"
        raise CorruptImage(f"unreadable DICOM header: {safe_message(exc)}") from exc
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS) and "SOPClassUID" not in ds:
        raise CorruptImage("unreadable DICOM header: no SOP Class UID and no pixel data")
    return ds


def _require_pixels(ds: Dataset) -> None:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        sop = _get(ds, "SOPClassUID")
        kind = UID(str(sop)).name if sop is not None else "this object"
        raise NoPixelData(f"no pixel data: {kind} carries no image")


def _frame_count(ds: Dataset) -> int:
    frames = _number(_get(ds, "NumberOfFrames"), int)
    return frames if frames and frames > 0 else 1


def _pixel_spacing(ds: Dataset) -> tuple[float | None, float | None]:
    spacing = _attr(ds, "PixelSpacing", "PixelMeasuresSequence")
    if spacing is None:
        spacing = _get(ds, "ImagerPixelSpacing")  # projection radiography
    try:
        return float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return None, None


def _uid(ds: Dataset, keyword: str, *, checked: bool = True) -> str | None:
    """A UID without its NUL padding (PS3.5 9.1); over 64 characters is refused."""
    text = _text(ds, keyword)
    text = text.strip("\0 ") if text is not None else None
    if checked and text is not None and len(text) > _MAX_UID_CHARACTERS:
        raise CorruptImage(
            f"invalid {keyword}: {len(text)} characters, PS3.5 9.1 allows at most "
            f"{_MAX_UID_CHARACTERS}"
        )
    return text or None


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
    frames = _frame_count(ds)
    sample_bytes = math.ceil(max(1, _number(_get(ds, "BitsAllocated"), int) or 8) / 8)
    claims = [
        [
            _number(_get(ds, "Rows"), int) or 0,
            _number(_get(ds, "Columns"), int) or 0,
            frames,
            _number(_get(ds, "SamplesPerPixel"), int) or 1,
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
        with _quiet(), decoding("unreadable pixel module"):
            _require_pixels(ds)
            check_pixel_budget(ds, max_decoded_bytes)
            self._setup(ds)

    def _setup(self, ds: Dataset) -> None:
        self._ds = ds
        self.frame_count = _frame_count(ds)
        photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
        self._photometric = photometric
        self.invert = photometric == "MONOCHROME1"
        self.is_color = photometric not in _GREY
        row_mm, col_mm = _pixel_spacing(ds)
        between = _number(_attr(ds, "SpacingBetweenSlices", "PixelMeasuresSequence")) or _number(
            _attr(ds, "SliceThickness", "PixelMeasuresSequence")
        )
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
            with _quiet():
                return pixel_array(self._ds, index=index, **options)
        except (NotImplementedError, RuntimeError, ImportError) as exc:
            if _is_encapsulated(self._ds):
                raise UndecodableImage(
                    f"undecodable transfer syntax {_transfer_syntax_name(ts)}: {safe_message(exc)}"
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
        bits = _number(_get(ds, "BitsAllocated"), int) or 8
        frame_bytes = math.ceil(
            int(ds.Rows)
            * int(ds.Columns)
            * (_number(_get(ds, "SamplesPerPixel"), int) or 1)
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
                with _quiet():
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
        slope = _functional(ds, index, group, "RescaleSlope")
        intercept = _functional(ds, index, group, "RescaleIntercept")
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
            with _quiet():
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
            with _quiet():
                return self._to_display_values(raw, index)

    def volume(self) -> np.ndarray:
        with decoding("unrenderable pixel data"):
            raw = self._decode(None)
            if self.frame_count == 1:
                raw = raw[np.newaxis]
            with _quiet():
                return np.stack([self._to_display_values(raw[i], i) for i in range(len(raw))])

    def header_voi(self, index: int) -> Window | VoiTransform | None:
        with _quiet(), decoding("malformed VOI LUT or window"):
            return self._header_voi(index)

    def _header_voi(self, index: int) -> Window | VoiTransform | None:
        ds = self._ds
        if _get(ds, "VOILUTSequence"):
            _check_lut_item(ds.VOILUTSequence, "VOI LUT Sequence", "C.11.2")
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])

            def voi_lut(values: np.ndarray) -> FloatArray:
                with _quiet(), decoding("malformed VOI LUT"):
                    out = np.asarray(apply_voi(values, ds), dtype=np.float64)
                return out / float(2**bits - 1)

            return voi_lut
        center = _number(_attr(ds, "WindowCenter", "FrameVOILUTSequence", index))
        width = _number(_attr(ds, "WindowWidth", "FrameVOILUTSequence", index))
        if center is None or width is None or not width > 0:
            return None
        return Window(center, width)


class DicomReader(ImageReader):
    """DICOM Part 10 files and bare datasets, every transfer syntax pylibjpeg decodes."""

    formats: ClassVar[tuple[ImageFormat, ...]] = (ImageFormat.DICOM,)

    def read_metadata(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> ImageMetadata:
        ds = read_dataset(data, max_decoded_bytes=max_decoded_bytes)
        metadata = self._dataset_metadata(ds, pseudonymizer)
        check_pixel_budget(ds, max_decoded_bytes)
        return metadata

    def read(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        # One parse serves both the catalog fields and the preview (~10% of ingest CPU).
        ds = read_dataset(data, max_decoded_bytes=max_decoded_bytes)
        metadata = self._dataset_metadata(ds, pseudonymizer)
        check_pixel_budget(ds, max_decoded_bytes)
        return metadata, lambda: DicomPixels(ds, max_decoded_bytes=max_decoded_bytes)

    def _dataset_metadata(self, ds: Dataset, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        _require_pixels(ds)
        try:
            with _quiet():
                return self._metadata(ds, pseudonymizer)
        except ImageError:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise CorruptImage(f"unreadable DICOM header: {safe_message(exc)}") from exc

    def _metadata(self, ds: Dataset, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        rows = _number(_get(ds, "Rows"), int)
        columns = _number(_get(ds, "Columns"), int)
        if not rows or not columns:
            raise CorruptImage("unreadable DICOM header: pixel data without Rows/Columns")
        patient_id = _text(ds, "PatientID")
        ts = ds.file_meta.TransferSyntaxUID
        sop_class = _uid(ds, "SOPClassUID", checked=False)
        attributes: dict[str, Any] = {"transfer_syntax_uid": str(ts)}
        if sop_class:
            attributes["sop_class_name"] = UID(sop_class).name
        for keyword in _ATTRIBUTE_KEYWORDS:
            value = _get(ds, keyword)
            if value is not None:
                converted = _json_value(value)
                if converted is not None:
                    attributes[keyword] = converted
        for keyword, name in _PATIENT_CHARACTERISTICS.items():
            text = _text(ds, keyword)
            if text:
                attributes[name] = text
        row_mm, col_mm = _pixel_spacing(ds)
        return ImageMetadata(
            format=ImageFormat.DICOM,
            rows=rows,
            columns=columns,
            frames=_frame_count(ds),
            modality=_text(ds, "Modality"),
            patient_pseudonym=pseudonymizer(patient_id) if patient_id else None,
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            sop_class_uid=sop_class,
            series_number=_number(_get(ds, "SeriesNumber"), int),
            series_description=_text(ds, "SeriesDescription"),
            instance_number=_number(_get(ds, "InstanceNumber"), int),
            body_part=_text(ds, "BodyPartExamined"),
            view_position=_text(ds, "ViewPosition"),
            manufacturer=_text(ds, "Manufacturer"),
            manufacturer_model=_text(ds, "ManufacturerModelName"),
            pixel_spacing_row=row_mm,
            pixel_spacing_col=col_mm,
            slice_thickness=_number(_attr(ds, "SliceThickness", "PixelMeasuresSequence")),
            slice_location=_number(_get(ds, "SliceLocation")),
            slice_position=_slice_position(ds),
            photometric=_text(ds, "PhotometricInterpretation"),
            bits_allocated=_number(_get(ds, "BitsAllocated"), int),
            bits_stored=_number(_get(ds, "BitsStored"), int),
            transfer_syntax=_transfer_syntax_name(ts),
            attributes=attributes,
        )

    def open_pixels(
        self, data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    ) -> PixelSource:
        ds = read_dataset(data, max_decoded_bytes=max_decoded_bytes)
        return DicomPixels(ds, max_decoded_bytes=max_decoded_bytes)
