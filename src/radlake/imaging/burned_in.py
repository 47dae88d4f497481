"""Burned-in text in DICOM pixels: find it and blank it (issue 13; PS3.15 E.1.1,
Clean Pixel Data Option, "any information burned in to the pixel data ... shall be
removed").

check_and_blank decodes a dataset's pixels under the decode budget, looks for text
with the detector (burned_in_detector.py) on a few frames, sets every region to the
image's black on every frame, and rewrites Pixel Data uncompressed (Explicit VR
Little Endian). The verdict is one of:

- clean: no text found (or no pixels at all);
- blanked: text found and set to black; the regions blanked are listed;
- withheld: text suspected but not safely removable (it covers too much of the
  image, or the pixels cannot be rewritten), or the pixels could not be checked (they
  do not decode, are over the budget, or the detector is not installed). The dataset
  is then left as it was; its pixels must reach no one.

A reason never carries the text found: nothing here reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from radlake.errors import ImageError, NoPixelData, RenderError
from radlake.imaging.budget import DEFAULT_MAX_DECODED_BYTES
from radlake.imaging.burned_in_detector import TextDetectorUnavailable, TextRegion, detect_text
from radlake.imaging.dicom_dataset import as_number, get_text, get_value, quiet
from radlake.imaging.dicom_pixels import DicomPixels
from radlake.imaging.pixels import safe_message

__all__ = ["MAX_TEXT_SHARE", "PixelCheck", "TextRegion", "check_and_blank", "detect_text"]

# Text over this share of the frame means a report, worksheet or screen capture
# rather than an image with a caption: blanking it would leave nothing worth sharing
# (and a detector that merges lines into blocks may be missing more). The deid-data
# ultrasound captures are 4-9 % text (a header band and a side panel).
MAX_TEXT_SHARE = 0.3
# Pixels added around each box before blanking, for anti-aliased or JPEG-smeared glyph
# edges; on the deid-data stills every glyph pixel is inside the boxes without it.
MARGIN = 2
# Regions found on different frames that overlap this much are one region.
SAME_REGION_IOU = 0.5
# Detection passes: after the text found is blanked the detector looks once more,
# since a line's neighbours change what the network sees (on the deid-data
# ultrasounds the second pass finds a zoom label and an icon beside blanked lines,
# and an ECG trace). A third pass found nothing more there but a false region in a
# colour Doppler box, so two.
PASSES = 2
_PALETTE_KEYWORDS = (
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
)

Status = Literal["clean", "blanked", "withheld"]


@dataclass(frozen=True, slots=True)
class PixelCheck:
    """The pixel check's verdict on one dataset: the regions blanked (blanked) or
    suspected (withheld), and for withheld a one-line reason with no patient data."""

    status: Status
    regions: tuple[TextRegion, ...] = ()
    reason: str | None = None


class _NotBlankable(Exception):
    """Text was found but these pixels cannot be rewritten safely."""


def sample_frames(count: int) -> list[int]:
    """Frames the detector looks at: the first, middle and last.

    Burned-in overlays are drawn by the scanner at fixed places on every frame of a
    cine loop (the header band, the side panel), so three frames find them; a value
    that changes per frame (a clock, a frame counter) stays in the same place.
    """
    return sorted({0, count // 2, count - 1})


def _detection_frame(source: DicomPixels, index: int) -> np.ndarray:
    if source.is_color:
        return np.array(source.frame(index), copy=True)  # blanked between passes
    # Stored values: 8-bit frames (ultrasound, secondary capture) reach the detector as
    # drawn, and a linear rescale would not change the window (to_uint8) anyway.
    frame = np.array(source.stored_frame(index)[0], copy=True)
    # PS3.3 C.7.6.3.1.2: MONOCHROME1 shows its lowest value white; invert so the
    # detector sees the picture a reader sees.
    return -frame.astype(np.float32) if source.invert else frame


def _find_text(pictures: list[np.ndarray]) -> list[TextRegion]:
    """Every region found on the pictures in up to PASSES passes, each pass on the
    pictures with what was found so far blanked (the pictures are changed)."""
    found: list[TextRegion] = []
    for _ in range(PASSES):
        new = [region for picture in pictures for region in detect_text(picture)]
        if not new:
            break
        found += new
        for picture in pictures:
            rows, columns = picture.shape[:2]
            black = 0 if picture.ndim == 3 else picture.min()
            for region in new:
                r = _with_margin(region, rows, columns)
                picture[r.y_min : r.y_max, r.x_min : r.x_max] = black
    return merge_regions(found)


def _overlaps(a: TextRegion, b: TextRegion) -> float:
    """Intersection over union of two boxes."""
    width = min(a.x_max, b.x_max) - max(a.x_min, b.x_min)
    height = min(a.y_max, b.y_max) - max(a.y_min, b.y_min)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.area + b.area - inter)


def merge_regions(regions: list[TextRegion]) -> list[TextRegion]:
    """One region per place: boxes from several frames that overlap by SAME_REGION_IOU
    or more become the box around both (with the higher score)."""
    kept: list[TextRegion] = []
    for region in sorted(regions, key=lambda r: -r.area):
        for i, other in enumerate(kept):
            if _overlaps(region, other) >= SAME_REGION_IOU:
                kept[i] = TextRegion(
                    min(region.x_min, other.x_min),
                    min(region.y_min, other.y_min),
                    max(region.x_max, other.x_max),
                    max(region.y_max, other.y_max),
                    max(region.score, other.score),
                )
                break
        else:
            kept.append(region)
    return sorted(kept, key=lambda r: (r.y_min, r.x_min))


def _with_margin(region: TextRegion, rows: int, columns: int) -> TextRegion:
    return TextRegion(
        max(0, region.x_min - MARGIN),
        max(0, region.y_min - MARGIN),
        min(columns, region.x_max + MARGIN),
        min(rows, region.y_max + MARGIN),
        region.score,
    )


def text_share(regions: list[TextRegion], rows: int, columns: int) -> float:
    """The share of a rows x columns frame that the regions cover (overlaps once)."""
    covered = np.zeros((rows, columns), bool)
    for r in regions:
        covered[r.y_min : r.y_max, r.x_min : r.x_max] = True
    return float(covered.mean()) if covered.size else 0.0


def _stored_frames(ds: Dataset, source: DicomPixels) -> tuple[np.ndarray, str, int]:
    """Every frame as it will be written: (frames, rows, columns[, 3]), the Photometric
    Interpretation and the Bits Stored to write it with.

    Colour comes out as 8-bit RGB whatever it was stored as (YBR_FULL_422 from JPEG,
    YBR_ICT from JPEG 2000, PALETTE COLOR): pydicom's decoders convert to RGB, and
    rewriting YBR would mean resampling chroma. Greyscale keeps its stored values.
    """
    if source.is_color:
        frames = np.stack([source.frame(i) for i in range(source.frame_count)])
        return frames, "RGB", 8
    if "ModalityLUTSequence" in ds:
        # stored_frame then gives the LUT's output, not the stored values (C.11.1).
        raise _NotBlankable("a Modality LUT Sequence hides the stored values")
    frames = np.stack([source.stored_frame(i)[0] for i in range(source.frame_count)])
    photometric = get_text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    bits_stored = as_number(get_value(ds, "BitsStored"), int) or frames.dtype.itemsize * 8
    return frames, photometric, int(bits_stored)


def _background(frames: np.ndarray, photometric: str) -> int:
    """The value shown black: the lowest stored value (the highest for MONOCHROME1)."""
    if frames.ndim == 4:  # RGB
        return 0
    return int(frames.max() if photometric == "MONOCHROME1" else frames.min())


def _rewrite(ds: Dataset, frames: np.ndarray, photometric: str, bits_stored: int) -> None:
    """Replace Pixel Data with frames, uncompressed, Explicit VR Little Endian."""
    if ds.original_encoding[1] is False:
        # pydicom writes a big-endian object read from a file only as big endian, and
        # its OW values (LUTs, overlays) would need swapping: not done here.
        raise _NotBlankable("big-endian transfer syntax (retired, PS3.5 A.3)")
    was_palette = get_text(ds, "PhotometricInterpretation") == "PALETTE COLOR"
    arr = frames if "NumberOfFrames" in ds else frames[0]
    meta = ds.file_meta
    before = meta.get("TransferSyntaxUID")
    # One syntax for every blanked object (issue 13), set first: set_pixel_data
    # would keep Implicit VR or Deflated, and fails on syntaxes pydicom does not know
    # (Deflated Image Frame Compression).
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        with quiet():
            ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
    except (ValueError, AttributeError, NotImplementedError) as exc:
        if before is not None:  # validation failed: nothing else was changed
            meta.TransferSyntaxUID = before
        raise _NotBlankable(safe_message(exc)) from exc
    if was_palette:  # now RGB: the palette no longer applies (PS3.3 C.7.6.3.1.5)
        for keyword in _PALETTE_KEYWORDS:
            if keyword in ds:
                del ds[keyword]


def check_and_blank(
    ds: Dataset, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> PixelCheck:
    """Look for burned-in text in ds's pixels and blank it in place.

    The detector runs on the first, middle and last frame (sample_frames); the union
    of the regions found is set to black on every frame, each region grown by MARGIN
    pixels, and Pixel Data is rewritten uncompressed in Explicit VR Little Endian
    (colour as RGB, planar configuration 0). Other elements are left to the caller
    (Burned In Annotation, the de-identification method codes, the SOP Instance UID).
    When the verdict is clean or withheld, ds is not changed.

    Returns:
        The verdict (PixelCheck). A bad, undecodable or oversized image and a missing
        detector are withheld with their reason, never raised.

    Raises:
        MemoryError: this machine ran out of memory (a fault, not a verdict).
    """
    try:
        source = DicomPixels(ds, max_decoded_bytes=max_decoded_bytes)
        pictures = [_detection_frame(source, i) for i in sample_frames(source.frame_count)]
        found = _find_text(pictures)
    except NoPixelData:
        return PixelCheck("clean")  # nothing drawn, nothing to leak
    except (ImageError, RenderError, TextDetectorUnavailable) as exc:
        # ImageError messages are safe for logs by contract (errors.py).
        return PixelCheck("withheld", (), f"pixels could not be checked: {exc}")
    if not found:
        return PixelCheck("clean")
    rows, columns = pictures[0].shape[:2]
    regions = [_with_margin(r, rows, columns) for r in found]
    share = text_share(regions, rows, columns)
    if share > MAX_TEXT_SHARE:
        reason = f"text covers {share:.0%} of the image (over {MAX_TEXT_SHARE:.0%})"
        return PixelCheck("withheld", tuple(regions), reason)
    try:
        frames, photometric, bits_stored = _stored_frames(ds, source)
        background = _background(frames, photometric)
        for r in regions:
            frames[:, r.y_min : r.y_max, r.x_min : r.x_max] = background
        _rewrite(ds, frames, photometric, bits_stored)
    except (ImageError, RenderError) as exc:
        return PixelCheck("withheld", tuple(regions), f"pixels could not be rewritten: {exc}")
    except _NotBlankable as exc:
        return PixelCheck("withheld", tuple(regions), f"text found, cannot blank: {exc}")
    return PixelCheck("blanked", tuple(regions))
