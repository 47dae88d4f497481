"""Training radlake's own detector (issue 10): exact letterbox and augmentation,
a loss that falls, determinism for a seed, an ONNX file that ONNX Runtime runs as
torch does with the contract radlake's registry reads, and the lake path (ingest,
label import, version, train, register with lineage, evaluate).

Everything trains a tiny network on images the test draws, for a few steps.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("torch", reason="training needs the [train] extra")

import onnx
import torch
from sqlalchemy import select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.inference_models import ModelVersion
from radlake.catalog.models import DatasetVersion
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import DatasetError, VersionRequest, create_version
from radlake.domain import Box
from radlake.errors import RadlakeError
from radlake.formats.label_readers import read_label_file
from radlake.inference.metadata import read_metadata
from radlake.lake import Lake
from radlake.pipelines.ingest import ingest
from radlake.pipelines.label_import import ImportRequest, import_labels
from radlake.pipelines.stored_images import StoredImages
from radlake.training import TrainingError
from radlake.training.data import (
    PAD_VALUE,
    Augment,
    augment,
    collate,
    load_split,
    make_sample,
    mirror_classes,
)
from radlake.training.export import export_onnx
from radlake.training.loop import TrainConfig, TrainResult, train_detector
from radlake.training.metrics import MapScore, coco_map, predict
from radlake.training.run import TrainRequest, train_version
from tests.conftest import run_radlake

NAMES = ("Left Thing", "Right Thing")
TINY = TrainConfig(
    epochs=8,
    size=64,
    width=8,
    batch_size=2,
    learning_rate=5e-3,
    threads=1,
    eval_every=4,
    warmup_epochs=1,
)


def draw(index: int) -> tuple[Image.Image, list[tuple[int, Box]]]:
    """A non-square grey picture with two bright blocks, one on each side."""
    rng = np.random.default_rng(index)
    width, height = int(rng.integers(90, 140)), int(rng.integers(90, 140))
    picture = Image.fromarray(rng.integers(20, 60, (height, width), dtype=np.uint8))
    pen = ImageDraw.Draw(picture)
    boxes: list[tuple[int, Box]] = []
    for class_id, (low, high) in enumerate(((0.05, 0.45), (0.55, 0.95))):
        x0 = int(width * (low + rng.uniform(0, 0.1)))
        x1 = int(width * (high - rng.uniform(0, 0.1)))
        y0 = int(height * rng.uniform(0.05, 0.3))
        y1 = int(height * rng.uniform(0.65, 0.95))
        pen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=200 + 40 * class_id)
        boxes.append((class_id, Box(x0, y0, x1, y1)))  # continuous corners
    return picture, boxes


@pytest.fixture(scope="module")
def samples() -> list:  # type: ignore[type-arg]
    return [make_sample(str(i), *draw(i), size=TINY.size) for i in range(12)]


@pytest.fixture(scope="module")
def trained(samples: list) -> Iterator[tuple[TrainResult, TrainResult, TrainResult]]:  # type: ignore[type-arg]
    train, val = samples[:8], samples[8:]
    first = train_detector(train, val, 2, TINY)
    again = train_detector(train, val, 2, TINY)
    other = train_detector(train, val, 2, replace(TINY, seed=1))
    yield first, again, other


def test_letterbox_is_grey_padded_and_its_boxes_invert_exactly() -> None:
    picture, boxes = draw(3)
    sample = make_sample("a", picture, boxes, 64)
    assert sample.pixels.shape == (1, 64, 64) and sample.pixels.dtype == np.uint8
    t = sample.transform
    if t.offset_y:  # wide picture: bars above and below
        assert (sample.pixels[0, : t.offset_y] == PAD_VALUE).all()
    if t.offset_x:
        assert (sample.pixels[0, :, : t.offset_x] == PAD_VALUE).all()
    for (class_id, box), placed, placed_class in zip(
        boxes, sample.boxes, sample.classes, strict=True
    ):
        assert placed_class == class_id
        back = t.invert(Box(*(float(v) for v in placed)))
        assert back.x_min == pytest.approx(box.x_min, abs=1e-4)
        assert back.y_max == pytest.approx(box.y_max, abs=1e-4)
    assert sample.truth == tuple(boxes)


def test_augmentation_moves_boxes_with_the_pixels() -> None:
    picture = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(picture).rectangle((16, 20, 39, 51), fill=255)  # covers [16, 40) x [20, 52)
    sample = make_sample("a", picture, [(0, Box(16, 20, 40, 52))], 64)
    geometry = Augment(scale=0.2, aspect=0.1, translate=0.1, brightness=0.0, contrast=0.0)
    batch = collate([sample] * 6)
    moved = augment(batch, geometry, torch.Generator().manual_seed(5))
    for image, box in zip(moved.images, moved.boxes, strict=True):
        bright = (image[0] > 0.5).nonzero()
        ys, xs = bright[:, 0].float(), bright[:, 1].float()
        drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for got, expected in zip(drawn, box[0].tolist(), strict=True):
            assert abs(float(got) - expected) <= 1.0  # resampling blurs one pixel at most
    # Brightness and contrast leave boxes alone; the padding the shift brings in is grey.
    assert torch.equal(moved.classes, batch.classes)


def test_a_mirror_swaps_sided_classes_and_keeps_boxes_exact() -> None:
    assert mirror_classes(["Left Lung", "Right Lung"]) == [1, 0]
    assert mirror_classes(["right-lung", "Heart", "left-lung"]) == [2, 1, 0]
    assert mirror_classes(["Nodule", "Effusion"]) == [0, 1]  # no side: mirrors freely
    assert mirror_classes(["Left Lung", "Heart"]) is None  # a side without its partner
    picture = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(picture).rectangle((6, 10, 25, 49), fill=255)  # [6, 26) x [10, 50)
    sample = make_sample("a", picture, [(0, Box(6, 10, 26, 50))], 64)
    only_mirror = replace(Augment.none(), mirror=1.0)
    moved = augment(collate([sample]), only_mirror, torch.Generator().manual_seed(0), [1, 0])
    assert moved.classes.tolist() == [[1]]
    assert moved.boxes[0, 0].tolist() == pytest.approx([38, 10, 58, 50], abs=1e-4)
    bright = (moved.images[0, 0] > 0.5).nonzero()
    assert (int(bright[:, 1].min()), int(bright[:, 1].max()) + 1) == (38, 58)
    unmirrored = augment(collate([sample]), only_mirror, torch.Generator().manual_seed(0))
    assert unmirrored.classes.tolist() == [[0]]  # no class map: never mirrored


def test_training_lowers_the_loss_and_finds_the_blocks(
    trained: tuple[TrainResult, TrainResult, TrainResult],
    samples: list,  # type: ignore[type-arg]
) -> None:
    result = trained[0]
    losses = [r.loss for r in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_epoch in {r.epoch for r in result.history if r.val_map50_95 is not None}
    score = coco_map(samples[8:], predict(result.model, samples[8:]), 2)
    assert score.map50 > 0.3  # a few dozen steps of a tiny net: it has started to find them


def test_predictions_are_capped_and_the_score_is_the_registry_s(
    trained: tuple[TrainResult, TrainResult, TrainResult],
    samples: list,  # type: ignore[type-arg]
) -> None:
    held_out = samples[8:]
    found = predict(trained[0].model, held_out, max_detections=3)
    assert all(0 < len(f) <= 3 for f in found)
    assert all([d[1] for d in f] == sorted((d[1] for d in f), reverse=True) for f in found)
    perfect = [[(c, 1.0, b) for c, b in s.truth] for s in held_out]
    assert coco_map(held_out, perfect, 2) == MapScore(1.0, 1.0)
    assert coco_map(held_out, [[] for _ in held_out], 2) == MapScore(0.0, 0.0)
    # Shifted by 3/4 of a box, every box misses at IoU 0.5: no credit, not an error.
    missed = [
        [
            (c, 1.0, Box(b.x_min + 0.75 * b.width, b.y_min, b.x_max + 0.75 * b.width, b.y_max))
            for c, b in s.truth
        ]
        for s in held_out
    ]
    assert coco_map(held_out, missed, 2) == MapScore(0.0, 0.0)
    no_truth = [replace(s, truth=()) for s in held_out]
    assert coco_map(no_truth, perfect, 2) == MapScore(0.0, 0.0)


def test_the_same_seed_gives_the_same_weights(
    trained: tuple[TrainResult, TrainResult, TrainResult],
) -> None:
    first, again, other = (r.model.state_dict() for r in trained)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert [r.loss for r in trained[0].history] == [r.loss for r in trained[1].history]


def test_onnx_matches_torch_and_carries_the_contract(
    trained: tuple[TrainResult, TrainResult, TrainResult],
    samples: list,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    model = trained[0].model
    inputs = collate(samples[:3]).images
    exported = export_onnx(model, tmp_path / "m.onnx", NAMES, check_inputs=inputs)
    assert exported.max_difference is not None and exported.max_difference <= 1e-4
    graph = onnx.load(str(exported.path))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["output0"]
    props = {p.key: p.value for p in graph.metadata_props}
    assert ast.literal_eval(props["names"]) == {0: "Left Thing", 1: "Right Thing"}
    assert ast.literal_eval(props["imgsz"]) == [64, 64]
    assert props["task"] == "detect"
    contract = json.loads(props["radlake_contract"])
    assert contract == {
        "size": [64, 64],
        "resize": "letterbox",
        "channels": 1,
        "scale": 1 / 255,
        "mean": [0.0],
        "std": [1.0],
        "pad_value": 114,
        "decoder": "yolov8",
    }
    meta = read_metadata(props)  # what the registry reads
    assert meta.class_names == list(NAMES) and meta.decoder == "yolov8"
    import onnxruntime  # type: ignore[import-untyped]

    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": inputs.numpy()})
    assert output.shape == (3, 4 + 2, (64 // 8) ** 2)  # YOLOv8 layout [N, 4 + nc, A]
    assert ((output[:, 4:] >= 0) & (output[:, 4:] <= 1)).all()  # sigmoid scores


def test_bad_settings_and_empty_data_are_clear_errors(samples: list) -> None:  # type: ignore[type-arg]
    for bad in ({"size": 100}, {"epochs": 0}, {"size": 32}, {"batch_size": 0}):
        with pytest.raises(TrainingError, match="expected"):
            replace(TINY, **bad)
    unboxed = [make_sample("x", draw(0)[0], [], 64)]
    with pytest.raises(TrainingError, match="with boxes"):
        train_detector(unboxed, [], 2, TINY)
    with pytest.raises(TrainingError, match="class names"):
        export_onnx(
            train_detector(samples[:2], [], 2, replace(TINY, epochs=1)).model,
            Path("/nonexistent/m.onnx"),
            ["one"],
        )


def test_train_version_registers_with_lineage_and_evaluates(lake: Lake, tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    images, annotations = [], []
    for index in range(15):
        picture, boxes = draw(100 + index)
        name = f"film {index}.png"
        picture.save(folder / name)
        images.append(
            {"id": index + 1, "file_name": name, "width": picture.width, "height": picture.height}
        )
        for class_id, box in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": class_id + 1,
                    "bbox": [box.x_min, box.y_min, box.x_max - box.x_min, box.y_max - box.y_min],
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    ingest([folder], engine=lake.engine, store=lake.store, pseudonymizer=lake.pseudonymizer)
    summary = import_labels(
        read_label_file(tmp_path / "boxes.json", "coco"),
        ImportRequest(source="things"),
        engine=lake.engine,
    )
    assert summary.written == 30
    with transaction(lake.engine) as session:
        version, _ = create_version(
            session,
            VersionRequest(
                "things", ImageFilter(), SplitSpec.parse("training=0.6,validation=0.2,test=0.2")
            ),
        )
        version_id = version.id
    with session_factory(lake.engine)() as session:
        version_row = session.get_one(DatasetVersion, version_id)
        loaded = load_split(
            session, StoredImages(lake.store), version_row, "training", NAMES, size=64
        )
    # Content order, whatever order the lake ingested in (the batches follow it).
    assert [s.key for s in loaded.samples] == sorted(s.key for s in loaded.samples)
    out = tmp_path / "out"
    outcome = train_version(lake, TrainRequest("things-det", "things", out=out), TINY)
    assert outcome.model_version == 1
    assert outcome.metrics["splits"] == {"training": 9, "validation": 3, "test": 3}
    assert outcome.evaluation is not None and outcome.evaluation["images"] == 3
    assert "map50_95" in outcome.evaluation["mean_box_baseline"]
    assert (out / "model.onnx").is_file()
    assert json.loads((out / "metrics.json").read_text())["metrics"]["best_epoch"] >= 1
    with session_factory(lake.engine)() as session:
        row = session.scalars(select(ModelVersion)).one()
        assert row.trained_on_id == version_id  # lineage
        assert row.class_names == list(NAMES)
        assert row.metrics["config"]["seed"] == 0
        assert "things@1/test" in row.metrics["evaluations"]


def test_cli_refuses_bad_requests_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_radlake(home, "init").returncode == 0
    # One run (each start imports torch); bad sizes and epochs are TrainConfig's, above.
    done = run_radlake(home, "model", "train", "det", "--dataset", "nope")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == "error: no dataset 'nope'"


def test_a_bad_model_name_or_dataset_is_refused_before_training(lake: Lake) -> None:
    with pytest.raises(RadlakeError, match="name"):
        train_version(lake, TrainRequest("Bad Name!", "things"), TINY)
    with pytest.raises(DatasetError, match="no dataset 'things'"):
        train_version(lake, TrainRequest("det", "things"), TINY)
