"""Training samples: letterboxed pixels and exact boxes, and box-exact augmentation.

A sample is made once per image: the stored original rendered at its own size
(through the stored-image service, as exports and inference see it), turned to the
model's channels, and letterboxed onto a size x size canvas of grey 114 with
`formats.coords.ResizeTransform` geometry, so `transform.invert` maps a predicted
box back to the stored image exactly.

Augmentation only scales (each axis), translates, mirrors left-right and changes
brightness and contrast: an axis-aligned affine map keeps a box a box with exact
corners. A mirror turns a left lung into a right one, so it is used only when every
class that names a side has its partner (`mirror_classes`), and the classes of a
mirrored image are swapped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sqlalchemy.orm import Session
from torch import Tensor
from torch.nn import functional

from radlake.catalog.models import DatasetVersion
from radlake.curation.versions import members, version_findings
from radlake.domain import Box
from radlake.errors import ImageError, RenderError
from radlake.formats.coords import ResizeTransform
from radlake.inference.runner import STORED_PIXELS
from radlake.inference.service import catalogued_images
from radlake.pipelines.stored_images import StoredImages
from radlake.training.config import Augment

PAD_VALUE = 114  # ultralytics' letterbox grey: the contract's pad_value


@dataclass(frozen=True, slots=True)
class Sample:
    """One image ready to train on or to evaluate.

    pixels: uint8 [C, S, S]; boxes: float32 [n, 4] x_min, y_min, x_max, y_max in
    letterboxed pixels; classes: int64 [n]; truth: (class id, box) in the stored
    image's pixels, for COCO evaluation.
    """

    key: str
    pixels: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    transform: ResizeTransform
    truth: tuple[tuple[int, Box], ...]


def letterbox(
    image: Image.Image, size: int, channels: int = 1
) -> tuple[np.ndarray, ResizeTransform]:
    """image as uint8 [C, size, size], letterboxed on grey 114, and its transform."""
    picture = image.convert("L" if channels == 1 else "RGB")
    transform = ResizeTransform(picture.width, picture.height, size, "pad")
    content = picture.resize(
        (transform.content_width, transform.content_height), Image.Resampling.BILINEAR
    )
    fill: int | tuple[int, int, int] = PAD_VALUE if channels == 1 else (PAD_VALUE,) * 3
    canvas = Image.new(picture.mode, (size, size), fill)
    canvas.paste(content, (transform.offset_x, transform.offset_y))
    array = np.asarray(canvas, dtype=np.uint8)
    pixels = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels), transform


def make_sample(
    key: str,
    image: Image.Image,
    boxes: Iterable[tuple[int, Box]],
    size: int,
    channels: int = 1,
) -> Sample:
    """A sample of a rendered image and its (class id, box) in the image's pixels.

    Boxes with no area left inside the image are kept in `truth` (the evaluation
    sees what the catalog holds) but not trained on.
    """
    pixels, transform = letterbox(image, size, channels)
    truth = tuple(boxes)
    placed = [(c, transform.apply(b)) for c, b in truth]
    kept = [(c, b) for c, b in placed if b.x_min < b.x_max and b.y_min < b.y_max]
    array = np.array([[b.x_min, b.y_min, b.x_max, b.y_max] for _, b in kept], np.float32)
    return Sample(
        key,
        pixels,
        array.reshape(-1, 4),
        np.array([c for c, _ in kept], np.int64),
        transform,
        truth,
    )


_SIDE = re.compile(r"\b(left|right)\b")


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def mirror_classes(names: Sequence[str]) -> list[int] | None:
    """Class id -> its class in a left-right mirrored image; None when some class
    names a side ("Left Lung", "left-lung") without its partner ("Right Lung"), so a
    mirror could not be labelled."""
    index = {_key(name): i for i, name in enumerate(names)}
    mapping: list[int] = []
    for name in names:
        swapped = _SIDE.sub(lambda m: "right" if m.group(1) == "left" else "left", _key(name))
        if swapped not in index:
            return None
        mapping.append(index[swapped])
    return mapping


@dataclass(frozen=True, slots=True)
class Batch:
    """images float [N, C, S, S] in [0, 1]; boxes [N, M, 4]; classes [N, M] (-1: padding)."""

    images: Tensor
    boxes: Tensor
    classes: Tensor


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples unchanged (evaluation, or before `augment`)."""
    images = torch.from_numpy(np.stack([s.pixels for s in samples])).float() / 255.0
    most = max((len(s.classes) for s in samples), default=0)
    boxes = torch.zeros(len(samples), most, 4)
    classes = torch.full((len(samples), most), -1, dtype=torch.int64)
    for row, sample in enumerate(samples):
        count = len(sample.classes)
        boxes[row, :count] = torch.from_numpy(sample.boxes)
        classes[row, :count] = torch.from_numpy(sample.classes)
    return Batch(images, boxes, classes)


def augment(
    batch: Batch,
    settings: Augment,
    generator: torch.Generator,
    mirror: Sequence[int] | None = None,
) -> Batch:
    """Each image scaled about its centre and shifted, its boxes moved the same way;
    mirrored too (with its classes mapped through `mirror`) when mirror is given.

    The image is resampled with `grid_sample` (align_corners=False: continuous pixel
    coordinates, the same convention as the boxes), so a point at x goes to
    s * (x - S/2) + S/2 + t exactly (s < 0 mirrors); pixels from outside are grey.
    """
    images = batch.images
    count, _, size, _ = images.shape

    def uniform(spread: float) -> Tensor:
        return (torch.rand(count, generator=generator) * 2 - 1) * spread

    base = 1 + uniform(settings.scale)
    stretch = 1 + uniform(settings.aspect)
    scale_x, scale_y = base * stretch, base / stretch
    flipped = torch.zeros(count, dtype=torch.bool)
    if mirror is not None and settings.mirror > 0:
        flipped = torch.rand(count, generator=generator) < settings.mirror
        scale_x = torch.where(flipped, -scale_x, scale_x)
    shift_x, shift_y = uniform(settings.translate) * size, uniform(settings.translate) * size
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = 1 / scale_x
    theta[:, 1, 1] = 1 / scale_y
    theta[:, 0, 2] = -2 * shift_x / (size * scale_x)
    theta[:, 1, 2] = -2 * shift_y / (size * scale_y)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    grey = PAD_VALUE / 255.0
    moved = functional.grid_sample(images - grey, grid, mode="bilinear", align_corners=False) + grey
    contrast = (1 + uniform(settings.contrast)).view(-1, 1, 1, 1)
    brightness = uniform(settings.brightness).view(-1, 1, 1, 1)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    moved = ((moved - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    centre = size / 2
    sx, sy = scale_x.view(-1, 1), scale_y.view(-1, 1)
    tx, ty = shift_x.view(-1, 1), shift_y.view(-1, 1)
    boxes = batch.boxes.clone()
    boxes[..., 0::2] = (boxes[..., 0::2] - centre) * sx.unsqueeze(-1) + centre + tx.unsqueeze(-1)
    boxes[..., 1::2] = (boxes[..., 1::2] - centre) * sy.unsqueeze(-1) + centre + ty.unsqueeze(-1)
    # A mirror swaps which corner is the minimum.
    low_x = torch.minimum(boxes[..., 0], boxes[..., 2])
    boxes[..., 2] = torch.maximum(boxes[..., 0], boxes[..., 2])
    boxes[..., 0] = low_x
    boxes = boxes.clamp(0.0, float(size))
    classes = batch.classes.clone()
    if mirror is not None and bool(flipped.any()):
        table = torch.tensor(list(mirror), dtype=torch.int64)
        swap = flipped.view(-1, 1) & (classes >= 0)
        classes = torch.where(swap, table[classes.clamp(min=0)], classes)
    # A box pushed (almost) out of the picture is no longer an object to find.
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    classes[area < 16.0] = -1
    return Batch(moved, boxes, classes)


def class_index(names: Sequence[str]) -> Mapping[str, int]:
    """Class name -> contiguous id, in the order given (the version's class order)."""
    return {name: index for index, name in enumerate(names)}


@dataclass(frozen=True, slots=True)
class SplitSamples:
    """A split's samples, and how many of its images could not be read (never silent)."""

    samples: list[Sample]
    unreadable: int


def load_split(
    session: Session,
    images: StoredImages,
    version: DatasetVersion,
    split: str,
    class_names: Sequence[str],
    *,
    size: int,
    channels: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> SplitSamples:
    """The samples of one split of a dataset version: each member's stored original
    rendered at its own size (as exports and inference render it) and the version's
    ground-truth boxes (origin ground_truth, in its label set).

    Raises:
        StorageError: the store failed (a bad image is counted, not raised).
    """
    ids = sorted(i for i, s in members(session, version.id).items() if s == split)
    findings = version_findings(session, version, ids)
    index = class_index(class_names)
    rows = catalogued_images(session, ids)
    # Content order, not catalog ids: ids follow the order a lake happened to ingest in
    # (a process pool finishes files in any order), and the sample order decides the
    # batches, so the same seed trained differently in two lakes.
    ids = sorted(ids, key=lambda image_id: rows[image_id].sha256)
    samples: list[Sample] = []
    unreadable = 0
    for done, image_id in enumerate(ids, 1):
        try:
            # The stored grid, as the boxes refer to: inference's own rendering, so a
            # model trains on the pixels it will be served.
            picture = images.render(rows[image_id], STORED_PIXELS).image
        except (ImageError, RenderError):
            unreadable += 1
            continue
        boxes = [
            (index[f.class_name], f.box)
            for f in findings.get(image_id, ())
            if f.box is not None and f.class_name in index
        ]
        samples.append(make_sample(rows[image_id].sha256, picture, boxes, size, channels))
        if progress is not None:
            progress(done, len(ids))
    return SplitSamples(samples, unreadable)
