"""Intensity statistics of a rendered picture: the dashboard's image drift features.

They are taken from the stored preview (8-bit, windowed as a reader would see it), so
they compare across formats and modalities the way a model trained on renditions sees
the images; raw stored values (HU, detector counts) would not. Ingest keeps them in the
image's attributes under `INTENSITY_KEY`, which costs one pass over at most 512 x 512
pixels per input.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

INTENSITY_KEY = "intensity"
INTENSITY_FEATURES = ("mean", "std", "p05", "p50", "p95")


def intensity_stats(picture: Image.Image) -> dict[str, float]:
    """Mean, standard deviation and the 5th, 50th and 95th percentiles of the picture's
    grey levels (colour pictures are converted to luminance first), rounded to 0.001."""
    values = np.asarray(picture.convert("L") if picture.mode != "L" else picture, np.float64)
    p05, p50, p95 = np.percentile(values, (5, 50, 95))
    found = (values.mean(), values.std(), p05, p50, p95)
    return {name: round(float(v), 3) for name, v in zip(INTENSITY_FEATURES, found, strict=True)}
