"""PNG and JPEG: read with Pillow; 16-bit greyscale is kept at full depth."""

from __future__ import annotations

import io
import warnings
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from radlake.domain import ImageFormat, ImageMetadata
from radlake.errors import CorruptImage
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.pixels import PixelSource, Window
from radlake.imaging.reader import ImageReader

# Pillow mode -> bits per sample of the stored values.
_MODE_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8}
_GREY_16_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# Decompression bombs are refused by Pillow; a 1-gigapixel chest film does not exist.
Image.MAX_IMAGE_PIXELS = 16384 * 16384


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"undecodable raster image: {exc}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CorruptImage("image larger than 268 megapixels: refused as a bomb") from exc
    return image


class RasterPixels(PixelSource):
    """A single PNG/JPEG frame."""

    def __init__(self, image: Image.Image) -> None:
        mode = image.mode
        if mode in _GREY_16_MODES:
            self._array = np.asarray(image).astype(np.float32)
            self._window: Window | None = None  # 16-bit: robust window, never clip to 8 bits
        elif mode in {"L", "LA", "1"}:
            self._array = np.asarray(image.convert("L")).astype(np.float32)
            # 8-bit greyscale is already a display image: show it unchanged.
            self._window = Window(127.5, 255.0)
        elif mode == "F":
            self._array = np.asarray(image).astype(np.float32)
            self._window = None
        else:
            self._array = np.asarray(image.convert("RGB"))
            self._window = None
            self.is_color = True

    def frame(self, index: int) -> np.ndarray:
        return self._array

    def header_voi(self, index: int) -> Window | None:
        return self._window


class RasterReader(ImageReader):
    """PNG and JPEG images (chest X-ray datasets, screenshots, secondary captures)."""

    formats: ClassVar[tuple[ImageFormat, ...]] = (ImageFormat.PNG, ImageFormat.JPEG)

    def read_metadata(self, data: bytes, pseudonymizer: Pseudonymizer) -> ImageMetadata:
        image = _open(data)
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
            dtype=str(np.asarray(image).dtype) if image.mode in _GREY_16_MODES else "uint8",
            attributes=attributes,
        )

    def open_pixels(self, data: bytes) -> PixelSource:
        return RasterPixels(_open(data))
