"""Small ONNX detectors built with onnx.helper, whose outputs are known constants
(broadcast over the batch), for decoder, registry and prediction tests."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(
    nodes: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    *,
    size: int,
    channels: int,
    batch: int | str,
    metadata: dict[str, str] | None,
) -> bytes:
    image = helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, [batch, channels, size, size]
    )
    graph = helper.make_graph(nodes, "radlake_test_detector", [image], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _batch_zero(name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes making `name`: a [N, 1, 1] zero tensor that carries the batch axis."""
    axes = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")
    shape = numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape_n11")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("ReduceSum", ["images", "axes"], ["summed"], keepdims=1),
        helper.make_node("Reshape", ["summed", "shape_n11"], ["n11"]),
        helper.make_node("Mul", ["n11", "zero"], [name]),
    ]
    return nodes, [axes, shape, zero]


def constant_head(
    head: np.ndarray,
    *,
    size: int = 64,
    channels: int = 3,
    batch: int | str = "N",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """A model answering head (shape [X, Y]) for every image: output [N, X, Y]."""
    nodes, initializers = _batch_zero("batch_zero")
    initializers.append(numpy_helper.from_array(head[None].astype(np.float32), "head"))
    nodes.append(helper.make_node("Add", ["batch_zero", "head"], ["output0"]))
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, *head.shape])
    return _model(
        nodes, [output], initializers, size=size, channels=channels, batch=batch, metadata=metadata
    )


def yolov8_head(boxes_xyxy: Sequence[Sequence[float]], scores: np.ndarray) -> np.ndarray:
    """[4 + nc, A]: anchors are boxes (cx, cy, w, h), scores is [A, nc]."""
    xyxy = np.asarray(boxes_xyxy, dtype=np.float64)
    cxcywh = np.stack(
        [
            (xyxy[:, 0] + xyxy[:, 2]) / 2,
            (xyxy[:, 1] + xyxy[:, 3]) / 2,
            xyxy[:, 2] - xyxy[:, 0],
            xyxy[:, 3] - xyxy[:, 1],
        ],
        axis=1,
    )
    return np.concatenate([cxcywh, scores], axis=1).T.astype(np.float32)


def yolov5_head(
    boxes_xyxy: Sequence[Sequence[float]], objectness: Sequence[float], scores: np.ndarray
) -> np.ndarray:
    """[A, 5 + nc]: cx, cy, w, h, objectness, class scores."""
    v8 = yolov8_head(boxes_xyxy, scores).T
    return np.concatenate(
        [v8[:, :4], np.asarray(objectness, dtype=np.float32)[:, None], v8[:, 4:]], axis=1
    )


def boxes_scores_labels(
    boxes_xyxy: Sequence[Sequence[float]],
    scores: Sequence[float],
    labels: Sequence[int],
    *,
    size: int = 64,
) -> bytes:
    """A torchvision-style export (one image, no batch axis): boxes, scores, labels."""
    nodes, initializers = _batch_zero("batch_zero")
    flat = numpy_helper.from_array(np.array([1], dtype=np.int64), "shape_1")
    initializers += [
        flat,
        numpy_helper.from_array(np.asarray(boxes_xyxy, dtype=np.float32), "boxes_c"),
        numpy_helper.from_array(np.asarray(scores, dtype=np.float32), "scores_c"),
        numpy_helper.from_array(np.asarray(labels, dtype=np.int64), "labels_c"),
    ]
    nodes += [
        helper.make_node("Reshape", ["batch_zero", "shape_1"], ["zero_1"]),
        helper.make_node("Add", ["boxes_c", "zero_1"], ["boxes"]),
        helper.make_node("Add", ["scores_c", "zero_1"], ["scores"]),
        helper.make_node("Identity", ["labels_c"], ["labels"]),
    ]
    count = len(scores)
    outputs = [
        # Declared in another order than the decoder reads them: matched by name.
        helper.make_tensor_value_info("labels", TensorProto.INT64, [count]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [count, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [count]),
    ]
    return _model(nodes, outputs, initializers, size=size, channels=3, batch=1, metadata=None)


def radlake_contract(size: int, decoder: str = "yolov8", resize: str = "letterbox") -> str:
    """The `radlake_contract` metadata prop radlake's trainer writes."""
    return json.dumps(
        {
            "size": [size, size],
            "resize": resize,
            "channels": 3,
            "scale": 1 / 255,
            "mean": [0.0],
            "std": [1.0],
            "pad_value": 114,
            "decoder": decoder,
        }
    )


def brightness_model(box_cxcywh: Sequence[float], *, size: int = 64) -> bytes:
    """yolov8 layout, one class, one anchor: a fixed box whose score is the image's
    mean input value (so each image of a batch answers its own score)."""
    nodes, initializers = _batch_zero("batch_zero")
    initializers.append(
        numpy_helper.from_array(np.asarray(box_cxcywh, dtype=np.float32).reshape(1, 4, 1), "box")
    )
    nodes += [
        helper.make_node("Add", ["batch_zero", "box"], ["boxes"]),
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape_n11"], ["score"]),
        helper.make_node("Concat", ["boxes", "score"], ["output0"], axis=1),
    ]
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 5, 1])
    return _model(nodes, [output], initializers, size=size, channels=3, batch="N", metadata=None)
