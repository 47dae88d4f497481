"""Classification exports (issue 9): a labels.csv per split, or an ImageFolder tree.

`export_classification`, relative to the sink's root:

    <split>/images/<stem>.png|jpg     only when a render callable is given
    <split>/labels.csv                one row per image (see below)
    manifest.json                     written last (see manifest.py)

labels.csv columns: `file` (the image's path from the export's root), `patient`
(the keyed pseudonym, empty for images without one), `split`, one 0/1 column per
class (1: the image carries the class, as an image-level finding or a box, from any
reader of the version's label set), then the asked-for source attributes as text.
Rows are sorted by file; UTF-8, "\\n" line ends, quoting only where CSV needs it.

`export_imagefolder` writes the layout torchvision's `ImageFolder` reads:

    <split>/<class folder>/<stem>.png|jpg   one class per image
    index.csv                               file, split, class of every image kept
    classes.csv                             class folder -> class name
    skipped.csv                             images left out, and why (when any)
    manifest.json

ImageFolder is single-label: an image whose classes form one hierarchy path
('Pneumonia', 'Pneumonia/Viral', 'Pneumonia/Viral/COVID-19') goes under the deepest;
an image with several unrelated classes, or none, is listed in skipped.csv (and
counted in the summary), never dropped silently. A class name becomes one folder
name ('/' and other unsafe characters become '_').
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from radlake.formats.coords import PlacedImage, ResizeMode, place_images
from radlake.formats.manifest import ManifestSink, canonical_json
from radlake.formats.model import (
    ExportImage,
    ExportSummary,
    FormatError,
    ImageFormatName,
    RenderFn,
    check_image_format,
    class_index,
    encode_image,
)
from radlake.formats.sink import Sink

FIXED_COLUMNS = ("file", "patient", "split")
_UNSAFE_FOLDER = re.compile(r"[^A-Za-z0-9_.+()\[\] -]")


def _csv(rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _image_classes(image: ExportImage, known: Mapping[str, int]) -> set[str]:
    """The classes an image carries, checked against the class list."""
    found = {finding.class_name for finding in image.findings}
    unknown = sorted(found - known.keys())
    if unknown:
        raise FormatError(
            f"image {image.image_id}: class {unknown[0][:80]!r} is not in the export's "
            f"class list ({len(known)} classes)"
        )
    return found


def _check_columns(class_names: Sequence[str], attributes: Sequence[str]) -> None:
    columns = [*FIXED_COLUMNS, *class_names, *attributes]
    seen: set[str] = set()
    for column in columns:
        if not column.strip():
            raise FormatError("expected non-empty attribute names")
        if column in seen:
            raise FormatError(
                f"column {column[:80]!r} would appear twice in labels.csv (a class, an "
                f"attribute or one of {', '.join(FIXED_COLUMNS)})"
            )
        seen.add(column)


def export_classification(
    images: Sequence[ExportImage],
    class_names: Sequence[str],
    sink: Sink,
    *,
    attributes: Sequence[str] = (),
    render: RenderFn | None = None,
    size: int | None = 1024,
    mode: ResizeMode = "pad",
    image_format: ImageFormatName = "png",
    metadata: Mapping[str, object] | None = None,
) -> ExportSummary:
    """Write a labels.csv per split (and the images, when render is given).

    Arguments as for `export_yolo`; attributes name the columns taken from each
    image's `attributes` (missing values are empty).

    Raises:
        FormatError: bad input (see `place_images`, `class_index`), a class not in
            class_names, a column name used twice, or metadata JSON cannot carry.
        StorageError: the sink failed.
    """
    extension = check_image_format(image_format)
    known = class_index(class_names)
    _check_columns(class_names, attributes)
    placed = place_images(_without_boxes(images), known, size, mode)
    metadata = dict(metadata or {})
    canonical_json(metadata)
    header = [*FIXED_COLUMNS, *class_names, *attributes]
    rows: dict[str, list[list[str]]] = {}
    by_id = {image.image_id: image for image in images}
    for item in placed.images:
        image = by_id[item.image.image_id]
        carried = _image_classes(image, known)
        rows.setdefault(image.split, []).append(
            [
                f"{image.split}/images/{image.stem}.{extension}",
                image.patient or "",
                image.split,
                *("1" if name in carried else "0" for name in class_names),
                *(image.attributes.get(name, "") for name in attributes),
            ]
        )
    out = ManifestSink(sink)
    if render is not None:
        for item in placed.images:
            pixels = item.transform.resize_image(render(by_id[item.image.image_id]))
            out.write(
                f"{item.image.split}/images/{item.image.stem}.{extension}",
                encode_image(pixels, image_format),
            )
    for split, split_rows in rows.items():
        out.write(f"{split}/labels.csv", _csv([header, *sorted(split_rows)]))
    manifest = out.write_manifest(metadata)
    return ExportSummary(
        format="classification",
        files_written=len(out.files) + 1,
        bytes_written=out.bytes_written + len(manifest),
        images_per_split={split: len(r) for split, r in rows.items()},
        boxes_per_split={split: 0 for split in rows},
        image_level_findings=sum(len(image.findings) for image in images),
        boxes_skipped=0,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
    )


def _without_boxes(images: Sequence[ExportImage]) -> list[ExportImage]:
    """The images with no findings: placement here only sorts, checks and resizes
    (a class is a column, so boxes off the image must not be dropped or counted)."""
    return [replace(image, findings=()) for image in images]


def single_class(classes: set[str]) -> str | None:
    """The one class of an image, or None: several classes count as one when they
    form a single hierarchy path, and the deepest names it."""
    if not classes:
        return None
    deepest = max(classes, key=lambda name: (name.count("/"), len(name), name))
    if all(deepest == name or deepest.startswith(f"{name}/") for name in classes):
        return deepest
    return None


def class_folder(name: str) -> str:
    """A class name as one safe folder name ('Pneumonia/Viral' -> 'Pneumonia_Viral')."""
    folder = _UNSAFE_FOLDER.sub("_", name).strip(" .") or "_"
    return folder[:120]


def export_imagefolder(
    images: Sequence[ExportImage],
    class_names: Sequence[str],
    sink: Sink,
    *,
    render: RenderFn | None = None,
    size: int | None = 1024,
    mode: ResizeMode = "pad",
    image_format: ImageFormatName = "png",
    metadata: Mapping[str, object] | None = None,
) -> ExportSummary:
    """Write <split>/<class>/<stem> images (labels only: the lists, no images).

    Images that are not single-label are listed in skipped.csv with the reason.

    Raises:
        FormatError: bad input, a class not in class_names, two class names that
            become the same folder, no single-label image at all (use
            classification instead), or metadata JSON cannot carry.
        StorageError: the sink failed.
    """
    extension = check_image_format(image_format)
    known = class_index(class_names)
    folders: dict[str, str] = {}
    for name in class_names:
        folder = class_folder(name)
        if folder in folders:
            raise FormatError(
                f"classes {folders[folder][:80]!r} and {name[:80]!r} would share the folder "
                f"{folder!r}"
            )
        folders[folder] = name
    placed = place_images(_without_boxes(images), known, size, mode)
    metadata = dict(metadata or {})
    by_id = {image.image_id: image for image in images}
    kept: list[tuple[ExportImage, PlacedImage, str, str]] = []  # image, placement, path, class
    skipped: list[list[str]] = []
    for item in placed.images:
        image = by_id[item.image.image_id]
        carried = _image_classes(image, known)
        single = single_class(carried)
        if single is None:
            reason = "several classes" if carried else "no class"
            file = f"{image.split}/{image.stem}.{extension}"
            skipped.append([file, image.split, reason, "; ".join(sorted(carried))])
            continue
        path = f"{image.split}/{class_folder(single)}/{image.stem}.{extension}"
        kept.append((image, item, path, single))
    if images and not kept:
        raise FormatError(
            f"no single-label image among {len(images)}: ImageFolder needs one class per "
            "image; export with --format classification for multi-label sets"
        )
    notes: list[str] = []
    if skipped:
        notes.append(
            f"{len(skipped)} of {len(images)} images are not single-label and are left out: "
            "see skipped.csv"
        )
        metadata["notes"] = notes
    canonical_json(metadata)
    out = ManifestSink(sink)
    images_per_split: dict[str, int] = {}
    for image, item, path, _ in kept:
        if render is not None:
            pixels = item.transform.resize_image(render(image))
            out.write(path, encode_image(pixels, image_format))
        images_per_split[image.split] = images_per_split.get(image.split, 0) + 1
    index = [[path, image.split, label] for image, _, path, label in kept]
    out.write("index.csv", _csv([["file", "split", "class"], *sorted(index)]))
    out.write(
        "classes.csv",
        _csv([["folder", "class"], *([class_folder(n), n] for n in class_names)]),
    )
    if skipped:
        out.write("skipped.csv", _csv([["file", "split", "reason", "classes"], *skipped]))
    manifest = out.write_manifest(metadata)
    return ExportSummary(
        format="imagefolder",
        files_written=len(out.files) + 1,
        bytes_written=out.bytes_written + len(manifest),
        images_per_split=images_per_split,
        boxes_per_split={split: 0 for split in images_per_split},
        image_level_findings=sum(len(image.findings) for image in images),
        boxes_skipped=0,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        notes=tuple(notes),
        images_skipped=len(skipped),
    )
