"""The pixel side of a reader: a stack of frames (or slices) with display hints.

A reader turns original bytes into a `PixelSource`; `render.py` turns a source into
an 8-bit picture. Values handed out are after the modality LUT (PS3.3 C.11.1), so a
window in CT Hounsfield units means what a radiologist expects.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from radlake.errors import CorruptImage, ImageError, RenderError

FloatArray = NDArray[np.float32] | NDArray[np.float64]
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def safe_message(exc: BaseException) -> str:
    """An exception's text fit for a quarantine reason, a log line or an HTTP answer."""
    # Decoder messages may quote element values; drop quoted text so no patient
    # data can reach a quarantine reason or a log line.
    text = _QUOTED.sub("'…'", str(exc))
    # Reprs such as <_io.BytesIO object at 0x7f...> say nothing to a person.
    text = _OBJECT_REPR.sub("the content", text).strip() or type(exc).__name__
    return text[:200]


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Report whatever a decoder, pydicom or numpy raises as CorruptImage("what: reason").

    ImageError and RenderError pass unchanged; MemoryError too (a fault of this
    machine, not of the input).
    """
    try:
        yield
    except (ImageError, RenderError, MemoryError):
        raise
    except Exception as exc:  # bad input must never surface as a traceback or a 500
        raise CorruptImage(f"{what}: {safe_message(exc)}") from exc
    except BaseException as exc:
        if not is_decoder_panic(exc):
            raise
        raise CorruptImage(f"{what}: the decoder failed ({safe_message(exc)})") from exc


def is_decoder_panic(exc: BaseException) -> bool:
    """A Rust decoder's panic (pylibjpeg-rle): pyo3 raises it as a BaseException."""
    return type(exc).__name__ == "PanicException"


@dataclass(frozen=True, slots=True)
class Window:
    """A linear VOI window: centre and width in modality units."""

    center: float
    width: float

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse "C,W" (e.g. "40,400").

        Raises:
            RenderError: not two finite numbers, or a width that is not positive.
        """
        parts = text.split(",")
        if len(parts) != 2:
            raise RenderError(f"expected a window as CENTER,WIDTH (e.g. 40,400), got {text[:40]!r}")
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise RenderError(f"expected two numbers CENTER,WIDTH, got {text[:40]!r}") from None
        if not (math.isfinite(center) and math.isfinite(width) and 1e-6 <= width <= 1e12):
            raise RenderError(
                f"expected a finite centre and a width in 1e-6..1e12, got {text[:40]!r}"
            )
        if abs(center) > 1e12:
            raise RenderError(f"expected a centre within +-1e12, got {center:g}")
        return cls(center, width)


# A header-defined VOI transform (a VOI LUT or a non-linear function) that maps
# modality values to [0, 1]; used when a plain Window cannot express it.
VoiTransform = Callable[[np.ndarray], FloatArray]


class PixelSource(ABC):
    """Frames of one image, decoded lazily; index 0 is the first frame or slice."""

    #: Number of frames (multi-frame DICOM) or slices (volumes); 1 for 2-D images.
    frame_count: int = 1
    #: PS3.3 C.7.6.3.1.2: MONOCHROME1 means the lowest value is displayed white.
    invert: bool = False
    #: True for RGB-like data, which is shown as is, without a VOI window.
    is_color: bool = False
    #: (between frames, rows, columns) in mm when known, for true-aspect planes.
    spacing: tuple[float, float, float] | None = None
    #: True when frame 0 is the bottom of the stack (volumes in RAS+): coronal and
    #: sagittal planes are flipped so that superior is up.
    bottom_up: bool = False

    @abstractmethod
    def frame(self, index: int) -> np.ndarray:
        """One frame: (rows, columns) modality values, or (rows, columns, 3) RGB."""

    def stored_frame(self, index: int) -> tuple[np.ndarray, float, float]:
        """One greyscale frame as stored, with the rescale (slope, intercept) that
        turns it into modality values (PS3.3 C.11.1.1.2).

        A linear rescale commutes with averaging, so a renderer may shrink the stored
        values first and rescale the small result. Sources whose modality LUT is not
        linear return their modality values with (1.0, 0.0).
        """
        return self.frame(index), 1.0, 0.0

    def volume(self) -> np.ndarray:
        """Every frame stacked as (frames, rows, columns); for orthogonal planes."""
        return np.stack([self.frame(i) for i in range(self.frame_count)])

    def header_voi(self, index: int) -> Window | VoiTransform | None:
        """The window or VOI transform the header asks for at this frame, if any."""
        return None
