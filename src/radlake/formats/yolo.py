"""YOLO (Ultralytics) export and label read-back.

Layout of an export, relative to the sink's root:

    images/<split>/<stem>.png|jpg     only when a render callable is given
    labels/<split>/<stem>.txt         one line per box: "class xc yc w h"
    data.yaml                         path, train/val/test, splits, nc, names
    manifest.json                     written last (see manifest.py)

Label values are normalised to the exported image (after resize and padding) and
written with 6 decimals. Every image gets a label file; one without boxes gets an
empty file, which Ultralytics reads as a background image (not a missing label).
Image-level findings (no box) are not boxes and are not written; an export with no
box at all says so (summary notes, manifest metadata `notes`, README.txt).

data.yaml always has `train` and `val` (Ultralytics refuses a file without val) and
`test` when there is one; a missing split is stood in for by another (val by test,
else by train) and the notes say which.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import yaml

from radlake.domain import Box
from radlake.formats.coords import ResizeMode, box_to_yolo, place_images, yolo_to_box
from radlake.formats.manifest import README_NAME, ManifestSink, canonical_json, readme_text
from radlake.formats.model import (
    TRAINER_SPLIT_KEYS,
    ExportImage,
    ExportSummary,
    FormatError,
    ImageFormatName,
    RenderFn,
    check_image_format,
    class_index,
    encode_image,
    no_box_notes,
    split_sort_key,
)
from radlake.formats.sink import Sink


def export_yolo(
    images: Sequence[ExportImage],
    class_names: Sequence[str],
    sink: Sink,
    *,
    render: RenderFn | None = None,
    size: int | None = 1024,
    mode: ResizeMode = "pad",
    image_format: ImageFormatName = "png",
    metadata: Mapping[str, object] | None = None,
    root: str = ".",
) -> ExportSummary:
    """Write a YOLO dataset of images into sink and return what was written.

    class_names[i] is class id i. render(image) returns the stored image
    (width x height); None writes labels only. size None keeps stored sizes;
    otherwise images become size x size, by mode "pad" (letterbox) or "stretch".
    root is data.yaml's `path` (Ultralytics resolves relative paths against its
    datasets folder, so pass the folder the export will be read from if it
    differs).

    Raises:
        FormatError: bad input (see `place_images`, `class_index`), a rendered
            image of the wrong size, or metadata that is not JSON-compatible.
        StorageError: the sink failed.
    """
    extension = check_image_format(image_format)
    placement = place_images(images, class_index(class_names), size, mode)
    metadata = dict(metadata or {})
    canonical_json(metadata)  # fail on metadata JSON cannot carry before writing anything
    out = ManifestSink(sink)
    images_per_split: dict[str, int] = {}
    boxes_per_split: dict[str, int] = {}
    for placed in placement.images:
        image = placed.image
        width, height = placed.transform.output_size
        lines: list[str] = []
        for class_id, box in placed.boxes:
            x_centre, y_centre, box_width, box_height = box_to_yolo(box, width, height)
            lines.append(
                f"{class_id} {x_centre:.6f} {y_centre:.6f} {box_width:.6f} {box_height:.6f}"
            )
        text = "\n".join(lines) + "\n" if lines else ""
        out.write(f"labels/{image.split}/{image.stem}.txt", text.encode())
        if render is not None:
            pixels = placed.transform.resize_image(render(image))
            out.write(
                f"images/{image.split}/{image.stem}.{extension}",
                encode_image(pixels, image_format),
            )
        images_per_split[image.split] = images_per_split.get(image.split, 0) + 1
        boxes_per_split[image.split] = boxes_per_split.get(image.split, 0) + len(lines)
    splits = list(images_per_split)
    out.write("data.yaml", data_yaml(splits, class_names, root))
    notes = no_box_notes(
        len(placement.images),
        sum(boxes_per_split.values()),
        placement.image_level_findings,
        placement.boxes_skipped,
    )
    notes += trainer_paths(splits)[1]
    if notes:
        metadata["notes"] = notes
        out.write(README_NAME, readme_text("YOLO", notes))
    manifest = out.write_manifest(metadata)
    return ExportSummary(
        format="yolo",
        files_written=len(out.files) + 1,
        bytes_written=out.bytes_written + len(manifest),
        images_per_split=images_per_split,
        boxes_per_split=boxes_per_split,
        image_level_findings=placement.image_level_findings,
        boxes_skipped=placement.boxes_skipped,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        notes=tuple(notes),
    )


def trainer_paths(splits: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """data.yaml's train/val/test entries for splits, and a note per stand-in.

    Ultralytics needs train and val: without a validation split val reads the test
    images (else the training images), and a note says so; test only when present.
    """
    present = {TRAINER_SPLIT_KEYS.get(split, split): split for split in splits}
    ordered = sorted(splits, key=split_sort_key)
    paths: dict[str, str] = {}
    notes: list[str] = []
    train = present.get("train") or (ordered[0] if ordered else "training")
    paths["train"] = f"images/{train}"
    if "train" not in present and ordered:
        notes.append(f"no training split: data.yaml's train reads images/{train}")
    val = present.get("val") or present.get("test") or train
    paths["val"] = f"images/{val}"
    if "val" not in present:
        notes.append(
            f"no validation split: data.yaml's val reads images/{val} (Ultralytics needs val)"
        )
    if "test" in present:
        paths["test"] = f"images/{present['test']}"
    return paths, notes


def data_yaml(splits: Sequence[str], class_names: Sequence[str], root: str = ".") -> bytes:
    """data.yaml for splits (in order) and class_names.

    Ultralytics reads train/val/test; radlake's split names map onto them
    (training -> train, validation -> val, test -> test; see `trainer_paths` for
    a missing one). `splits` lists every split, those three included, so no split
    is hidden from other tools.
    """
    document: dict[str, object] = {"path": root}
    document.update(trainer_paths(splits)[0])
    document["splits"] = {split: f"images/{split}" for split in splits}
    document["nc"] = len(class_names)
    document["names"] = list(class_names)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)
    return text.encode("utf-8")


def read_yolo_labels(
    text: str, width: int, height: int, names: Sequence[str]
) -> list[tuple[str, Box]]:
    """(class name, pixel box) for each line of a label file of a width x height image.

    Blank lines are ignored. Boxes come back in that image's pixels: to get the
    stored image's, pass them through the export's `ResizeTransform.invert`.

    Raises:
        FormatError: a line is not "class xc yc w h" with a known class id, or
            the size is not positive.
    """
    found: list[tuple[str, Box]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields")
            class_id = int(fields[0])
            x_centre, y_centre, box_width, box_height = (float(value) for value in fields[1:])
        except ValueError as exc:
            raise FormatError(
                f"label line {number}: expected 'class xc yc w h', got {line[:80]!r} ({exc})"
            ) from exc
        if not 0 <= class_id < len(names):
            raise FormatError(
                f"label line {number}: class id {class_id} is not in 0..{len(names) - 1}"
            )
        box = yolo_to_box((x_centre, y_centre, box_width, box_height), width, height)
        found.append((names[class_id], box))
    return found
