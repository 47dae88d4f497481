"""Rendering to 8-bit pictures, in the order PS3.3 C.11 prescribes.

modality LUT (done by the reader) -> VOI: the requested window, else the header's
VOI LUT or first window centre/width, else a robust percentile window -> MONOCHROME1
inversion. The window actually used is returned, so a 16-bit image is never squeezed
into 8 bits without saying how.

Greyscale pictures that change size are resampled first, in float32 modality values
(an area average when shrinking), and windowed after, on the small array: a 2000 x
2000 CR becomes a 512-px preview without a full-size float64 array (the modality LUT,
non-linear or not, is already applied by the reader, so averaging is done on the
values it yields).
"""

from __future__ import annotations

import io
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


def _resample(values: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Modality values resized to target (width, height), in float32.

    Shrinking is an area average (Pillow's box filter, exact for any ratio);
    enlarging is bilinear, as the 8-bit path does it.
    """
    picture = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), "F")
    width, height = target
    shrinking = width <= picture.width and height <= picture.height
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(picture.resize(target, method))


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


def _aspect(source: PixelSource, plane: Plane) -> float:
    if source.spacing is None:
        return 1.0
    between, row_mm, col_mm = source.spacing
    if plane is Plane.AXIAL:
        return row_mm / col_mm
    return between / (col_mm if plane is Plane.CORONAL else row_mm)


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
    values, chosen = _plane_image(source, plane, index)
    aspect = _aspect(source, plane) if true_aspect else 1.0
    target = _output_size(values.shape[:2], aspect, size)
    used: Window | None = None
    with decoding("unrenderable pixel data"):
        if source.is_color:
            rgb = np.ascontiguousarray(values[..., :3]).astype(np.uint8)
            image = Image.fromarray(rgb, "RGB")
            if target is not None and target != image.size:
                image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        else:
            if target is not None and target != (values.shape[1], values.shape[0]):
                values = _resample(values, target)
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
    return Rendered(image=image, window=used, index=chosen, plane=plane)
