"""Where text is burned into pixels: PP-OCRv4's text detector, as rapidocr's wheel ships it.

Only the detector runs (a DB network, "Real-time Scene Text Detection with
Differentiable Binarization", Liao et al. 2020): it finds where text is and never
reads it, so no recognised patient name or date exists anywhere in radlake. Pre- and
post-processing follow rapidocr's ch_ppocr_det (resize to a multiple of 32, normalise
to [-1, 1], threshold the probability map, one box per connected region, unclip),
with numpy and OpenCV only. The model file is found inside the installed
rapidocr_onnxruntime package without importing it (rapidocr's __init__ loads the
recognition models too); nothing is downloaded.

onnxruntime and cv2 are imported here only, with an install hint when missing.

    RadlakeError
    └── TextDetectorUnavailable(RadlakeError, ImportError)
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from radlake.errors import RadlakeError, RenderError

INSTALL_HINT = "pip install 'radlake[deid]'"
DETECTOR_PACKAGE = "rapidocr_onnxruntime"
DETECTOR_FILE = Path("models", "ch_PP-OCRv4_det_infer.onnx")

# rapidocr's Det settings (config.yaml), kept except where noted.
PIXEL_THRESHOLD = 0.3  # a pixel is text when the DB probability passes this
# A region is text when its mean probability passes this. rapidocr's 0.5 is kept:
# recall first (a missed name is a leak, a false box costs pixels). Burned-in lines
# on the deid-data and pydicom ultrasounds score 0.60-0.88, but false regions on
# anatomy score 0.52-0.86 too, so no threshold separates them; MAX_LINE_HEIGHT does.
BOX_THRESHOLD = 0.5
UNCLIP_RATIO = 1.6  # how far a region grows past its core (DB's shrink ratio inverted)
MAX_CANDIDATES = 1000
MIN_BOX_SIDE = 3  # network pixels; smaller regions are noise (rapidocr's min_size)
# Not in rapidocr: a region whose short side (a line's height, after unclip) passes this
# share of the frame's short side is not a line of type. Measured on the deid-data
# and pydicom ultrasounds, the cat and pydicom radiographs and the 104 chest X-rays of
# ../shared/data: burned-in lines, lead markers and figure letters measure 0.012-0.077
# (ultrasound lines 0.019-0.041); the network also takes ribs over a lung, a spine, a
# shoulder or a drawing for text, and most of those regions measure 0.10-0.53.
MAX_LINE_HEIGHT = 0.1
# limit_type "min": a short side under 736 px is scaled up to it (small text in a
# 512 px frame becomes big enough for the network). A long side is scaled down to at
# most MAX_SIDE (rapidocr's max_side_len is 2000): a 3072 px radiograph runs at 2/3
# scale, where 12 px characters still measure 8 px, on less than half the pixels.
MIN_SIDE = 736
MAX_SIDE = 2048
THREADS = 2  # per session: detection runs beside ingest workers on shared CPUs
# Grey frames: the window's low end, a percentile, so that a padding value (CT -2000,
# a collimator border) does not squash the image; the high end is the maximum, since
# burned-in text is written at the top of the stored range and must stay the brightest.
LOW_PERCENTILE = 1.0


class TextDetectorUnavailable(RadlakeError, ImportError):
    """onnxruntime, OpenCV or rapidocr's detector model is not installed."""


@dataclass(frozen=True, slots=True)
class TextRegion:
    """A box around burned-in text, in the frame's own pixels (columns x, rows y),
    inclusive of the minimum and exclusive of the maximum, with its detector score."""

    x_min: int
    y_min: int
    x_max: int
    y_max: int
    score: float

    @property
    def area(self) -> int:
        return max(0, self.x_max - self.x_min) * max(0, self.y_max - self.y_min)


def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError:
        raise TextDetectorUnavailable(f"OpenCV is not installed: {INSTALL_HINT}") from None
    return cv2


def detector_model_path() -> Path:
    """The detector's ONNX file inside the installed rapidocr_onnxruntime package.

    Raises:
        TextDetectorUnavailable: the package or its model file is missing.
    """
    spec = importlib.util.find_spec(DETECTOR_PACKAGE)  # finds, never imports
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / DETECTOR_FILE
        if path.is_file():
            return path
    raise TextDetectorUnavailable(
        f"the text detector model ({DETECTOR_PACKAGE}/{DETECTOR_FILE.as_posix()}) "
        f"is not installed: {INSTALL_HINT}"
    )


@functools.cache
def load_detector() -> Any:
    """The detector's ONNX Runtime session (CPU, THREADS threads), built once per process.

    InferenceSession.run is thread-safe, so threads share it.

    Raises:
        TextDetectorUnavailable: onnxruntime or the model file is missing, or the
            model does not load.
    """
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:
        raise TextDetectorUnavailable(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    _cv2()  # fail here, once, rather than on the first image
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are not ours to show
    try:
        return onnxruntime.InferenceSession(
            str(detector_model_path()), options, providers=["CPUExecutionProvider"]
        )
    except (RuntimeError, ValueError) as exc:  # onnxruntime's Fail/InvalidGraph errors
        raise TextDetectorUnavailable(f"the text detector model does not load: {exc}") from exc


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Window any numeric array into 0..255 (uint8 passes unchanged): from the
    LOW_PERCENTILE-th percentile to the maximum, non-finite values at 0."""
    if values.dtype == np.uint8:
        return values
    data = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(np.percentile(data, LOW_PERCENTILE)), float(data.max())
    if high <= low:  # a flat frame: nothing to see, no text
        return np.zeros(data.shape, np.uint8)
    scaled = (np.clip(data, low, high) - low) * np.float32(255.0 / (high - low))
    out: np.ndarray = np.rint(scaled).astype(np.uint8)
    return out


def detector_picture(pixels: np.ndarray) -> np.ndarray:
    """The frame as the network was trained on it: (rows, columns, 3) uint8 BGR.

    Raises:
        RenderError: not a 2-D frame nor an (rows, columns, 3) RGB frame.
    """
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        grey = to_uint8(pixels)
        return np.repeat(grey[..., np.newaxis], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        # PaddleOCR trains on cv2.imread's BGR order.
        return np.ascontiguousarray(to_uint8(pixels)[..., ::-1])
    raise RenderError(
        f"expected one 2-D frame or a (rows, columns, 3) RGB frame, got shape {pixels.shape}"
    )


def network_size(rows: int, columns: int) -> tuple[int, int]:
    """(rows, columns) the network sees: short side at least MIN_SIDE, long side at
    most MAX_SIDE, each a multiple of 32 (the network downsamples five times)."""
    ratio = max(1.0, MIN_SIDE / min(rows, columns))
    ratio = min(ratio, MAX_SIDE / max(rows, columns))
    return (
        max(32, round(rows * ratio / 32) * 32),
        max(32, round(columns * ratio / 32) * 32),
    )


def _probability_map(picture: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    rows, columns = network_size(*picture.shape[:2])
    resized = cv2.resize(picture, (columns, rows))
    # rapidocr's mean and std are 0.5 for every channel: x / 255 mapped to [-1, 1].
    batch = (resized.astype(np.float32) * np.float32(2 / 255) - np.float32(1))[np.newaxis]
    batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    session = load_detector()
    output = session.run(None, {session.get_inputs()[0].name: batch})[0]
    return np.asarray(output[0, 0], dtype=np.float32)


def _region_score(probability: np.ndarray, corners: np.ndarray) -> float:
    """Mean probability inside the box (rapidocr's box_score_fast)."""
    cv2 = _cv2()
    height, width = probability.shape
    x0, y0 = (max(0, math.floor(corners[:, i].min())) for i in (0, 1))
    x1 = min(width - 1, math.ceil(corners[:, 0].max()))
    y1 = min(height - 1, math.ceil(corners[:, 1].max()))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(corners - (x0, y0)).astype(np.int32)], 1)
    return float(cv2.mean(probability[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _short_side(corners: np.ndarray) -> float:
    """The shorter side of a rotated box given by its four corners, in order."""
    return float(
        min(np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[2] - corners[1]))
    )


def _regions(probability: np.ndarray, rows: int, columns: int) -> list[TextRegion]:
    """Boxes from the probability map, scaled to the original rows x columns."""
    cv2 = _cv2()
    text = (probability > PIXEL_THRESHOLD).astype(np.uint8)
    text = cv2.dilate(text, np.ones((2, 2), np.uint8))  # rapidocr's use_dilation
    contours, _ = cv2.findContours(text * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    scale_y, scale_x = rows / probability.shape[0], columns / probability.shape[1]
    found = []
    for contour in contours[:MAX_CANDIDATES]:
        center, (width, height), angle = cv2.minAreaRect(contour)
        if min(width, height) < MIN_BOX_SIDE:
            continue
        score = _region_score(probability, cv2.boxPoints((center, (width, height), angle)))
        if score < BOX_THRESHOLD:
            continue
        # DB's unclip: grow by area x ratio / perimeter. Offsetting a rectangle by a
        # distance and taking its minimum-area box, as rapidocr does with pyclipper,
        # gives the rectangle grown by that distance on every side.
        grow = width * height * UNCLIP_RATIO / (2 * (width + height))
        grown = (center, (width + 2 * grow, height + 2 * grow), angle)
        if min(grown[1]) < MIN_BOX_SIDE + 2:
            continue
        corners = cv2.boxPoints(grown) * (scale_x, scale_y)
        if _short_side(corners) > MAX_LINE_HEIGHT * min(rows, columns):
            continue
        x_min = max(0, math.floor(corners[:, 0].min()))
        y_min = max(0, math.floor(corners[:, 1].min()))
        x_max = min(columns, math.ceil(corners[:, 0].max()) + 1)
        y_max = min(rows, math.ceil(corners[:, 1].max()) + 1)
        if x_max - x_min > MIN_BOX_SIDE and y_max - y_min > MIN_BOX_SIDE:
            found.append(TextRegion(x_min, y_min, x_max, y_max, round(score, 4)))
    return sorted(found, key=lambda region: (region.y_min, region.x_min))


def detect_text(pixels: np.ndarray) -> list[TextRegion]:
    """Boxes around the text burned into one frame, top to bottom.

    pixels is one 2-D frame of any numeric dtype (windowed to 8 bits first: see
    to_uint8) or an (rows, columns, 3) RGB frame.

    Raises:
        TextDetectorUnavailable: onnxruntime, OpenCV or the model is not installed.
        RenderError: pixels is not one 2-D or RGB frame.
    """
    picture = detector_picture(pixels)
    rows, columns = picture.shape[:2]
    if rows == 0 or columns == 0:
        return []
    return _regions(_probability_map(picture), rows, columns)
