"""Reading label files (COCO, YOLO, CSV) into entries, before they meet the catalog.

Each reader turns a file into `LabelEntry` values: which image (a file name or a
sha256), which class, and the box exactly as the file gives it, with the `Frame`
that says what its numbers are relative to. Nothing is clipped, rounded or guessed:
an entry whose box is missing or unusable (COCO `bbox: [null, null, null, null]`,
a zero-area or non-finite box, an unknown category) keeps its `problem` and no box,
so the import reports it instead of writing or inventing one. `place_box` maps a
box onto the stored image once the catalog says its size.

A whole file that is not the format (not JSON, no header, an unreadable names file)
raises `FormatError` (a `RadlakeError` and `ValueError`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from radlake.domain import Box
from radlake.formats.coords import ResizeMode, ResizeTransform, coco_to_box, yolo_to_box
from radlake.formats.manifest import MANIFEST_NAME, read_manifest
from radlake.formats.model import FormatError
from radlake.sources.csvfile import decode_text

LABEL_FORMATS = ("coco", "yolo", "csv")
_CSV_FILE = ("file", "file_name", "filename", "image")
_CSV_CLASS = ("class", "class_name", "label")
_CORNERS = ("x_min", "y_min", "x_max", "y_max")
_NOT_LABELS = ("classes.txt", "readme.txt")


@dataclass(frozen=True, slots=True)
class Frame:
    """What a box's numbers refer to.

    - `normalized` False, no size: the stored image's pixels (CSV).
    - `normalized` False, width x height: pixels of an image of that size (COCO's
      `width`/`height`): the stored image, or an exact resize of it.
    - `normalized` True: fractions of the image (YOLO's xc, yc, w, h).
    - `export` (size, mode): a radlake export's resized frame, mapped back exactly
      with `ResizeTransform.invert`; `source_size` is the stored size it recorded.
    """

    normalized: bool = False
    width: int | None = None
    height: int | None = None
    export: tuple[int | None, ResizeMode] | None = None
    source_size: tuple[int, int] | None = None


STORED_PIXELS = Frame()


@dataclass(frozen=True, slots=True)
class LabelEntry:
    """One label as a file states it.

    `numbers` are (x_min, y_min, x_max, y_max) in the frame's pixels, or YOLO's
    (xc, yc, w, h) when the frame is normalized; None for an image-level label or
    an entry with a `problem` (why it cannot be written). `where` locates the entry
    in its file for reports ("annotation 317", "line 12").
    """

    where: str
    file_name: str | None
    sha256: str | None
    class_name: str
    class_id: int | None
    numbers: tuple[float, float, float, float] | None
    frame: Frame = STORED_PIXELS
    reader: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class LabelFile:
    """Entries of one file (or YOLO folder) and the taxonomy it defines."""

    entries: list[LabelEntry]
    taxonomy: dict[str, int | None]


class FrameMismatch(FormatError):
    """A box's frame does not fit the stored image (another size, not a resize of it)."""


def base_name(name: str) -> str:
    """The last component of a file name written with / or \\ separators."""
    return PureWindowsPath(PurePosixPath(name).name).name


def _four_numbers(
    values: Sequence[Any], *, json_numbers: bool = False
) -> tuple[tuple[float, float, float, float] | None, str]:
    """Four finite floats, or None and the reason. json_numbers: JSON gives numbers
    as numbers, so a string or a boolean there ("12", true) is a wrong type, not 12 or 1."""
    if len(values) != 4:
        return None, f"expected 4 numbers, got {len(values)}"
    if json_numbers and any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        shown = ", ".join(
            json.dumps(v)[:20] if v is None or isinstance(v, bool | str) else str(v)[:20]
            for v in values
        )
        return None, f"box [{shown}] is not four numbers"
    try:
        a, b, c, d = (float(v) for v in values)
    except (TypeError, ValueError):
        shown = ", ".join("null" if v is None else str(v)[:20] for v in values)
        return None, f"box [{shown}] is not four numbers"
    if not all(math.isfinite(v) for v in (a, b, c, d)):
        return None, "box has a non-finite coordinate"
    return (a, b, c, d), ""


def _check_corners(values: Sequence[Any]) -> tuple[tuple[float, float, float, float] | None, str]:
    """(x_min, y_min, x_max, y_max) as four finite floats with positive width and
    height, or None and the reason."""
    corners, problem = _four_numbers(values)
    if corners is None:
        return None, problem
    x_min, y_min, x_max, y_max = corners
    if not (x_max > x_min and y_max > y_min):
        return None, f"box {list(corners)} has no area"
    return corners, ""


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"expected {what} JSON, got text that is not JSON ({exc})") from None


def _export_frame(document: Mapping[str, Any]) -> tuple[int | None, ResizeMode] | None:
    """(size, mode) when the file is a radlake export (its info or manifest says so)."""
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or "size" not in metadata or "mode" not in metadata:
        return None
    size, mode = metadata["size"], metadata["mode"]
    if (size is not None and not isinstance(size, int)) or mode not in ("pad", "stretch"):
        raise FormatError(f"radlake export metadata: expected size and mode, got {size!r} {mode!r}")
    return (size, mode)


def _key(value: object) -> int | str | None:
    """A COCO id usable as a key (a list or an object is not)."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def _size(value: object) -> int | None:
    """A positive whole pixel count (some tools write 512.0), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (math.isfinite(value) and value > 0 and float(value).is_integer()):
        return None
    return int(value)


def read_coco_entries(data: bytes) -> LabelFile:
    """Entries of a COCO detection file (any producer; radlake exports are mapped back).

    Raises:
        FormatError: not JSON, or without `images`, `annotations` and `categories` lists.
    """
    document = _load_json(data, "COCO")
    if not isinstance(document, dict) or not all(
        isinstance(document.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise FormatError("expected COCO JSON with lists 'images', 'annotations' and 'categories'")
    info = document.get("info")
    export = _export_frame(info) if isinstance(info, dict) else None
    categories: dict[int | str, str] = {}
    # An id given twice with different contents names nothing for sure: its entries
    # are reported, not resolved to one of them.
    clashing: set[int | str] = set()
    for category in document["categories"]:
        if (
            isinstance(category, dict)
            and _key(category.get("id")) is not None
            and category.get("name")
        ):
            key, class_name = category["id"], str(category["name"])
            if categories.get(key, class_name) != class_name:
                clashing.add(key)
            categories[key] = class_name
    frames: dict[int | str, tuple[str | None, str | None, Frame]] = {}
    clashing_images: set[int | str] = set()
    for image in document["images"]:
        if not isinstance(image, dict) or _key(image.get("id")) is None:
            continue
        name = image.get("file_name")
        width, height = _size(image.get("width")), _size(image.get("height"))
        sized = width is not None and height is not None
        source_width, source_height = (
            _size(image.get("source_width")),
            _size(image.get("source_height")),
        )
        source = None
        if source_width is not None and source_height is not None:
            source = (source_width, source_height)
        frame = Frame(
            width=width if sized else None,
            height=height if sized else None,
            export=export if source else None,
            source_size=source,
        )
        sha = image.get("sha256")
        entry = (
            base_name(str(name)) if name else None,
            str(sha).lower() if isinstance(sha, str) else None,
            frame,
        )
        if frames.get(image["id"], entry) != entry:
            clashing_images.add(image["id"])
        frames[image["id"]] = entry
    entries: list[LabelEntry] = []
    for position, annotation in enumerate(document["annotations"], start=1):
        if not isinstance(annotation, dict):
            entries.append(
                LabelEntry(
                    f"annotation #{position}",
                    None,
                    None,
                    "",
                    None,
                    None,
                    problem="not a JSON object",
                )
            )
            continue
        where = f"annotation {str(annotation.get('id', '#' + str(position)))[:40]}"
        image_key, category_id = _key(annotation.get("image_id")), annotation.get("category_id")
        unknown: tuple[str | None, str | None, Frame] = (None, None, STORED_PIXELS)
        name, sha, frame = frames.get(image_key, unknown) if image_key is not None else unknown
        category_key = _key(category_id)
        class_name = categories.get(category_key, "") if category_key is not None else ""
        class_id = category_id if isinstance(category_id, int) else None
        problem = ""
        numbers = None
        if image_key in clashing_images:
            problem = f"image_id {str(image_key)[:20]} names two different images in 'images'"
        elif category_key in clashing:
            problem = f"category_id {str(category_key)[:20]} names two classes in 'categories'"
        elif name is None and sha is None:
            problem = f"image_id {str(annotation.get('image_id'))[:20]} is not in 'images'"
        elif not class_name:
            problem = f"category_id {str(category_id)[:20]} is not in 'categories'"
        else:
            bbox = annotation.get("bbox")
            if bbox is not None:  # no bbox at all: an image-level label
                xywh, problem = _four_numbers(
                    bbox if isinstance(bbox, list) else [bbox], json_numbers=True
                )
                if xywh is not None:
                    box = coco_to_box(xywh)  # x, y, w, h -> corners, exact arithmetic
                    numbers, problem = _check_corners((box.x_min, box.y_min, box.x_max, box.y_max))
        entries.append(
            LabelEntry(
                where, name, sha, class_name, class_id, numbers, frame, problem=problem or None
            )
        )
    taxonomy: dict[str, int | None] = {
        name: key if isinstance(key, int) else None for key, name in categories.items()
    }
    return LabelFile(entries, taxonomy)


def read_class_names(path: Path) -> list[str]:
    """Class names from a YOLO data.yaml (`names` list or {id: name}) or a classes.txt
    (one name a line).

    Raises:
        FormatError: the file is absent, unreadable, or holds no names.
    """
    try:
        text, _ = decode_text(path.read_bytes())
    except OSError as exc:
        raise FormatError(f"cannot read class names from {path.name}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            raise FormatError(f"{path.name} is not YAML") from None
        names = document.get("names") if isinstance(document, dict) else None
        if isinstance(names, dict):
            try:
                names = [names[k] for k in sorted(names, key=int)]
            except (TypeError, ValueError):
                raise FormatError(f"{path.name}: expected class ids as numbers") from None
        if not isinstance(names, list) or not names:
            raise FormatError(f"{path.name}: expected a 'names' list of classes")
        return [str(name) for name in names]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise FormatError(f"{path.name} holds no class names")
    return names


def find_class_names(folder: Path) -> Path | None:
    """data.yaml or classes.txt in a YOLO folder or its parents (an export's labels/)."""
    for place in (folder, *folder.parents[:2]):
        for name in ("data.yaml", "data.yml", "classes.txt"):
            if (place / name).is_file():
                return place / name
    return None


def _yolo_export_frame(folder: Path) -> tuple[int | None, ResizeMode] | None:
    for place in (folder, *folder.parents[:2]):
        manifest = place / MANIFEST_NAME
        if manifest.is_file():
            _, metadata = read_manifest(manifest.read_bytes())
            return _export_frame({"metadata": metadata})
    return None


def read_yolo_entries(root: Path, names: Sequence[str]) -> LabelFile:
    """Entries of a YOLO label folder (one `<image stem>.txt` per image, searched
    recursively) or of one label file; class ids index `names`.

    A radlake export (manifest.json beside its data.yaml) says its resize, so boxes
    are mapped back to the stored image exactly.

    Raises:
        FormatError: root holds no label file.
    """
    if root.is_dir():
        # An export's root: its labels/ folder (README.txt and others are not labels).
        search = root / "labels" if (root / "labels").is_dir() else root
        files = sorted(
            p
            for p in search.rglob("*.txt")
            if p.is_file() and p.name.lower() not in _NOT_LABELS and not p.name.startswith(".")
        )
        folder = root
    else:
        files, folder = [root], root.parent
    if not files:
        raise FormatError(f"expected YOLO label files (<image stem>.txt) in {root.name}")
    export = _yolo_export_frame(folder)
    frame = Frame(normalized=True, export=export)
    entries: list[LabelEntry] = []
    for path in files:
        try:
            text, _ = decode_text(path.read_bytes())
        except OSError as exc:
            raise FormatError(f"cannot read {path.name}: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path.name} line {number}"
            class_name, class_id, numbers = "", None, None
            if not fields[0].isdigit():
                problem = f"class id {fields[0][:20]!r} is not a whole number"
            elif int(fields[0]) >= len(names):
                problem = f"class id {fields[0][:20]} is not in 0..{len(names) - 1}"
            else:
                class_id = int(fields[0])
                class_name = names[class_id]
                numbers, problem = _yolo_numbers(fields[1:])
            entries.append(
                LabelEntry(
                    where,
                    path.stem,
                    None,
                    class_name,
                    class_id,
                    numbers,
                    frame,
                    problem=problem or None,
                )
            )
    return LabelFile(entries, {name: index for index, name in enumerate(names)})


def _yolo_numbers(fields: Sequence[str]) -> tuple[tuple[float, float, float, float] | None, str]:
    if len(fields) != 4:  # a segmentation polygon or a stray value
        return None, f"expected 'class xc yc w h', got {len(fields) + 1} fields"
    try:
        xc, yc, w, h = (float(v) for v in fields)
    except ValueError:
        return None, "box values are not numbers"
    if not all(math.isfinite(v) for v in (xc, yc, w, h)):
        return None, "box has a non-finite value"
    if not (w > 0 and h > 0):
        return None, f"box width {w} and height {h} leave no area"
    return (xc, yc, w, h), ""


def read_csv_entries(data: bytes) -> LabelFile:
    """Entries of a CSV with a `file` (or file_name, filename, image) and/or `sha256`
    column, `class` (or class_name, label), optional `reader`, and optional
    x_min, y_min, x_max, y_max in the stored image's pixels (empty: image-level).

    Raises:
        FormatError: no header, or it lacks an image column or a class column.
    """
    text, _ = decode_text(data)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise FormatError(f"not a readable CSV file: {exc}") from None
    if not rows:
        raise FormatError("the CSV file is empty")
    header = [name.strip().lower() for name in rows[0]]

    def find(names: Sequence[str]) -> int | None:
        return next((header.index(n) for n in names if n in header), None)

    file_at, sha_at, class_at = find(_CSV_FILE), find(("sha256",)), find(_CSV_CLASS)
    reader_at = find(("reader", "rad_id"))
    corners_at = [find((name,)) for name in _CORNERS]
    if (file_at is None and sha_at is None) or class_at is None:
        raise FormatError(
            "expected CSV columns file (or sha256) and class, with optional "
            f"x_min, y_min, x_max, y_max and reader; found {', '.join(header[:12])}"
        )
    entries: list[LabelEntry] = []
    taxonomy: dict[str, int | None] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(at: int | None, row: list[str] = row) -> str:
            return row[at].strip() if at is not None and at < len(row) else ""

        name, sha, class_name = cell(file_at), cell(sha_at).lower(), cell(class_at)
        values = [cell(at) for at in corners_at]
        numbers, problem = None, ""
        if not name and not sha:
            problem = "no file name or sha256"
        elif not class_name:
            problem = "no class"
        elif any(values):
            numbers, problem = _check_corners([v or None for v in values])
        if class_name:
            taxonomy[class_name] = None
        entries.append(
            LabelEntry(
                f"line {line}",
                base_name(name) if name else None,
                sha or None,
                class_name,
                None,
                numbers,
                reader=cell(reader_at) or None,
                problem=problem or None,
            )
        )
    return LabelFile(entries, taxonomy)


def place_box(entry: LabelEntry, columns: int, rows: int) -> Box | None:
    """The entry's box in the stored image's pixels (columns x rows); None when image-level.

    Exact: COCO and CSV corners are kept, YOLO fractions are multiplied by the stored
    size, and a radlake export's resize is inverted. A COCO frame of another size is
    scaled only when it is a resize of the stored image (the same aspect ratio, to
    within a pixel); anything else would guess where the box belongs.

    Raises:
        FrameMismatch: the frame does not fit the stored image.
    """
    if entry.numbers is None:
        return None
    frame = entry.frame
    if frame.export is not None:
        size, mode = frame.export
        if frame.source_size is not None and frame.source_size != (columns, rows):
            raise FrameMismatch(
                f"the export recorded a {frame.source_size[0]}x{frame.source_size[1]} image, "
                f"the catalogued one is {columns}x{rows}"
            )
        transform = ResizeTransform(columns, rows, size, mode)
        if frame.normalized:
            box = yolo_to_box(entry.numbers, transform.output_width, transform.output_height)
        else:
            box = Box(*entry.numbers)
        return transform.invert(box)
    if frame.normalized:
        return yolo_to_box(entry.numbers, columns, rows)
    box = Box(*entry.numbers)
    if (
        frame.width is None
        or frame.height is None
        or (frame.width, frame.height)
        == (
            columns,
            rows,
        )
    ):
        return box
    sx, sy = columns / frame.width, rows / frame.height
    if abs(frame.width * sy - columns) > 1.0 or abs(frame.height * sx - rows) > 1.0:
        raise FrameMismatch(
            f"the file's image is {frame.width}x{frame.height}, the catalogued one is "
            f"{columns}x{rows} (not a resize of it)"
        )
    return Box(box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy)


def read_label_file(path: Path, fmt: str, *, names: Path | None = None) -> LabelFile:
    """Entries of a label file (or YOLO folder) in format fmt (coco, yolo, csv).

    Raises:
        FormatError: an unknown format, an unreadable file, or YOLO without class names.
    """
    if fmt not in LABEL_FORMATS:
        raise FormatError(f"expected a format in {', '.join(LABEL_FORMATS)}, got {fmt!r}")
    if not path.exists():
        raise FormatError(f"no such file or folder: {path.name}")
    if fmt == "yolo":
        names_path = names or find_class_names(path if path.is_dir() else path.parent)
        if names_path is None:
            raise FormatError(
                "YOLO labels need their class names: pass --names data.yaml or classes.txt"
            )
        return read_yolo_entries(path, read_class_names(names_path))
    if path.is_dir():
        raise FormatError(f"expected a {fmt.upper()} file, got a folder: {path.name}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read {path.name}: {exc.strerror}") from None
    return read_coco_entries(data) if fmt == "coco" else read_csv_entries(data)
