"""The input contract of a model: how a stored image becomes its input tensor, and
how a box in that tensor goes back to the stored image's pixels.

Letterbox and stretch are formats.coords.ResizeTransform (modes "pad" and
"stretch"), so the geometry, and its exact inverse, is the one exports use: the
content rectangle has whole-pixel sides, is centred with the odd pixel of padding
on the right/bottom (as Ultralytics' letterbox), and boxes map with the exact scale
of that rectangle. The padding is `pad_value` grey (114 for YOLO) rather than the
black of exports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from radlake.formats.coords import ResizeTransform
from radlake.inference.errors import InferenceError

ResizeKind = Literal["letterbox", "stretch"]
RESIZE_KINDS: tuple[ResizeKind, ...] = ("letterbox", "stretch")
MAX_INPUT_SIDE = 8192
CONTRACT_KEYS = frozenset({"size", "resize", "channels", "scale", "mean", "std", "pad_value"})


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InferenceError(f"expected a finite number for contract {name}, got {value!r:.40}")
    return float(value)


@dataclass(frozen=True, slots=True)
class InputContract:
    """size x size input, NCHW float32: ((pixel * scale) - mean) / std per channel.

    Raises (on construction):
        InferenceError: a field is out of range (the message names it).
    """

    size: int
    resize: ResizeKind = "letterbox"
    channels: int = 3
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    pad_value: int = 114

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise InferenceError(f"expected an integer input size, got {self.size!r:.40}")
        if not 1 <= self.size <= MAX_INPUT_SIDE:
            raise InferenceError(f"expected an input size in 1..{MAX_INPUT_SIDE}, got {self.size}")
        if self.resize not in RESIZE_KINDS:
            raise InferenceError(f"expected resize letterbox or stretch, got {self.resize!r:.40}")
        if self.channels not in (1, 3):
            raise InferenceError(f"expected 1 or 3 input channels, got {self.channels!r:.40}")
        if _number("scale", self.scale) <= 0:
            raise InferenceError(f"expected a positive scale, got {self.scale}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise InferenceError(
                    f"expected 1 or {self.channels} {name} values, got {len(values)}"
                )
            for value in values:
                _number(name, value)
        if any(value <= 0 for value in self.std):
            raise InferenceError(f"expected positive std values, got {list(self.std)}")
        if isinstance(self.pad_value, bool) or self.pad_value not in range(256):
            raise InferenceError(f"expected a pad value in 0..255, got {self.pad_value!r:.40}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputContract:
        """A contract from its JSON form: {"size": [H, W] or S, "resize", "channels",
        "scale", "mean", "std", "pad_value"}; missing keys take the YOLO defaults.

        Raises:
            InferenceError: an unknown key, a non-square size or a bad value.
        """
        unknown = sorted(set(data) - CONTRACT_KEYS)
        if unknown:
            raise InferenceError(
                f"unknown contract keys {unknown[:5]}; expected some of {sorted(CONTRACT_KEYS)}"
            )
        values: dict[str, Any] = {}
        if "size" in data:
            values["size"] = square_size(data["size"])
        for key in ("resize", "channels", "pad_value"):
            if key in data:
                values[key] = data[key]
        if "scale" in data:
            values["scale"] = _number("scale", data["scale"])
        for key in ("mean", "std"):
            if key in data:
                given = data[key]
                items = given if isinstance(given, list | tuple) else [given]
                values[key] = tuple(_number(key, value) for value in items)
        if "size" not in values:
            raise InferenceError("the contract has no input size: give one (e.g. --size 640)")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (what model_version.contract holds)."""
        return {
            "size": [self.size, self.size],
            "resize": self.resize,
            "channels": self.channels,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "pad_value": self.pad_value,
        }

    def transform(self, width: int, height: int) -> ResizeTransform:
        """The map from a width x height stored image onto the model's input."""
        mode: Literal["pad", "stretch"] = "pad" if self.resize == "letterbox" else "stretch"
        return ResizeTransform(width, height, self.size, mode)


def square_size(value: object) -> int:
    """S from S, [S] or [S, S] (ONNX metadata and contracts write both forms).

    Raises:
        InferenceError: not a positive integer size, or a non-square [H, W].
    """
    given = list(value) if isinstance(value, list | tuple) else [value]
    items: list[int] = [
        item for item in given if isinstance(item, int) and not isinstance(item, bool)
    ]
    if not items or len(items) > 2 or len(items) != len(given):
        raise InferenceError(f"expected an input size S or [H, W], got {value!r:.40}")
    if len(set(items)) != 1:
        # ResizeTransform (the exports' exact geometry) is square; so is every
        # Ultralytics export at its default imgsz.
        raise InferenceError(f"expected a square input size, got {items[0]}x{items[1]} (H x W)")
    return items[0]


def preprocess(image: Image.Image, contract: InputContract) -> tuple[np.ndarray, ResizeTransform]:
    """The CHW float32 input of one picture (at its stored size), and its transform."""
    transform = contract.transform(*image.size)
    grey = image.mode in ("L", "I;16", "I", "F") or contract.channels == 1
    # A grey picture is resized once and shared by the channels (3x less resampling).
    picture = image.convert("L" if grey else "RGB")
    size = (transform.content_width, transform.content_height)
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    content = np.asarray(picture, dtype=np.uint8).reshape(size[1], size[0], -1)
    # uint8 -> normalised float through a 256-entry table per channel: one lookup per
    # value instead of a multiply, a subtract and a divide.
    levels = np.arange(256, dtype=np.float32)[:, None] * np.float32(contract.scale)
    mean = np.asarray(contract.mean, dtype=np.float32)
    std = np.asarray(contract.std, dtype=np.float32)
    table = np.broadcast_to((levels - mean) / std, (256, contract.channels)).T
    values = np.empty((contract.channels, contract.size, contract.size), dtype=np.float32)
    values[...] = table[:, contract.pad_value, None, None]
    top, left = transform.offset_y, transform.offset_x
    for channel in range(contract.channels):
        plane = content[:, :, channel if content.shape[2] > 1 else 0]
        values[channel, top : top + size[1], left : left + size[0]] = table[channel][plane]
    return values, transform


def to_stored(boxes: np.ndarray, transform: ResizeTransform) -> np.ndarray:
    """Boxes [K, 4] (x_min, y_min, x_max, y_max in input pixels) in the stored image's
    pixels: ResizeTransform.invert, vectorised (clip to the content rectangle, then
    undo offset and scale)."""
    boxes = boxes.astype(np.float64, copy=False)
    x_min = np.clip(boxes[:, 0] - transform.offset_x, 0.0, transform.content_width)
    y_min = np.clip(boxes[:, 1] - transform.offset_y, 0.0, transform.content_height)
    x_max = np.minimum(np.maximum(boxes[:, 2] - transform.offset_x, x_min), transform.content_width)
    y_max = np.minimum(
        np.maximum(boxes[:, 3] - transform.offset_y, y_min), transform.content_height
    )
    return np.stack(
        [
            x_min / transform.scale_x,
            y_min / transform.scale_y,
            x_max / transform.scale_x,
            y_max / transform.scale_y,
        ],
        axis=1,
    )
