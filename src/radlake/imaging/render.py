"""Rendering to 8-bit pictures, in the order PS3.3 C.11 prescribes.

modality LUT (done by the reader) -> VOI: the requested window, else the header's
VOI LUT or first window centre/width, else a robust percentile window -> MONOCHROME1
inversion. The window actually used is returned, so a 16-bit image is never squeezed
into 8 bits without saying how.

A greyscale picture that is smaller than its source (every preview of a CR, a DX
or a large MR) is area-averaged first, on the stored values in float32, and the
linear rescale, the window and the inversion then run on the small array: the two
steps commute with averaging for a linear modality LUT, and a non-linear Modality
LUT Sequence is applied by the reader before (PixelSource.stored_frame). No
full-size float64 array is made; a 1955 x 1841 CR previews in about a quarter of the
time it took when the full-resolution array was windowed first (benchmarks/render.py).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from radlake.domain import Plane
from radlake.errors import RenderError
from radlake.imaging.pixels import PixelSource, Window, decoding

PREVIEW_SIZE = 512
PERCENTILES = (0.5, 99.5)
# A strided sample this large estimates the percentiles as well as every value does.
PERCENTILE_SAMPLE = 1_000_000


@dataclass(frozen=True, slots=True)
class Rendered:
    """An 8-bit picture and how it was made."""

    image: Image.Image
    window: Window | None
    index: int
    plane: Plane

    def encode(self, fmt: str = "png") -> bytes:
        """The picture as PNG or JPEG bytes."""
        buffer = io.BytesIO()
        if fmt == "png":
            # Level 1: previews are written at ingest rate; size matters less than time.
            self.image.save(buffer, format="PNG", compress_level=1)
        elif fmt in ("jpeg", "jpg"):
            self.image.save(buffer, format="JPEG", quality=90)
        else:
            raise RenderError(f"expected an output format png or jpeg, got {fmt!r}")
        return buffer.getvalue()


def percentile_window(values: np.ndarray) -> Window:
    """A window over the 0.5-99.5 percentiles of the finite values (robust to outliers)."""
    flat = values.reshape(-1)
    if flat.size > PERCENTILE_SAMPLE:  # stride first: no full-size mask or copy
        flat = flat[:: flat.size // PERCENTILE_SAMPLE]
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return Window(0.0, 1.0)
    low, high = np.percentile(finite, PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return Window(float(low), 1.0)
    return Window((float(low) + float(high)) / 2, float(high) - float(low))


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Linear VOI (PS3.3 C.11.2.1.3.2, LINEAR_EXACT) to [0, 1]; NaN becomes 0."""
    low = window.center - window.width / 2
    with np.errstate(over="ignore", invalid="ignore"):  # extreme data saturate, by design
        scaled = (values.astype(np.float64) - low) / window.width
        return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)


# numpy dtypes Pillow wraps without a copy or converts itself (L, I;16, I, F).
_PILLOW_DTYPES = frozenset(np.dtype(name) for name in ("u1", "<u2", "<i4", "<f4"))
# Output rows shrunk at a time: only a strip of the source is ever held as floats.
SHRINK_STRIP_ROWS = 64


def _shrink(values: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Values area-averaged down to target (width, height), as float32.

    Pillow's box filter weighs every source pixel by its overlap with the output
    pixel, so any ratio is an exact area average. It runs on strips of source rows
    (the box coordinates keep the overlaps exact at strip edges), so the float copy
    of a 16000 x 16000 image is a strip, not 1 GB.
    """
    width, height = target
    source_height, source_width = values.shape
    scale = source_height / height
    out = np.empty((height, width), np.float32)
    for first in range(0, height, SHRINK_STRIP_ROWS):
        last = min(height, first + SHRINK_STRIP_ROWS)
        top, bottom = first * scale, last * scale
        start, stop = math.floor(top), min(source_height, math.ceil(bottom))
        rows = values[start:stop]
        if rows.dtype not in _PILLOW_DTYPES:
            rows = rows.astype(np.float32)
        strip = Image.fromarray(np.ascontiguousarray(rows))
        if strip.mode != "F":
            strip = strip.convert("F")
        box = (0.0, top - start, float(source_width), bottom - start)
        out[first:last] = np.asarray(strip.resize((width, last - first), Image.Resampling.BOX, box))
    return out


def _rescaled(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    out = values.astype(np.float32)  # a copy: the source's own array is left alone
    if slope != 1:
        out *= np.float32(slope)
    if intercept != 0:
        out += np.float32(intercept)
    return out


def _greyscale_values(
    source: PixelSource, plane: Plane, index: int | None, aspect: float, size: int | None
) -> tuple[np.ndarray, int, tuple[int, int] | None]:
    """Modality values of the picture, shrunk to the output size when it is smaller.

    Returns the values (float32), the chosen index and the size still to reach by
    enlarging (None when there is nothing left to do).
    """
    if plane is Plane.AXIAL:
        chosen = source.frame_count // 2 if index is None else index
        values, slope, intercept = source.stored_frame(chosen)
    else:
        (values, chosen), slope, intercept = _plane_image(source, plane, index), 1.0, 0.0
    target = _output_size(values.shape[:2], aspect, size)
    height, width = values.shape
    if target is None or target == (width, height):
        return _rescaled(values, slope, intercept), chosen, None
    if target[0] <= width and target[1] <= height:
        # Area average first, then rescale: the two commute, and the rescale, the
        # window and the inversion then run on the small array.
        return _rescaled(_shrink(values, target), slope, intercept), chosen, None
    return _rescaled(values, slope, intercept), chosen, target


def _plane_image(source: PixelSource, plane: Plane, index: int | None) -> tuple[np.ndarray, int]:
    if plane is Plane.AXIAL:
        chosen = source.frame_count // 2 if index is None else index
        return source.frame(chosen), chosen
    if source.is_color:
        raise RenderError("expected a greyscale stack for coronal or sagittal planes")
    volume = source.volume()
    axis = 1 if plane is Plane.CORONAL else 2
    size = volume.shape[axis]
    chosen = size // 2 if index is None else index
    if not 0 <= chosen < size:
        raise RenderError(f"expected a {plane.value} slice in 0..{size - 1}, got {chosen}")
    picture = volume[:, chosen, :] if axis == 1 else volume[:, :, chosen]
    return (picture[::-1] if source.bottom_up else picture), chosen


def _output_size(shape: tuple[int, int], aspect: float, size: int | None) -> tuple[int, int] | None:
    """(width, height) with true physical aspect (row mm / column mm) and longest side size."""
    height_units, width_units = shape[0] * aspect, float(shape[1])
    if size is None:
        if aspect == 1.0:
            return None
        size = max(shape)
    scale = size / max(height_units, width_units)
    return max(1, round(width_units * scale)), max(1, round(height_units * scale))


MAX_ASPECT = 100.0  # beyond this a header's spacing is a typo, not a real pixel shape


def _aspect(source: PixelSource, plane: Plane) -> float:
    """Row mm / column mm of the picture; 1 when the spacing is unknown or absurd
    (NaN, infinite, zero, negative or 1e300 in a header must not break a render)."""
    if source.spacing is None:
        return 1.0
    between, row_mm, col_mm = source.spacing
    with np.errstate(all="ignore"):
        if plane is Plane.AXIAL:
            aspect = row_mm / col_mm if col_mm else math.nan
        else:
            across = col_mm if plane is Plane.CORONAL else row_mm
            aspect = between / across if across else math.nan
    if not (math.isfinite(aspect) and 1 / MAX_ASPECT <= aspect <= MAX_ASPECT):
        return 1.0
    return float(aspect)


def render(
    source: PixelSource,
    *,
    size: int | None = PREVIEW_SIZE,
    index: int | None = None,
    plane: Plane = Plane.AXIAL,
    window: Window | None = None,
    true_aspect: bool = True,
) -> Rendered:
    """Render one frame/slice (the middle one by default) or an orthogonal plane.

    true_aspect resamples non-square pixels to their physical aspect; exports turn
    it off so the picture keeps the stored rows x columns its boxes refer to.

    Raises:
        RenderError: the slice is out of range, or the request does not fit the image.
        ImageError: the pixel data cannot be decoded.
    """
    if size is not None and not 1 <= size <= 8192:
        raise RenderError(f"expected a size in 1..8192, got {size}")
    aspect = _aspect(source, plane) if true_aspect else 1.0
    used: Window | None = None
    with decoding("unrenderable pixel data"):
        if source.is_color:
            values, chosen = _plane_image(source, plane, index)
            rgb = np.ascontiguousarray(values[..., :3]).astype(np.uint8)
            image = Image.fromarray(rgb, "RGB")
            target = _output_size(values.shape[:2], aspect, size)
        else:
            values, chosen, target = _greyscale_values(source, plane, index, aspect, size)
            voi = window if window is not None else source.header_voi(chosen)
            if voi is None:
                voi = percentile_window(values)
            if isinstance(voi, Window):
                used = voi
                unit = apply_window(values, voi)
            else:
                unit = np.nan_to_num(np.clip(voi(values), 0.0, 1.0), nan=0.0)
            grey = np.round(unit * 255.0).astype(np.uint8)
            if source.invert:
                grey = 255 - grey
            image = Image.fromarray(grey, "L")
        if target is not None and target != image.size:  # colour, or enlarging
            image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return Rendered(image=image, window=used, index=chosen, plane=plane)
