"""What an ONNX file says about itself: Ultralytics' metadata_props (`names`,
`imgsz`, `task`) and radlake's own `radlake_contract` (written by its trainer).

Ultralytics writes `names` as a Python dict literal ({0: 'person', ...}): it is read
with ast.literal_eval, never eval, so a crafted file cannot run code.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from radlake.inference.errors import ModelFileError

DECODERS = ("yolov5", "yolov8", "boxes-scores-labels")
CONTRACT_PROP = "radlake_contract"
MAX_PROP_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What the file's metadata gives (None where it is silent)."""

    class_names: list[str] | None = None
    imgsz: object | None = None
    task: str | None = None
    contract: dict[str, Any] | None = None
    decoder: str | None = None


def _literal(name: str, text: str) -> Any:
    if len(text) > MAX_PROP_CHARS:
        raise ModelFileError(f"metadata {name} is too long ({len(text)} characters)")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ModelFileError(
            f"metadata {name} is not a Python literal ({type(exc).__name__})"
        ) from None


def class_names_from(value: object) -> list[str]:
    """Names in class-index order from {0: 'a', 1: 'b'} or ['a', 'b'].

    Raises:
        ModelFileError: not a list or a dict with indices 0..n-1, or names not text.
    """
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda key: (not isinstance(key, int), str(key)))
        if [key for key in keys if isinstance(key, int)] != list(range(len(value))):
            raise ModelFileError("metadata names must be indexed 0..n-1")
        names: Sequence[object] = [value[index] for index in range(len(value))]
    elif isinstance(value, list | tuple):
        names = value
    else:
        raise ModelFileError(
            f"expected class names as a list or a dict, got {type(value).__name__}"
        )
    if not names or not all(isinstance(name, str) and 0 < len(name) <= 100 for name in names):
        raise ModelFileError("expected class names of 1..100 characters each")
    if len(set(names)) != len(names):
        raise ModelFileError("class names repeat")
    return [str(name) for name in names]


def read_metadata(props: Mapping[str, str]) -> ModelMetadata:
    """Parse the metadata_props an ONNX file carries.

    Raises:
        ModelFileError: a prop is present but malformed.
    """
    names = class_names_from(_literal("names", props["names"])) if "names" in props else None
    imgsz = _literal("imgsz", props["imgsz"]) if "imgsz" in props else None
    task = props.get("task")
    contract: dict[str, Any] | None = None
    decoder: str | None = None
    if CONTRACT_PROP in props:
        try:
            parsed = json.loads(props[CONTRACT_PROP])
        except ValueError:
            raise ModelFileError(f"metadata {CONTRACT_PROP} is not JSON") from None
        if not isinstance(parsed, dict):
            raise ModelFileError(f"metadata {CONTRACT_PROP} is not a JSON object")
        decoder = parsed.pop("decoder", None)
        if decoder is not None and decoder not in DECODERS:
            raise ModelFileError(f"metadata decoder {decoder!r:.40} is not one of {DECODERS}")
        contract = parsed
    return ModelMetadata(names, imgsz, task, contract, decoder)


def guess_decoder(output_shapes: Sequence[Sequence[int | None]], classes: int | None) -> str:
    """The decoder an output signature implies, when it is unambiguous.

    Raises:
        ModelFileError: the outputs fit no decoder, or more than one.
    """
    if len(output_shapes) >= 3:
        return "boxes-scores-labels"
    if len(output_shapes) == 1 and len(output_shapes[0]) == 3 and classes is not None:
        _, second, third = output_shapes[0]
        if second == 4 + classes:
            return "yolov8"
        if third == 5 + classes:
            return "yolov5"
        if third == 4 + classes:
            return "yolov8"
    raise ModelFileError(
        "cannot tell the decoder from the model's outputs: give --decoder "
        f"({', '.join(DECODERS)}) and --classes"
    )
