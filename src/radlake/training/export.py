"""ONNX export in the YOLOv8 layout that radlake's decoders read, verified.

The contract (issue 10): input "images" float32 [N, C, S, S], pixels / 255,
letterboxed on grey 114; output "output0" [N, 4 + nc, A] of cx, cy, w, h in
letterboxed input pixels and sigmoid class scores (no objectness). The metadata
carries ultralytics' own keys (names, imgsz, task) so any YOLOv8 reader takes the
file, and "radlake_contract" with the full input contract.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from radlake.training import TrainingError
from radlake.training.data import PAD_VALUE
from radlake.training.model import Detector

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "output0"
TOLERANCE = 1e-4


class _Decoded(nn.Module):
    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.decode(images)


def contract(size: int, channels: int) -> dict[str, Any]:
    """The input contract and decoder that radlake's registry records."""
    return {
        "size": [size, size],
        "resize": "letterbox",
        "channels": channels,
        "scale": 1 / 255,
        "mean": [0.0] * channels,
        "std": [1.0] * channels,
        "pad_value": PAD_VALUE,
        "decoder": "yolov8",
    }


def metadata(names: Sequence[str], size: int, channels: int) -> dict[str, str]:
    """ONNX metadata_props: ultralytics' keys plus radlake's contract."""
    return {
        # ultralytics writes str(dict) and reads it back with ast.literal_eval.
        "names": repr(dict(enumerate(names))),
        "imgsz": repr([size, size]),
        "task": "detect",
        "stride": "8",
        "radlake_contract": json.dumps(contract(size, channels)),
    }


@dataclass(frozen=True, slots=True)
class Exported:
    path: Path
    max_difference: float | None  # ONNX Runtime vs torch; None when onnxruntime is absent


def export_onnx(
    model: Detector,
    path: Path,
    names: Sequence[str],
    *,
    check_inputs: Tensor | None = None,
) -> Exported:
    """Write model as ONNX (dynamic batch) with its metadata, and check it.

    The file is run with ONNX Runtime on check_inputs (random pixels when None) and
    must match the torch outputs within 1e-4 (absolute or relative).

    Raises:
        TrainingError: names do not match the model's classes, or ONNX Runtime
            disagrees with torch.
    """
    import onnx

    config = model.config
    if len(names) != config.num_classes:
        raise TrainingError(f"expected {config.num_classes} class names, got {len(names)}")
    model = model.eval()
    if check_inputs is None:
        generator = torch.Generator().manual_seed(0)
        check_inputs = torch.rand(2, config.channels, config.size, config.size, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing, not ours to act on
        # The exporter restores the wrapper's mode on every submodule afterwards: a
        # wrapper left in training mode would switch batch norm back to batch stats.
        torch.onnx.export(
            _Decoded(model).eval(),
            (check_inputs[:1],),
            str(partial),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
        )
    graph = onnx.load(str(partial))
    for key, value in metadata(names, config.size, config.channels).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.producer_name = "radlake"
    onnx.checker.check_model(graph)
    partial.write_bytes(graph.SerializeToString())
    difference = _compare(model, partial, check_inputs)
    partial.replace(path)
    return Exported(path, difference)


def _compare(model: Detector, path: Path, inputs: Tensor) -> float | None:
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy().astype(np.float32)})
    with torch.no_grad():
        expected = model.decode(inputs).numpy()
    if got.shape != expected.shape:
        raise TrainingError(f"expected ONNX output {expected.shape}, got {got.shape}")
    excess = np.abs(got - expected) - TOLERANCE * np.maximum(1.0, np.abs(expected))
    if float(excess.max()) > 0:
        path.unlink(missing_ok=True)
        gap = float(np.abs(got - expected).max())
        raise TrainingError(f"the exported ONNX disagrees with the trained model by {gap:.2e}")
    return float(np.abs(got - expected).max())
