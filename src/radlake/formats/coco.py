"""COCO (object detection) export and import.

Layout of an export, relative to the sink's root:

    images/<split>/<stem>.png|jpg     only when a render callable is given
    annotations/<split>.json          one COCO file per split
    manifest.json                     written last (see manifest.py)

Conventions, so a file says exactly what it means:
- `bbox` is [x_min, y_min, width, height] in the exported image's pixels (after
  resize and padding); `area` is width * height (there is no segmentation);
  `iscrowd` is 0; floats are written with 6 decimals.
- category ids are class index + 1 (COCO keeps 0 free); supercategory "finding".
- image ids are radlake's image ids; annotation ids count from 1 in each file.
- licenses: each distinct license text gets an id (1, 2, ... in sorted order,
  the same in every split's file); an image points at its license's id, and an
  image without a recorded license has `license: 0`, an id no entry uses, rather
  than a made-up license. A license that is a URL is also its entry's `url`.
- a dataset with no box at all still gets its files (images, categories), and
  says so: summary notes, manifest metadata `notes`, README.txt and each file's
  `info.notes`.
- radlake adds `source_width`/`source_height` (the stored image's size, to map
  boxes back) and `extra` (the caller's per-image fields: doi, url, ...) to each
  image; COCO defines neither key, so COCO readers ignore them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from radlake.domain import Box
from radlake.formats.coords import PlacedImage, ResizeMode, coco_to_box, place_images
from radlake.formats.manifest import README_NAME, ManifestSink, canonical_json, readme_text
from radlake.formats.model import (
    ExportImage,
    ExportSummary,
    FormatError,
    ImageFormatName,
    RenderFn,
    check_image_format,
    class_index,
    encode_image,
    no_box_notes,
)
from radlake.formats.sink import Sink

NO_LICENSE = 0
SUPERCATEGORY = "finding"


def export_coco(
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
    """Write one COCO file per split (and the images, when render is given) into sink.

    Arguments as for `export_yolo`; metadata also goes into each file's `info`.

    Raises:
        FormatError: bad input (see `place_images`, `class_index`), a rendered
            image of the wrong size, or extra/metadata values that are not
            JSON-compatible.
        StorageError: the sink failed.
    """
    extension = check_image_format(image_format)
    placement = place_images(images, class_index(class_names), size, mode)
    metadata = dict(metadata or {})
    license_ids = {
        text: number
        for number, text in enumerate(
            sorted({image.license for image in images if image.license is not None}), start=1
        )
    }
    categories = [
        {"id": class_id + 1, "name": name, "supercategory": SUPERCATEGORY}
        for class_id, name in enumerate(class_names)
    ]
    # Every JSON text is built before the first write, so extras or metadata that
    # JSON cannot carry fail the export before it leaves anything behind.
    files = _split_files(placement.images, extension, license_ids)
    notes = no_box_notes(
        len(placement.images),
        sum(len(f.annotations) for f in files.values()),
        placement.image_level_findings,
        placement.boxes_skipped,
    )
    if notes:
        metadata["notes"] = notes
    documents: dict[str, bytes] = {}
    for split, split_file in files.items():
        info = {"description": "radlake COCO export", "split": split, "metadata": metadata}
        if notes:
            info["notes"] = notes
        licenses = [
            {"id": number, "name": text, "url": text if _is_url(text) else ""}
            for text, number in license_ids.items()
            if number in split_file.licenses
        ]
        documents[split] = split_file.encode(categories, info, licenses)
    out = ManifestSink(sink)
    if render is not None:
        for placed in placement.images:
            image = placed.image
            pixels = placed.transform.resize_image(render(image))
            out.write(
                f"images/{image.split}/{image.stem}.{extension}",
                encode_image(pixels, image_format),
            )
    for split, document in documents.items():
        out.write(f"annotations/{split}.json", document)
    if notes:
        out.write(README_NAME, readme_text("COCO", notes))
    manifest = out.write_manifest(metadata)
    return ExportSummary(
        format="coco",
        files_written=len(out.files) + 1,
        bytes_written=out.bytes_written + len(manifest),
        images_per_split={split: len(file.images) for split, file in files.items()},
        boxes_per_split={split: len(file.annotations) for split, file in files.items()},
        image_level_findings=placement.image_level_findings,
        boxes_skipped=placement.boxes_skipped,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        notes=tuple(notes),
    )


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _split_files(
    placed_images: list[PlacedImage], extension: str, license_ids: dict[str, int]
) -> dict[str, _SplitFile]:
    """The image and annotation lines of each split's file."""
    files: dict[str, _SplitFile] = {}
    for placed in placed_images:
        image = placed.image
        split_file = files.get(image.split)
        if split_file is None:
            split_file = files[image.split] = _SplitFile()
        width, height = placed.transform.output_size
        license_id = NO_LICENSE if image.license is None else license_ids[image.license]
        split_file.licenses.add(license_id)
        extra = canonical_json(dict(image.extra)) if image.extra else "{}"
        file_name = json.dumps(f"{image.stem}.{extension}")
        split_file.images.append(
            _IMAGE % (extra, file_name, height, image.image_id, license_id)
            + _SOURCE % (image.height, image.width, width)
        )
        annotations = split_file.annotations
        for class_id, box in placed.boxes:
            box_width, box_height = box.x_max - box.x_min, box.y_max - box.y_min
            annotations.append(
                _ANNOTATION
                % (
                    box_width * box_height,
                    box.x_min,
                    box.y_min,
                    box_width,
                    box_height,
                    class_id + 1,
                    len(annotations) + 1,
                    image.image_id,
                )
            )
    return files


# Images and annotations are formatted by hand, one a line, with keys in sorted
# order (what json.dumps(sort_keys=True) would write) and floats at a fixed 6
# decimals: dict building plus json.dumps cost ~3x more for 15,000 images.
_IMAGE = '{"extra":%s,"file_name":%s,"height":%d,"id":%d,"license":%d,'
_SOURCE = '"source_height":%d,"source_width":%d,"width":%d}'
_ANNOTATION = (
    '{"area":%.6f,"bbox":[%.6f,%.6f,%.6f,%.6f],"category_id":%d,"id":%d,"image_id":%d,"iscrowd":0}'
)


@dataclass(slots=True)
class _SplitFile:
    """The COCO file of one split while it is being built."""

    images: list[str] = field(default_factory=list)
    annotations: list[str] = field(default_factory=list)
    licenses: set[int] = field(default_factory=set)

    def encode(
        self, categories: list[dict[str, Any]], info: dict[str, Any], licenses: list[Any]
    ) -> bytes:
        # Top-level keys in sorted order too: annotations, categories, images, info, licenses.
        annotations = ",\n".join(self.annotations)
        images = ",\n".join(self.images)
        text = (
            f'{{"annotations":[\n{annotations}\n],"categories":{canonical_json(categories)},'
            f'"images":[\n{images}\n],"info":{canonical_json(info)},'
            f'"licenses":{canonical_json(licenses)}}}\n'
        )
        return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class CocoContents:
    """What `read_coco` found: boxes as (file name, class name, box in the file's
    pixels), each image's size, and for radlake exports the stored size too."""

    boxes: list[tuple[str, str, Box]]
    image_sizes: dict[str, tuple[int, int]]
    source_sizes: dict[str, tuple[int, int]]


def read_coco(data: bytes) -> CocoContents:
    """The boxes and image sizes of a COCO detection file (any producer).

    Boxes come back in the order of `annotations`, in the exported image's pixels;
    `ResizeTransform(*source_sizes[name], size, mode).invert(box)` maps one back
    to the stored image.

    Raises:
        FormatError: data is not COCO JSON, or an annotation names an unknown
            image or category.
    """
    try:
        document = json.loads(data)
        categories = {int(entry["id"]): str(entry["name"]) for entry in document["categories"]}
        names: dict[int, str] = {}
        image_sizes: dict[str, tuple[int, int]] = {}
        source_sizes: dict[str, tuple[int, int]] = {}
        for entry in document["images"]:
            name = str(entry["file_name"])
            names[int(entry["id"])] = name
            image_sizes[name] = (int(entry["width"]), int(entry["height"]))
            if "source_width" in entry:
                source_sizes[name] = (int(entry["source_width"]), int(entry["source_height"]))
        boxes: list[tuple[str, str, Box]] = []
        for entry in document["annotations"]:
            image_id, category_id = int(entry["image_id"]), int(entry["category_id"])
            if image_id not in names or category_id not in categories:
                raise FormatError(
                    f"annotation {entry.get('id')!r} names image {image_id} or category "
                    f"{category_id}, which the file does not define"
                )
            x_min, y_min, width, height = (float(value) for value in entry["bbox"])
            box = coco_to_box((x_min, y_min, width, height))
            boxes.append((names[image_id], categories[category_id], box))
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"expected COCO detection JSON: {exc!r}") from exc
    return CocoContents(boxes, image_sizes, source_sizes)
