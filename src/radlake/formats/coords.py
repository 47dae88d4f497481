"""Exact box conversions (pixel, YOLO, COCO) and the resize every export applies.

Forms of one box in a W x H image (DESIGN.md "Coordinates are exact"):

    pixel   Box(x_min, y_min, x_max, y_max), continuous corners: the whole image is
            (0, 0, W, H)
    YOLO    (x_centre / W, y_centre / H, width / W, height / H)
    COCO    [x_min, y_min, width, height] in pixels

The conversions are plain arithmetic: they never clip, so they round-trip any box
up to float rounding. Clipping happens in `clip_box` and in `ResizeTransform`,
which is what exporters use, because YOLO and COCO consumers expect boxes inside
the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from radlake.domain import Box
from radlake.formats.model import ExportImage, FormatError, check_images, image_sort_key

ResizeMode = Literal["pad", "stretch"]
YoloBox = tuple[float, float, float, float]
CocoBox = tuple[float, float, float, float]


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise FormatError(f"expected a positive image size, got {width}x{height}")


def box_to_yolo(box: Box, width: float, height: float) -> YoloBox:
    """(x_centre, y_centre, width, height) normalised by the image size; no clipping.

    Raises:
        FormatError: width or height is not positive.
    """
    _check_size(width, height)
    return (
        (box.x_min + box.x_max) / 2 / width,
        (box.y_min + box.y_max) / 2 / height,
        (box.x_max - box.x_min) / width,
        (box.y_max - box.y_min) / height,
    )


def yolo_to_box(yolo: YoloBox, width: float, height: float) -> Box:
    """The pixel box of a normalised YOLO box in a width x height image.

    Raises:
        FormatError: width or height is not positive.
    """
    _check_size(width, height)
    x_centre, y_centre, box_width, box_height = yolo
    half_width, half_height = box_width * width / 2, box_height * height / 2
    return Box(
        x_centre * width - half_width,
        y_centre * height - half_height,
        x_centre * width + half_width,
        y_centre * height + half_height,
    )


def box_to_coco(box: Box) -> CocoBox:
    """COCO's [x_min, y_min, width, height] of a pixel box (no clipping)."""
    return (box.x_min, box.y_min, box.x_max - box.x_min, box.y_max - box.y_min)


def coco_to_box(coco: CocoBox) -> Box:
    """The pixel box of a COCO [x_min, y_min, width, height]."""
    x_min, y_min, box_width, box_height = coco
    return Box(x_min, y_min, x_min + box_width, y_min + box_height)


def clip_box(box: Box, width: float, height: float) -> Box:
    """box limited to (0, 0, width, height); a box outside ends with zero area."""
    return Box(*_clipped(box.x_min, box.y_min, box.x_max, box.y_max, width, height))


def _clipped(
    x_min: float, y_min: float, x_max: float, y_max: float, width: float, height: float
) -> tuple[float, float, float, float]:
    # Conditionals rather than min/max: this runs once per box of an export. A NaN
    # fails every comparison and stays NaN, so callers can tell and skip the box.
    x_min = 0.0 if x_min < 0.0 else width if x_min > width else x_min
    y_min = 0.0 if y_min < 0.0 else height if y_min > height else y_min
    x_max = x_min if x_max < x_min else width if x_max > width else x_max
    y_max = y_min if y_max < y_min else height if y_max > height else y_max
    return (x_min, y_min, x_max, y_max)


@dataclass(frozen=True, slots=True)
class ResizeTransform:
    """Maps a source_width x source_height image onto the image an export writes.

    mode "pad" (letterbox) scales the long side to `size`, keeps the aspect ratio
    and centres the result on a black size x size canvas; "stretch" scales each
    axis to `size` independently; `size` None keeps the source unchanged. The
    content rectangle's sides are whole pixels, and box coordinates use the exact
    scale of that rectangle, so a transformed box lands on the pixels that
    `resize_image` moved there.

    `apply` clips the box to the source image first and `invert` clips to the
    content rectangle first, so both always return boxes inside their image.

    Raises (on construction):
        FormatError: a size is not positive or mode is not 'pad' or 'stretch'.
    """

    source_width: int
    source_height: int
    size: int | None = 1024
    mode: ResizeMode = "pad"
    output_width: int = field(init=False)
    output_height: int = field(init=False)
    content_width: int = field(init=False)
    content_height: int = field(init=False)
    offset_x: int = field(init=False)
    offset_y: int = field(init=False)
    scale_x: float = field(init=False)
    scale_y: float = field(init=False)

    def __post_init__(self) -> None:
        width, height, size = self.source_width, self.source_height, self.size
        _check_size(width, height)
        if self.mode not in ("pad", "stretch"):
            raise FormatError(f"expected resize mode 'pad' or 'stretch', got {self.mode!r}")
        if size is not None and size <= 0:
            raise FormatError(f"expected a positive export size or None, got {size}")
        if size is None:
            content, output = (width, height), (width, height)
        elif self.mode == "stretch":
            content, output = (size, size), (size, size)
        else:
            longest = max(width, height)
            content = (
                max(1, round(width * size / longest)),
                max(1, round(height * size / longest)),
            )
            output = (size, size)
        # object.__setattr__: the derived fields of a frozen dataclass are set once, here.
        values = {
            "output_width": output[0],
            "output_height": output[1],
            "content_width": content[0],
            "content_height": content[1],
            "offset_x": (output[0] - content[0]) // 2,
            "offset_y": (output[1] - content[1]) // 2,
            "scale_x": content[0] / width,
            "scale_y": content[1] / height,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the exported image."""
        return (self.output_width, self.output_height)

    @property
    def is_identity(self) -> bool:
        return self.output_size == (self.source_width, self.source_height) and (
            self.content_width,
            self.content_height,
        ) == (self.source_width, self.source_height)

    def apply(self, box: Box) -> Box:
        """box (source pixels, clipped to the source image) in output pixels."""
        x_min, y_min, x_max, y_max = _clipped(
            box.x_min, box.y_min, box.x_max, box.y_max, self.source_width, self.source_height
        )
        sx, sy, ox, oy = self.scale_x, self.scale_y, self.offset_x, self.offset_y
        return Box(x_min * sx + ox, y_min * sy + oy, x_max * sx + ox, y_max * sy + oy)

    def invert(self, box: Box) -> Box:
        """box (output pixels, clipped to the content rectangle) in source pixels."""
        ox, oy, sx, sy = self.offset_x, self.offset_y, self.scale_x, self.scale_y
        x_min, y_min, x_max, y_max = _clipped(
            box.x_min - ox,
            box.y_min - oy,
            box.x_max - ox,
            box.y_max - oy,
            self.content_width,
            self.content_height,
        )
        return Box(x_min / sx, y_min / sy, x_max / sx, y_max / sy)

    def resize_image(self, image: Image.Image) -> Image.Image:
        """image (at source size) resized, and padded with black in "pad" mode.

        Bilinear resampling: Pillow widens its support when shrinking (so it
        averages like an area filter) and it has no negative lobes, so intensities
        stay in range and the padding stays exactly black.

        Raises:
            FormatError: image is not source_width x source_height.
        """
        if image.size != (self.source_width, self.source_height):
            raise FormatError(
                f"expected a rendered image of {self.source_width}x{self.source_height}, "
                f"got {image.size[0]}x{image.size[1]}"
            )
        if self.is_identity:
            return image
        content = image.resize((self.content_width, self.content_height), Image.Resampling.BILINEAR)
        if content.size == self.output_size:
            return content
        canvas = Image.new(image.mode, self.output_size)  # zero: black in every mode
        canvas.paste(content, (self.offset_x, self.offset_y))
        return canvas


@dataclass(frozen=True, slots=True)
class PlacedImage:
    """One image ready to write: its transform and its boxes in output pixels,
    as (class id, box) sorted by class then position."""

    image: ExportImage
    transform: ResizeTransform
    boxes: list[tuple[int, Box]]


@dataclass(frozen=True, slots=True)
class Placement:
    """Every image of an export, sorted by split and stem, with what was left out."""

    images: list[PlacedImage]
    image_level_findings: int
    boxes_skipped: int


def place_images(
    images: Sequence[ExportImage],
    class_ids: dict[str, int],
    size: int | None,
    mode: ResizeMode,
) -> Placement:
    """Sort images, transform their boxes to the exported frame and count what is dropped.

    Boxes are clipped to the image; one with no area left (outside the image,
    inverted, not finite) is counted in `boxes_skipped`, and a finding without a
    box in `image_level_findings`, whatever its class.

    Raises:
        FormatError: from `check_images`, a bad size or mode, a boxed finding whose
            class is not in class_ids, or a finding filed under another image.
    """
    check_images(images)
    ResizeTransform(1, 1, size, mode)  # checks size and mode even when images is empty
    # Exports of one dataset share a handful of sizes: one transform per size.
    transforms: dict[tuple[int, int], ResizeTransform] = {}
    placed: list[PlacedImage] = []
    image_level = skipped = 0
    for image in sorted(images, key=image_sort_key):
        shape = (image.width, image.height)
        transform = transforms.get(shape)
        if transform is None:
            transform = transforms[shape] = ResizeTransform(image.width, image.height, size, mode)
        boxes: list[tuple[int, Box]] = []
        for finding in image.findings:
            if finding.image_id != image.image_id:
                raise FormatError(
                    f"a finding of image {finding.image_id} is filed under image {image.image_id}"
                )
            if finding.box is None:
                image_level += 1
                continue
            class_id = class_ids.get(finding.class_name)
            if class_id is None:
                raise FormatError(
                    f"image {image.image_id}: class {finding.class_name[:80]!r} is not in the "
                    f"export's class list ({len(class_ids)} classes)"
                )
            box = transform.apply(finding.box)
            # Written this way round so NaN coordinates count as skipped, not kept.
            if box.x_min < box.x_max and box.y_min < box.y_max:
                boxes.append((class_id, box))
            else:
                skipped += 1
        boxes.sort(key=_box_order)
        placed.append(PlacedImage(image, transform, boxes))
    return Placement(placed, image_level, skipped)


def _box_order(item: tuple[int, Box]) -> tuple[int, float, float, float, float]:
    class_id, box = item
    return (class_id, box.x_min, box.y_min, box.x_max, box.y_max)
