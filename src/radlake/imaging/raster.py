"""PNG and JPEG: read with Pillow; 16-bit greyscale is kept at full depth.

Headers first: the PNG IHDR or the JPEG frame header, then Pillow's lazily read
header (size, bands, bit depth), are checked against the decode budget before
Pillow decodes a single pixel; a 333-byte JPEG claiming 16000 x 16000 pixels is
refused from its first bytes.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import CorruptImage, TooLargeToDecode
from radlake.imaging.budget import (
    DEFAULT_MAX_DECODED_BYTES,
    PNG_SIGNATURE,
    check_decoded_size,
    codestream_size,
    png_size,
)
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import PixelSource, Window, decoding, safe_message
from radlake.imaging.reader import ImageReader

# Pillow mode -> bits per sample of the stored values.
_MODE_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8}
_GREY_16_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# Pillow mode -> bytes per sample once decoded (others: one byte per band).
_MODE_SAMPLE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
_MODE_DTYPES = {"I;16": "uint16", "I;16L": "uint16", "I;16N": "uint16", "I;16B": ">u2"}
_HEADER_BYTES = 64 * 1024  # JPEG APPn segments (EXIF, ICC) come before the frame header
_COPY_STRIP_ROWS = 256  # rows copied out of Pillow at a time
# Pillow refuses more than twice this many pixels outright; below that, the decode
# budget decides. A 1-gigapixel chest film does not exist.
Image.MAX_IMAGE_PIXELS = 16384 * 16384


def _check_stated_size(data: bytes, max_decoded_bytes: int) -> None:
    """The size the PNG IHDR or JPEG SOFn states, before Pillow looks at the data."""
    size = (
        png_size(data) if data.startswith(PNG_SIGNATURE) else codestream_size(data[:_HEADER_BYTES])
    )
    if size is not None:
        figures = [size.rows, size.columns, size.samples, size.bytes_per_sample]
        check_decoded_size(figures, max_decoded_bytes)


def _open(data: bytes, max_decoded_bytes: int) -> Image.Image:
    """Pillow's lazily read image: header parsed and checked, nothing decoded."""
    _check_stated_size(data, max_decoded_bytes)
    try:
        with warnings.catch_warnings():
            # Between one and two MAX_IMAGE_PIXELS Pillow only warns: the budget decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise TooLargeToDecode(f"too large to decode safely: {safe_message(exc)}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"undecodable raster image: {safe_message(exc)}") from exc
    sample_bytes = _MODE_SAMPLE_BYTES.get(image.mode, 1)
    check_decoded_size(
        [image.height, image.width, len(image.getbands()), sample_bytes], max_decoded_bytes
    )
    return image


def _as_array(image: Image.Image) -> np.ndarray:
    """The decoded image as a numpy array, copied a strip of rows at a time.

    np.asarray(image) goes through tobytes(), which holds the pixels twice more at
    its peak; strips keep the peak at the decoded image plus its array.
    """
    width, height = image.size
    row = np.asarray(image.crop((0, 0, width, 1)))  # the layout and dtype of one row
    out = np.empty((height, *row.shape[1:]), row.dtype)
    for top in range(0, height, _COPY_STRIP_ROWS):
        bottom = min(height, top + _COPY_STRIP_ROWS)
        out[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return out


class RasterPixels(PixelSource):
    """A single PNG/JPEG frame, decoded when the source is made.

    The decoded pixels are held once, as a numpy array: Pillow's own copy is released
    (the image is closed) as soon as the array exists.
    """

    def __init__(self, image: Image.Image) -> None:
        with decoding("undecodable raster image"):
            image.load()
            mode = image.mode
            self._window: Window | None = None
            if mode in _GREY_16_MODES or mode == "F":
                # 16-bit and float: a robust window, never a clip to 8 bits.
                self._array = _as_array(image)
            elif mode in {"L", "LA", "1"}:
                self._array = _as_array(image if mode == "L" else image.convert("L"))
                # 8-bit greyscale is already a display image: show it unchanged.
                self._window = Window(127.5, 255.0)
            else:
                self._array = _as_array(image.convert("RGB"))
                self.is_color = True
            image.close()

    def frame(self, index: int) -> np.ndarray:
        # Modality values as float32, made on demand: the decoded array stays compact.
        return self._array if self.is_color else self._array.astype(np.float32)

    def stored_frame(self, index: int) -> tuple[np.ndarray, float, float]:
        return self._array, 1.0, 0.0

    def header_voi(self, index: int) -> Window | None:
        return self._window


class RasterReader(ImageReader):
    """PNG and JPEG images (chest X-ray datasets, screenshots, secondary captures)."""

    formats: ClassVar[tuple[ImageFormat, ...]] = (ImageFormat.PNG, ImageFormat.JPEG)

    def read_metadata(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> ImageMetadata:
        return _metadata(_open(data, max_decoded_bytes))

    def read(
        self,
        data: bytes,
        pseudonymizer: Pseudonymizer,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> tuple[ImageMetadata, Callable[[], PixelSource]]:
        # One header parse serves both; pixels are decoded only if the opener is called,
        # once however often it is called (the decoded image is closed after use).
        image = _open(data, max_decoded_bytes)
        return _metadata(image), functools.cache(lambda: RasterPixels(image))

    def open_pixels(
        self, data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    ) -> PixelSource:
        return RasterPixels(_open(data, max_decoded_bytes))


def _metadata(image: Image.Image) -> ImageMetadata:
    """Catalog fields from the header alone (no pixel is decoded)."""
    fmt = ImageFormat.PNG if image.format == "PNG" else ImageFormat.JPEG
    bits = 16 if image.mode in _GREY_16_MODES else _MODE_BITS.get(image.mode, 8)
    if fmt is ImageFormat.PNG and image.mode == "I" and image.info.get("bitdepth"):
        bits = int(image.info["bitdepth"])
    attributes: dict[str, object] = {"mode": image.mode, "bit_depth": bits}
    dpi = image.info.get("dpi")
    if dpi:
        attributes["dpi"] = [float(value) for value in dpi]
    return ImageMetadata(
        format=fmt,
        rows=image.height,
        columns=image.width,
        bits_allocated=bits,
        bits_stored=bits,
        photometric="RGB" if image.mode in {"RGB", "RGBA", "P", "CMYK", "YCbCr"} else "L",
        dtype=_MODE_DTYPES.get(image.mode, "int32" if image.mode == "I" else "uint8"),
        attributes=attributes,
    )
