"""What the exporters take and give back, and the checks every export shares.

The exporters never touch the catalog: a caller (the export pipeline, a test, a
script) turns dataset members into `ExportImage` values and hands them over with the
class list. Everything here is plain data plus validation, so the format modules stay
small and agree on names, order and errors.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from PIL import Image

from radlake.domain import Finding
from radlake.errors import RadlakeError

ImageFormatName = Literal["png", "jpeg"]
IMAGE_EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg"}

# Radlake's split names map onto the keys trainers (Ultralytics) read from data.yaml.
TRAINER_SPLIT_KEYS: dict[str, str] = {"training": "train", "validation": "val", "test": "test"}
_SPLIT_RANK = {name: rank for rank, name in enumerate(TRAINER_SPLIT_KEYS)}

# A split or stem becomes one path component: no separators (':' included, a drive on
# Windows), no leading dot (hidden files and '..'), no control characters that would
# break a label or listing line.
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNSAFE_STEM = re.compile(r"^\.|[/\\:\x00-\x1f\x7f]")
_UNSAFE_STEM_CHARS = re.compile(r"[/\\:\x00-\x1f\x7f]")
# File systems cap a name at 255 bytes; a stem leaves room for "-<id>" and ".png".
_MAX_STEM_BYTES = 200


def safe_stem(name: str) -> str:
    """The export file stem for a source file name: its stem with spaces and the
    characters a path component cannot hold (separators, ':', control characters) as
    '_', no leading dot, at most 200 UTF-8 bytes. A source may name a file anything
    (a newline, a 300-character title); the export must still be writable."""
    stem = PurePosixPath(name.replace("\\", "/")).stem
    stem = _UNSAFE_STEM_CHARS.sub("_", stem.replace(" ", "_")).lstrip(".")
    return stem.encode()[:_MAX_STEM_BYTES].decode(errors="ignore")


class FormatError(RadlakeError, ValueError):
    """Export input or an imported file does not fit the format (bad box, unknown
    class, duplicate stem, malformed label line or COCO JSON)."""


@dataclass(frozen=True, slots=True)
class ExportImage:
    """One dataset member as an exporter sees it.

    `width` x `height` is the stored image's size, the frame its findings' boxes
    are in; `stem` names its files (`<stem>.png`, `<stem>.txt`) inside its split's
    folders. `extra` holds source fields (doi, url, ...) that COCO carries along.
    `patient` (a keyed pseudonym, never a raw id) and `attributes` (source fields a
    user asked for, as text) go into classification exports' labels.csv.
    """

    image_id: int
    stem: str
    split: str
    width: int
    height: int
    findings: tuple[Finding, ...]
    license: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    patient: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


RenderFn = Callable[[ExportImage], Image.Image]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What one export wrote: counts per split and in total.

    `boxes_skipped` counts boxes with no area left once clipped to the image
    (outside it, inverted or not finite); `image_level_findings` counts findings
    without a box, which neither format writes as boxes. `manifest_sha256`
    identifies the whole export (the manifest hashes every other file). `notes`
    are what a user should know about the export (no boxes at all, a split
    standing in for another in data.yaml, images left out), also written into the
    manifest; `images_skipped` counts images an ImageFolder export left out.
    """

    format: str
    files_written: int
    bytes_written: int
    images_per_split: Mapping[str, int]
    boxes_per_split: Mapping[str, int]
    image_level_findings: int
    boxes_skipped: int
    manifest_sha256: str
    notes: tuple[str, ...] = ()
    images_skipped: int = 0

    @property
    def boxes_written(self) -> int:
        return sum(self.boxes_per_split.values())

    @property
    def images_written(self) -> int:
        return sum(self.images_per_split.values())


def no_box_notes(images: int, boxes: int, image_level: int, skipped: int) -> list[str]:
    """The plain statement a detection export owes when it holds no box (issue 9:
    17 categories, 0 annotations and empty label files, and not a word)."""
    if boxes or not images:
        return []
    if skipped:
        why = f"all {skipped} boxes fell outside their images once clipped"
    elif image_level:
        why = f"the {images} images carry {image_level} image-level findings only"
    else:
        why = f"the {images} images carry no finding"
    return [
        f"no boxes: {why}, so every image is a background image here; "
        "for image-level classes export with --format classification"
    ]


def split_sort_key(split: str) -> tuple[int, str]:
    """training, validation, test first (in that order), other splits by name."""
    return (_SPLIT_RANK.get(split, len(_SPLIT_RANK)), split)


def image_sort_key(image: ExportImage) -> tuple[int, str, str, int]:
    """Exports sort images by split, then stem, so input order never changes bytes."""
    rank, split = split_sort_key(image.split)
    return (rank, split, image.stem, image.image_id)


def check_images(images: Sequence[ExportImage]) -> None:
    """Check names and sizes before anything is written.

    Raises:
        FormatError: a split or stem is not a safe file name, a size is not
            positive, or two images share an id or a (split, stem).
    """
    seen_ids: set[int] = set()
    seen_files: set[tuple[str, str]] = set()
    for image in images:
        if not _SPLIT_NAME.match(image.split):
            raise FormatError(
                f"image {image.image_id}: expected a split name like 'training', "
                f"got {image.split[:80]!r}"
            )
        if not image.stem or _UNSAFE_STEM.search(image.stem):
            raise FormatError(
                f"image {image.image_id}: expected a file stem without separators, ':', control "
                f"characters or a leading dot, got {image.stem[:80]!r}"
            )
        if image.width <= 0 or image.height <= 0:
            raise FormatError(
                f"image {image.image_id}: expected a positive size, got "
                f"{image.width}x{image.height}"
            )
        if image.image_id in seen_ids:
            raise FormatError(f"image id {image.image_id} appears twice in the export")
        if (image.split, image.stem) in seen_files:
            raise FormatError(f"stem {image.stem!r} appears twice in split {image.split!r}")
        seen_ids.add(image.image_id)
        seen_files.add((image.split, image.stem))


def class_index(class_names: Sequence[str]) -> dict[str, int]:
    """Class name to class id (its index).

    Raises:
        FormatError: a name is empty, repeated, or has a line break (it would
            break data.yaml and label lines).
    """
    index: dict[str, int] = {}
    for position, name in enumerate(class_names):
        if not name or "\n" in name or "\r" in name:
            raise FormatError(f"class {position}: expected a one-line name, got {name!r}")
        if name in index:
            raise FormatError(f"class name {name!r} appears twice in the class list")
        index[name] = position
    return index


def check_image_format(image_format: str) -> str:
    """The file extension for image_format.

    Raises:
        FormatError: image_format is neither 'png' nor 'jpeg'.
    """
    if image_format not in IMAGE_EXTENSIONS:
        raise FormatError(f"expected image_format 'png' or 'jpeg', got {image_format!r}")
    return IMAGE_EXTENSIONS[image_format]


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """PNG or JPEG bytes of image, with no metadata so the bytes depend on pixels only.

    Raises:
        FormatError: JPEG asked for pixels it cannot hold (16-bit or float).
    """
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=6)
        return buffer.getvalue()
    if image.mode in ("RGBA", "LA", "P", "CMYK"):
        image = image.convert("RGB")
    if image.mode not in ("L", "RGB"):
        raise FormatError(
            f"JPEG holds 8-bit greyscale or RGB, got mode {image.mode}; export as png "
            "or render 8-bit images"
        )
    # Fixed quality and no optimisation passes: the same pixels always give the same bytes.
    image.save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()
