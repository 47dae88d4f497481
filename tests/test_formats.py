"""YOLO and COCO export/import: exact coordinates, real files on disk and in the store,
pycocotools as the reader, byte-for-byte reproducibility."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO  # type: ignore[import-untyped]

from radlake.domain import Box, Finding
from radlake.errors import StorageError
from radlake.formats import (
    MANIFEST_NAME,
    ExportImage,
    ExportSummary,
    FolderSink,
    FormatError,
    ResizeMode,
    ResizeTransform,
    StoreSink,
    box_to_coco,
    box_to_yolo,
    clip_box,
    coco_to_box,
    export_coco,
    export_prefix,
    export_yolo,
    read_coco,
    read_manifest,
    read_yolo_labels,
    verify_manifest,
    yolo_to_box,
)
from radlake.storage.store import open_store

CLASSES = ["nodule", "mass", "effusion"]
LICENSE = "CC BY 4.0"
URL_LICENSE = "https://creativecommons.org/licenses/by-nc/4.0/"


Coords = tuple[float, float, float, float] | None


def _image(
    image_id: int,
    stem: str,
    split: str,
    size: tuple[int, int],
    *boxes: tuple[str, Coords],
    license: str | None = LICENSE,
    extra: dict[str, object] | None = None,
) -> ExportImage:
    findings = tuple(
        Finding(image_id, name, None if coords is None else Box(*coords)) for name, coords in boxes
    )
    return ExportImage(image_id, stem, split, size[0], size[1], findings, license, extra or {})


# A tiny dataset: every split, an image-level finding, an image without boxes, a box
# partly outside its image, images with and without a license.
DATASET = [
    _image(
        1,
        "a",
        "training",
        (200, 100),
        ("nodule", (50, 25, 150, 75)),
        ("effusion", None),
        extra={"doi": "10.1000/a", "url": "https://example.org/a"},
    ),
    _image(
        2,
        "b",
        "training",
        (120, 160),
        ("mass", (10, 20, 40, 100)),
        ("nodule", (100, 150, 130, 170)),
        license=URL_LICENSE,
    ),
    _image(3, "c", "validation", (64, 64), license=None),
    _image(4, "d", "test", (100, 100), ("effusion", (0, 0, 100, 50)), license=None),
]


def render(image: ExportImage) -> Image.Image:
    """The stored image: black, with each box drawn as a bright rectangle."""
    pixels = np.zeros((image.height, image.width), dtype=np.uint8)
    for finding in image.findings:
        if finding.box is not None:
            box = finding.box
            pixels[int(box.y_min) : int(box.y_max), int(box.x_min) : int(box.x_max)] = 255
    return Image.fromarray(pixels)


def _files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _within(mask: np.ndarray, distance: int) -> np.ndarray:
    """Pixels at most distance pixels (along each axis) from a True pixel of mask."""
    height, width = mask.shape
    padded = np.pad(mask, distance)
    near = np.zeros_like(mask)
    for dy in range(2 * distance + 1):
        for dx in range(2 * distance + 1):
            near |= padded[dy : dy + height, dx : dx + width]
    return near


def _close(a: Box, b: Box, tolerance: float) -> bool:
    pairs = zip(
        (a.x_min, a.y_min, a.x_max, a.y_max), (b.x_min, b.y_min, b.x_max, b.y_max), strict=True
    )
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=tolerance) for x, y in pairs)


# --- coordinates -----------------------------------------------------------------------

sizes = st.tuples(st.integers(1, 20_000), st.integers(1, 20_000))
fractions = st.floats(0, 1, allow_nan=False)


@st.composite
def image_and_box(draw: st.DrawFn) -> tuple[int, int, Box]:
    width, height = draw(sizes)
    x0, x1 = sorted((draw(fractions) * width, draw(fractions) * width))
    y0, y1 = sorted((draw(fractions) * height, draw(fractions) * height))
    return width, height, Box(x0, y0, x1, y1)


@given(image_and_box())
def test_pixel_yolo_pixel_round_trips(case: tuple[int, int, Box]) -> None:
    width, height, box = case
    back = yolo_to_box(box_to_yolo(box, width, height), width, height)
    assert _close(back, box, 1e-9 * max(width, height))


@given(image_and_box())
def test_pixel_coco_pixel_round_trips(case: tuple[int, int, Box]) -> None:
    width, height, box = case
    assert _close(coco_to_box(box_to_coco(box)), box, 1e-9 * max(width, height))


@given(image_and_box(), st.integers(1, 4096))
def test_letterbox_maps_the_image_onto_a_centred_rectangle(
    case: tuple[int, int, Box], size: int
) -> None:
    width, height, box = case
    transform = ResizeTransform(width, height, size, "pad")
    assert transform.output_size == (size, size)
    long_side = max(width, height)
    assert max(transform.content_width, transform.content_height) == size
    # Rounded to whole pixels, and never thinner than one pixel.
    for content, side in ((transform.content_width, width), (transform.content_height, height)):
        assert abs(content - side * size / long_side) <= 0.5 + 1e-9 or content == 1
    assert size - transform.content_width - 2 * transform.offset_x in (0, 1)
    assert size - transform.content_height - 2 * transform.offset_y in (0, 1)
    corners = transform.apply(Box(0, 0, width, height))
    expected = Box(
        transform.offset_x,
        transform.offset_y,
        transform.offset_x + transform.content_width,
        transform.offset_y + transform.content_height,
    )
    assert _close(corners, expected, 1e-9 * size)
    assert _close(transform.invert(transform.apply(box)), box, 1e-9 * long_side)


@given(image_and_box(), st.integers(1, 4096))
def test_stretch_maps_the_image_onto_the_whole_output(
    case: tuple[int, int, Box], size: int
) -> None:
    width, height, box = case
    transform = ResizeTransform(width, height, size, "stretch")
    assert transform.output_size == (size, size)
    assert _close(transform.apply(Box(0, 0, width, height)), Box(0, 0, size, size), 1e-9 * size)
    assert _close(transform.invert(transform.apply(box)), box, 1e-9 * max(width, height))


def test_transforms_clip_boxes_to_the_image() -> None:
    transform = ResizeTransform(200, 100, 64, "pad")
    assert transform.apply(Box(-10, -10, 250, 50)) == Box(0, 16, 64, 32)
    assert transform.invert(Box(0, 0, 64, 64)) == Box(0, 0, 200, 100)
    assert ResizeTransform(30, 40, None).apply(Box(5, 5, 90, 90)) == Box(5, 5, 30, 40)
    with pytest.raises(FormatError):
        ResizeTransform(10, 10, 64, cast(ResizeMode, "crop"))
    with pytest.raises(FormatError):
        ResizeTransform(0, 10, 64)


# --- YOLO ------------------------------------------------------------------------------


def test_yolo_export_writes_the_ultralytics_layout(tmp_path: Path) -> None:
    summary = export_yolo(DATASET, CLASSES, FolderSink(tmp_path), size=None, metadata={"v": 1})
    files = _files(tmp_path)
    assert sorted(files) == [
        "data.yaml",
        "labels/test/d.txt",
        "labels/training/a.txt",
        "labels/training/b.txt",
        "labels/validation/c.txt",
        MANIFEST_NAME,
    ]
    # Class id, then centre and size normalised to the image, 6 decimals; sorted by
    # class; the box reaching past the image is clipped to it; no image-level finding.
    assert files["labels/training/a.txt"] == b"0 0.500000 0.500000 0.500000 0.500000\n"
    assert files["labels/training/b.txt"] == (
        b"0 0.916667 0.968750 0.166667 0.062500\n1 0.208333 0.375000 0.250000 0.500000\n"
    )
    assert files["labels/validation/c.txt"] == b""  # background image: empty, not absent
    assert yaml.safe_load(files["data.yaml"]) == {
        "path": ".",
        "train": "images/training",
        "val": "images/validation",
        "test": "images/test",
        "splits": {
            "training": "images/training",
            "validation": "images/validation",
            "test": "images/test",
        },
        "nc": 3,
        "names": CLASSES,
    }
    assert summary.images_per_split == {"training": 2, "validation": 1, "test": 1}
    assert summary.boxes_per_split == {"training": 3, "validation": 0, "test": 1}
    assert (summary.boxes_written, summary.image_level_findings) == (4, 1)
    assert summary.files_written == len(files)


def test_yolo_letterbox_puts_each_box_on_its_pixels(tmp_path: Path) -> None:
    export_yolo(DATASET, CLASSES, FolderSink(tmp_path), render=render, size=64)
    for image in DATASET:
        with Image.open(tmp_path / f"images/{image.split}/{image.stem}.png") as exported:
            assert exported.size == (64, 64)
            pixels = np.asarray(exported).astype(int)
        text = (tmp_path / f"labels/{image.split}/{image.stem}.txt").read_text()
        expected = np.zeros((64, 64), dtype=bool)
        for _, box in read_yolo_labels(text, 64, 64, CLASSES):
            # The sample boxes land on whole output pixels, so the label's edges are
            # pixel boundaries: check them against the resampled rectangle.
            edges = [box.x_min, box.y_min, box.x_max, box.y_max]
            assert all(abs(edge - round(edge)) < 1e-4 for edge in edges)
            x0, y0, x1, y1 = (round(edge) for edge in edges)
            expected[y0:y1, x0:x1] = True
        inside = ~_within(~expected, 2)
        assert (pixels[inside] == 255).all()  # two pixels in from every edge: bright
        assert (pixels[~_within(expected, 2)] == 0).all()  # two out, and the padding: black
        # At each edge (away from corners) the symmetric filter splits the step between
        # the two pixels on either side, so they add up to one bright pixel: a box one
        # pixel off, in any direction, fails here.
        edges_checked = 0
        for grid, mask, core in ((pixels, expected, inside), (pixels.T, expected.T, inside.T)):
            rows, columns = np.nonzero(mask[:, 1:] != mask[:, :-1])
            for row, column in zip(rows, columns + 1, strict=True):
                if core[row].any():
                    assert abs(grid[row, column] + grid[row, column - 1] - 255) <= 2
                    edges_checked += 1
        assert edges_checked >= 4 * expected.any()


def test_yolo_labels_read_back_and_reject_bad_lines() -> None:
    assert read_yolo_labels("1 0.5 0.25 0.5 0.5\n\n", 200, 100, CLASSES) == [
        ("mass", Box(50, 0, 150, 50))
    ]
    for bad in ["0 0.5 0.5 0.1", "x 0.5 0.5 0.1 0.1", "3 0.5 0.5 0.1 0.1"]:
        with pytest.raises(FormatError):
            read_yolo_labels(bad, 10, 10, CLASSES)


# --- COCO ------------------------------------------------------------------------------


def test_coco_export_loads_in_pycocotools(tmp_path: Path) -> None:
    export_coco(DATASET, CLASSES, FolderSink(tmp_path), render=render, size=64, mode="stretch")
    coco = COCO(str(tmp_path / "annotations/training.json"))
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == CLASSES
    assert sorted(coco.getImgIds()) == [1, 2]
    licenses = {entry["id"]: entry for entry in coco.dataset["licenses"]}
    (image_a,) = coco.loadImgs([1])
    assert (image_a["file_name"], image_a["width"], image_a["height"]) == ("a.png", 64, 64)
    assert licenses[image_a["license"]]["name"] == LICENSE
    assert image_a["extra"] == {"doi": "10.1000/a", "url": "https://example.org/a"}
    (image_b,) = coco.loadImgs([2])
    assert licenses[image_b["license"]]["url"] == URL_LICENSE
    (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    # 200x100 stretched to 64x64: x scales by 0.32, y by 0.64.
    assert annotation["bbox"] == pytest.approx([16, 16, 32, 32])
    assert annotation["area"] == pytest.approx(32 * 32)
    assert (annotation["iscrowd"], annotation["category_id"]) == (0, 1)
    assert (tmp_path / "images/training/a.png").exists()
    # An image without a license points at 0, an id no license entry has.
    test_split = COCO(str(tmp_path / "annotations/test.json"))
    assert test_split.loadImgs([4])[0]["license"] == 0
    assert test_split.dataset["licenses"] == []


@pytest.mark.parametrize(("size", "mode"), [(None, "pad"), (1024, "pad"), (333, "stretch")])
def test_coco_import_gives_back_the_exported_boxes(
    tmp_path: Path, size: int | None, mode: ResizeMode
) -> None:
    export_coco(DATASET, CLASSES, FolderSink(tmp_path), size=size, mode=mode)
    found: list[tuple[str, str, Box]] = []
    for split in ("training", "validation", "test"):
        contents = read_coco((tmp_path / f"annotations/{split}.json").read_bytes())
        for file_name, class_name, box in contents.boxes:
            width, height = contents.source_sizes[file_name]
            transform = ResizeTransform(width, height, size, mode)
            assert contents.image_sizes[file_name] == transform.output_size
            found.append((file_name, class_name, transform.invert(box)))
    expected = [
        (f"{image.stem}.png", finding.class_name, clip_box(finding.box, image.width, image.height))
        for image in DATASET
        for finding in sorted(image.findings, key=lambda f: CLASSES.index(f.class_name))
        if finding.box is not None
    ]
    assert [(name, cls) for name, cls, _ in found] == [(name, cls) for name, cls, _ in expected]
    for (_, _, back), (_, _, original) in zip(found, expected, strict=True):
        assert _close(back, original, 1e-5)


def test_read_coco_rejects_what_is_not_coco() -> None:
    with pytest.raises(FormatError):
        read_coco(b"not json")
    annotation = {"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}
    orphan = {"images": [], "categories": [], "annotations": [annotation]}
    with pytest.raises(FormatError):
        read_coco(json.dumps(orphan).encode())


# --- reproducibility, manifest, sinks --------------------------------------------------


@pytest.mark.parametrize("export", [export_yolo, export_coco])
def test_exports_are_byte_identical_and_match_their_manifest(
    tmp_path: Path, export: Callable[..., ExportSummary]
) -> None:
    metadata = {"dataset": "demo", "version": "v1", "size": 64, "mode": "pad"}
    for folder, images in (("one", DATASET), ("two", list(reversed(DATASET)))):
        sink = FolderSink(tmp_path / folder)
        summary = export(
            images, CLASSES, sink, render=render, size=64, image_format="jpeg", metadata=metadata
        )
    first, second = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert first == second
    assert not [name for name in first if name.endswith(".tmp")]
    listed, recorded = read_manifest(first[MANIFEST_NAME])
    assert recorded == metadata
    assert set(listed) == set(first) - {MANIFEST_NAME}
    for path, (sha256, size) in listed.items():
        assert (sha256, size) == (hashlib.sha256(first[path]).hexdigest(), len(first[path]))
    assert verify_manifest(first[MANIFEST_NAME], lambda p: first[p]) == []
    assert summary.manifest_sha256 == hashlib.sha256(first[MANIFEST_NAME]).hexdigest()
    tampered = dict(first, **{next(iter(listed)): b"changed"})
    assert verify_manifest(first[MANIFEST_NAME], lambda p: tampered[p]) == [next(iter(listed))]


def test_store_sink_writes_the_same_export_into_the_store(tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri())
    prefix = export_prefix("demo", "v1", "yolo")
    export_yolo(DATASET, CLASSES, StoreSink(store, prefix), render=render, size=64)
    export_yolo(DATASET, CLASSES, FolderSink(tmp_path / "folder"), render=render, size=64)
    in_folder = _files(tmp_path / "folder")
    assert list(store.list(prefix)) == sorted(prefix + name for name in in_folder)
    assert all(store.get_bytes(prefix + name) == data for name, data in in_folder.items())
    manifest = store.get_bytes(prefix + MANIFEST_NAME)
    assert verify_manifest(manifest, lambda p: store.get_bytes(prefix + p)) == []


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/x", "a//b", "a\\b", "c:x", ""])
def test_sinks_refuse_paths_that_leave_the_export(tmp_path: Path, path: str) -> None:
    store = open_store((tmp_path / "store").as_uri())
    for sink in (FolderSink(tmp_path / "out"), StoreSink(store, "exports/demo/v1/yolo")):
        with pytest.raises(StorageError):
            sink.write(path, b"data")
    assert not (tmp_path / "x").exists()
    assert _files(tmp_path / "out") == {}
    with pytest.raises(StorageError):
        export_prefix("..", "v1", "yolo")


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    unknown = _image(9, "z", "training", (10, 10), ("fracture", (1, 1, 5, 5)))
    twin = _image(8, "a", "training", (10, 10))
    bad_stem = _image(7, "../a", "training", (10, 10))
    for images in ([*DATASET, unknown], [*DATASET, twin], [bad_stem]):
        with pytest.raises(FormatError):
            export_yolo(images, CLASSES, FolderSink(tmp_path))
    not_json = _image(5, "n", "training", (10, 10), extra={"when": object()})
    with pytest.raises(FormatError):
        export_coco([*DATASET, not_json], CLASSES, FolderSink(tmp_path), render=render)
    with pytest.raises(FormatError):
        export_yolo(DATASET, CLASSES, FolderSink(tmp_path), metadata={"when": object()})
    assert _files(tmp_path) == {}
    outside = _image(6, "o", "training", (10, 10), ("mass", (20, 20, 30, 30)))
    summary = export_coco([outside], CLASSES, FolderSink(tmp_path), size=None)
    assert (summary.boxes_written, summary.boxes_skipped) == (0, 1)
    with pytest.raises(FormatError):
        export_coco([outside], CLASSES, FolderSink(tmp_path / "x"), image_format=cast(Any, "gif"))
