"""Decoders, NMS, contracts and sessions on real ONNX graphs run by ONNX Runtime.

The graphs (tests/inference_graphs.py) answer known constants, so every decoded box
is known: it must come back exactly, in the stored image's pixels, through the
letterbox inverse that exports use (formats.coords.ResizeTransform).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radlake.domain import Box
from radlake.formats.coords import ResizeTransform
from radlake.inference import nms
from radlake.inference.contract import InputContract, preprocess, square_size, to_stored
from radlake.inference.decoders import decode
from radlake.inference.errors import InferenceError, InferenceUnavailable, ModelFileError
from radlake.inference.metadata import guess_decoder, read_metadata
from radlake.inference.nms import batched_nms, box_iou
from radlake.inference.runner import ServedModel, check_threshold, detect
from radlake.inference.sessions import SessionCache, load_model
from tests.inference_graphs import (
    boxes_scores_labels,
    brightness_model,
    constant_head,
    yolov5_head,
    yolov8_head,
)

# A 256 x 192 image letterboxed to 64: scale 1/4, content 64 x 48, 8 rows of padding
# above: every coordinate below is exact in float32.
WIDTH, HEIGHT, SIZE = 256, 192, 64
STORED_BOXES = [(40.0, 60.0, 120.0, 140.0), (140.0, 20.0, 236.0, 172.0)]
INPUT_BOXES = [(10.0, 23.0, 30.0, 43.0), (35.0, 13.0, 59.0, 51.0)]
CLASSES = ("Left Lung", "Right Lung")


def served(decoder: str, size: int = SIZE, resize: str = "letterbox") -> ServedModel:
    contract = InputContract(size=size, resize=resize)  # type: ignore[arg-type]
    return ServedModel(
        1, "test", 1, "0" * 64, "models/test/1/model.onnx", contract, decoder, CLASSES
    )


def picture(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    return Image.fromarray(np.full((height, width), 200, dtype=np.uint8), "L")


def test_letterbox_geometry_matches_the_export_transform() -> None:
    transform = InputContract(size=SIZE).transform(WIDTH, HEIGHT)
    assert (transform.content_width, transform.content_height, transform.offset_y) == (64, 48, 8)
    for stored, given in zip(STORED_BOXES, INPUT_BOXES, strict=True):
        assert transform.apply(Box(*stored)) == Box(*given)


@pytest.mark.parametrize("size", [(640, 480), (333, 1000), (1, 7), (1024, 1024), (517, 389)])
@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_the_vectorised_inverse_is_resize_transform_invert(
    size: tuple[int, int], mode: str
) -> None:
    width, height = size
    contract = InputContract(size=320, resize=mode)  # type: ignore[arg-type]
    transform = contract.transform(width, height)
    rng = np.random.default_rng(width * height)
    corners = rng.uniform(-40, 360, size=(200, 4))
    boxes = np.concatenate(
        [np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])],
        axis=1,
    )
    mapped = to_stored(boxes, transform)
    expected = np.array([list(vars_of(transform.invert(Box(*map(float, b))))) for b in boxes])
    assert np.allclose(mapped, expected, rtol=0, atol=1e-9)
    # And the round trip through apply is exact up to float rounding.
    inside = np.array([[0.1 * width, 0.2 * height, 0.7 * width, 0.9 * height]])
    forward = [list(vars_of(transform.apply(Box(*inside[0]))))]
    assert np.allclose(to_stored(np.array(forward), transform), inside, rtol=0, atol=1e-9)


def vars_of(box: Box) -> tuple[float, float, float, float]:
    return (box.x_min, box.y_min, box.x_max, box.y_max)


def test_yolov8_transposed_head_decodes_exactly() -> None:
    scores = np.array([[0.9, 0.05], [0.1, 0.75]])
    model = load_model(constant_head(yolov8_head(INPUT_BOXES, scores)))
    found = detect(model, served("yolov8"), [picture(), picture()], score_threshold=0.25)
    assert len(found) == 2
    for image in found:
        assert [(d.class_name, d.class_id) for d in image] == [("Left Lung", 0), ("Right Lung", 1)]
        assert [vars_of(d.box) for d in image] == STORED_BOXES  # exact, not approximate
        assert [d.score for d in image] == pytest.approx([0.9, 0.75])


def test_yolov5_head_multiplies_objectness_and_class_score() -> None:
    scores = np.array([[0.5, 1.0], [0.8, 0.2]])
    head = yolov5_head(INPUT_BOXES, objectness=[0.5, 1.0], scores=scores)
    model = load_model(constant_head(head))
    (image,) = detect(model, served("yolov5"), [picture()], score_threshold=0.3)
    assert [(d.class_name, round(d.score, 6), vars_of(d.box)) for d in image] == [
        ("Left Lung", 0.8, STORED_BOXES[1]),
        ("Right Lung", 0.5, STORED_BOXES[0]),
    ]


def test_boxes_scores_labels_are_read_by_name() -> None:
    model = load_model(boxes_scores_labels(INPUT_BOXES, [0.6, 0.95], [1, 0]))
    assert model.io.output_names == ("labels", "boxes", "scores")
    (image,) = detect(model, served("boxes-scores-labels"), [picture()], score_threshold=0.5)
    assert [(d.class_name, round(d.score, 6), vars_of(d.box)) for d in image] == [
        ("Left Lung", 0.95, STORED_BOXES[1]),
        ("Right Lung", 0.6, STORED_BOXES[0]),
    ]


def test_stretch_inverse_is_exact_too() -> None:
    # 256 x 192 stretched to 64: x scale 1/4, y scale 1/3.
    model = load_model(
        constant_head(yolov8_head([(10.0, 20.0, 30.0, 40.0)], np.array([[0.9, 0.0]])))
    )
    (image,) = detect(model, served("yolov8", resize="stretch"), [picture()])
    assert vars_of(image[0].box) == pytest.approx((40.0, 60.0, 120.0, 120.0), abs=1e-9)


def test_boxes_in_the_padding_are_dropped_and_boxes_are_clipped() -> None:
    # Rows 0..8 of the 64 x 64 input are padding; a box reaching off the content is clipped.
    boxes = [(0.0, 0.0, 64.0, 7.0), (-5.0, 50.0, 70.0, 60.0)]
    model = load_model(constant_head(yolov8_head(boxes, np.array([[0.9, 0.0], [0.0, 0.8]]))))
    (image,) = detect(model, served("yolov8"), [picture()])
    assert [vars_of(d.box) for d in image] == [(0.0, 168.0, 256.0, 192.0)]


def test_score_and_iou_thresholds_act() -> None:
    # Two Left Lung boxes with IoU 0.6 (10x10 boxes overlapping 7.5 of 10 columns).
    boxes = [(10.0, 20.0, 20.0, 30.0), (12.5, 20.0, 22.5, 30.0), (40.0, 20.0, 50.0, 30.0)]
    assert box_iou(np.array(boxes[:1]), np.array(boxes[1:2]))[0, 0] == pytest.approx(0.6)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.3, 0.0]])
    model = load_model(constant_head(yolov8_head(boxes, scores)))

    def kept(score: float, iou: float) -> list[float]:
        (image,) = detect(
            model, served("yolov8"), [picture()], score_threshold=score, iou_threshold=iou
        )
        return [round(d.score, 6) for d in image]

    assert kept(0.25, 0.5) == [0.9, 0.3]
    assert kept(0.25, 0.7) == [0.9, 0.8, 0.3]
    assert kept(0.5, 0.7) == [0.9, 0.8]
    assert kept(0.95, 0.7) == []
    assert kept(0.0, 1.0) == [0.9, 0.8, 0.3]


@pytest.mark.parametrize("bad", [-0.01, 1.0001, 11, float("nan"), float("inf"), "0.5", True, None])
def test_thresholds_outside_zero_one_are_refused(bad: object) -> None:
    with pytest.raises(InferenceError, match=r"threshold in \[0, 1\]"):
        check_threshold("score", bad)
    model = load_model(constant_head(yolov8_head(INPUT_BOXES, np.eye(2))))
    # One line a user reads ("expected a IoU threshold" before).
    with pytest.raises(InferenceError, match=r"^expected the IoU threshold in \[0, 1\], got "):
        detect(model, served("yolov8"), [picture()], iou_threshold=bad)  # type: ignore[arg-type]


def greedy_reference(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float
) -> list[int]:
    """The textbook one-box-at-a-time loop, per class."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(
            classes[j] != classes[i] or box_iou(boxes[[j]], boxes[[i]])[0, 0] <= threshold
            for j in kept
        ):
            kept.append(i)
    return kept


@pytest.mark.parametrize("block", [7, nms.BLOCK])
@pytest.mark.parametrize("seed", range(40))
def test_nms_equals_the_brute_force_reference(
    seed: int, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small blocks: the hand-over between blocks is exercised on every case.
    monkeypatch.setattr(nms, "BLOCK", block)
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 120)) if seed % 8 else int(rng.integers(300, 400))
    centres = rng.uniform(0, 100, size=(count, 2))
    sizes = rng.uniform(2, 40, size=(count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    scores = rng.choice([0.1, 0.2, 0.5, 0.9], size=count) if seed % 2 else rng.uniform(0, 1, count)
    classes = rng.integers(0, 3, size=count)
    threshold = float(rng.choice([0.0, 0.3, 0.45, 0.7, 1.0]))
    expected = greedy_reference(boxes, scores, classes, threshold)
    uncapped = batched_nms(boxes, scores, classes, threshold, max_detections=len(boxes) + 1)
    assert uncapped.tolist() == expected
    assert batched_nms(boxes, scores, classes, threshold).tolist() == expected[: nms.MAX_DETECTIONS]


def test_nms_of_a_chain_and_of_max_detections() -> None:
    # A chain where each box overlaps only its neighbour: greedy keeps every other one.
    boxes = np.array([[i * 6.0, 0.0, i * 6.0 + 10.0, 10.0] for i in range(50)])
    scores = np.linspace(1.0, 0.5, 50)
    classes = np.zeros(50, dtype=np.int64)
    kept = batched_nms(boxes, scores, classes, 0.2)
    assert kept.tolist() == greedy_reference(boxes, scores, classes, 0.2) == list(range(0, 50, 2))
    assert batched_nms(boxes, scores, classes, 0.2, max_detections=5).tolist() == [0, 2, 4, 6, 8]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), 0.5).size == 0


def test_preprocessing_follows_the_contract() -> None:
    image = Image.fromarray(np.full((192, 256, 3), (255, 0, 51), dtype=np.uint8), "RGB")
    contract = InputContract(
        size=64, channels=3, scale=1 / 255, mean=(0.5,), std=(0.5,), pad_value=114
    )
    values, _ = preprocess(image, contract)
    assert values.shape == (3, 64, 64) and values.dtype == np.float32
    pad = (114 / 255 - 0.5) / 0.5
    assert np.allclose(values[:, :8, :], pad) and np.allclose(values[:, 56:, :], pad)
    assert np.allclose(values[:, 8:56, :].reshape(3, -1).mean(axis=1), [1.0, -1.0, -0.6], atol=1e-6)
    grey, _ = preprocess(image, InputContract(size=32, channels=1, resize="stretch", scale=1.0))
    assert grey.shape == (1, 32, 32) and np.all(grey > 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"size": 0}, "input size"),
        ({"size": 64, "channels": 2}, "channels"),
        ({"size": 64, "resize": "crop"}, "letterbox or stretch"),
        ({"size": 64, "std": (0.0,)}, "positive std"),
        ({"size": 64, "mean": (0.1, 0.2)}, "mean values"),
        ({"size": 64, "pad_value": 300}, "pad value"),
        ({"size": 64, "scale": float("nan")}, "finite number"),
    ],
)
def test_bad_contracts_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        InputContract(**fields)  # type: ignore[arg-type]


def test_contract_json_form() -> None:
    contract = InputContract.from_dict({"size": [640, 640], "resize": "stretch", "mean": 0.1})
    assert InputContract.from_dict(contract.as_dict()) == contract
    assert square_size([320]) == 320
    for bad, message in (([640, 480], "square"), ("640", "input size"), ([True], "input size")):
        with pytest.raises(InferenceError, match=message):
            square_size(bad)
    with pytest.raises(InferenceError, match="unknown contract keys"):
        InputContract.from_dict({"size": 64, "letterbox": True})


def test_ultralytics_metadata_is_read_as_literals_never_evaluated(tmp_path: Path) -> None:
    meta = read_metadata(
        {"names": "{0: 'Left Lung', 1: 'Right Lung'}", "imgsz": "[640, 640]", "task": "detect"}
    )
    assert meta.class_names == ["Left Lung", "Right Lung"] and meta.imgsz == [640, 640]
    marker = f"{tmp_path}/ran"
    with pytest.raises(ModelFileError, match="not a Python literal"):
        read_metadata({"names": f"__import__('pathlib').Path({marker!r}).touch()"})
    assert not os.path.exists(marker)
    for names in ("{1: 'a'}", "['a', 'a']", "{0: ''}", "42"):
        with pytest.raises(ModelFileError):
            read_metadata({"names": names})
    with pytest.raises(ModelFileError, match="not JSON"):
        read_metadata({"radlake_contract": "{size"})


def test_decoder_guess_and_wrong_shapes() -> None:
    assert guess_decoder([(1, 6, 8400)], 2) == "yolov8"
    assert guess_decoder([(1, 25200, 7)], 2) == "yolov5"
    assert guess_decoder([(None, 4), (None,), (None,)], None) == "boxes-scores-labels"
    with pytest.raises(ModelFileError, match="--decoder"):
        guess_decoder([(1, 6, 8400)], None)
    head = np.zeros((1, 7, 10), dtype=np.float32)
    with pytest.raises(ModelFileError, match=r"yolov8 head for 2 classes"):
        decode("yolov8", [head], batch=1, classes=2, score_threshold=0.5)
    with pytest.raises(ModelFileError, match=r"yolov5 head for 2 classes"):
        decode("yolov5", [head], batch=1, classes=2, score_threshold=0.5)
    with pytest.raises(ModelFileError, match="decoder among"):
        decode("detr", [head], batch=1, classes=2, score_threshold=0.5)
    labels = [np.zeros((1, 4)), np.ones(1), np.array([5])]
    with pytest.raises(ModelFileError, match="label 5 but has 2 class names"):
        decode("boxes-scores-labels", labels, batch=1, classes=2, score_threshold=0.0)


def test_garbage_is_not_a_model() -> None:
    for data in (b"", b"not an onnx file", b"\x08\x01" * 100):
        with pytest.raises(ModelFileError, match="ONNX Runtime cannot load"):
            load_model(data)


def test_concurrent_requests_build_one_session() -> None:
    data = constant_head(yolov8_head(INPUT_BOXES, np.eye(2)))
    sha = hashlib.sha256(data).hexdigest()
    cache = SessionCache()
    reads = []
    gate = threading.Barrier(8)

    def ask(_: int) -> int:
        gate.wait()
        return id(cache.get(sha, lambda: reads.append(1) or data))

    with ThreadPoolExecutor(8) as pool:
        identities = set(pool.map(ask, range(8)))
    assert len(identities) == 1 and cache.loads == 1 and len(reads) == 1
    with pytest.raises(ModelFileError, match="does not match"):
        cache.get("f" * 64, lambda: data)


def test_missing_onnxruntime_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InferenceUnavailable, match=r"pip install 'radlake\[inference\]'"):
        load_model(b"anything")


def test_resize_transform_is_what_contract_uses() -> None:
    assert InputContract(size=64).transform(WIDTH, HEIGHT) == ResizeTransform(
        WIDTH, HEIGHT, 64, "pad"
    )


def test_each_image_of_a_batch_keeps_its_own_answer() -> None:
    """Scores that are a function of each input: batching never mixes images up."""
    model = load_model(brightness_model((32.0, 32.0, 16.0, 16.0)))
    greys = [51, 204, 102, 153, 0]
    pictures = [Image.fromarray(np.full((HEIGHT, WIDTH), g, dtype=np.uint8), "L") for g in greys]
    one_class = ServedModel(
        1, "b", 1, "0" * 64, "k", InputContract(size=SIZE, resize="stretch"), "yolov8", ("x",)
    )
    for batch_size in (1, 2, 3, 8):
        found = detect(model, one_class, pictures, score_threshold=0.3, batch_size=batch_size)
        assert [[round(d.score, 4) for d in image] for image in found] == [
            [],
            [0.8],
            [0.4],
            [0.6],
            [],
        ]
        # Stretch: x scale 1/4, y scale 1/3 (64 from 256 x 192).
        assert vars_of(found[1][0].box) == pytest.approx((96.0, 72.0, 160.0, 120.0))


def test_a_model_with_a_fixed_batch_of_one_gets_one_image_at_a_time() -> None:
    model = load_model(boxes_scores_labels(INPUT_BOXES, [0.6, 0.95], [1, 0]))
    assert model.io.fixed_batch == 1
    found = detect(model, served("boxes-scores-labels"), [picture()] * 3, batch_size=8)
    assert [len(image) for image in found] == [2, 2, 2]


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_scores_and_boxes_are_not_detections(
    bad: float, recwarn: pytest.WarningsRecorder
) -> None:
    # Found by a hostile tester: a model answering score inf had it stored and the API
    # answered "score": null; inf box sides printed a RuntimeWarning on stderr.
    scores = np.array([[bad, 0.0], [0.0, 0.75]])
    model = load_model(constant_head(yolov8_head(INPUT_BOXES, scores)))
    (image,) = detect(model, served("yolov8"), [picture()], score_threshold=0.25)
    assert [(d.class_name, d.score, vars_of(d.box)) for d in image] == [
        ("Right Lung", 0.75, STORED_BOXES[1])
    ]
    sides = [(INPUT_BOXES[0][0], INPUT_BOXES[0][1], bad, bad), INPUT_BOXES[1]]
    model = load_model(constant_head(yolov8_head(sides, np.array([[0.9, 0.0], [0.0, 0.75]]))))
    (image,) = detect(model, served("yolov8"), [picture()], score_threshold=0.25)
    assert [d.class_name for d in image] == ["Right Lung"]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("bad", [5.0, -0.5])
def test_scores_outside_zero_one_are_a_broken_model(bad: float) -> None:
    # Found by a hostile tester: a head answering logits stored "score": 5.0, which
    # passed every threshold; registration's dry run on a blank input now refuses it.
    model = load_model(
        constant_head(yolov8_head(INPUT_BOXES, np.array([[bad, -1.0], [0.0, 0.75]])))
    )
    with pytest.raises(ModelFileError, match=r"not in \[0, 1\]"):
        detect(model, served("yolov8"), [picture()], score_threshold=0.25)
