"""Import a label file onto catalogued images: match, place, write what is new.

    file ──► formats.label_readers ──► entries ──► match (sha256, file name, stem)
                                                     ──► place_box (stored pixels)
                                                     ──► write (check, insert new)

Entries are matched to images by sha256 when the file gives one, else by the
basename of the image's source key, then by its stem (YOLO names label files by
stem; radlake exports rename images to `<stem>.png`). An entry that matches no
image, or several, is reported and not written; so is an entry whose box is
missing or unusable (COCO `bbox: [null, null, null, null]`) or whose frame is not
the stored image. Nothing is clipped or invented.

Labels go under their own source (kind `label_import`), never under a dataset's
source: `radlake source ...` replaces its source's ground truth on every load and
would drop them. Re-importing a file writes nothing new: each label is looked up
among those the source holds on its image (same class, reader, origin and box, to
the precision the catalog keeps) and only the rest is inserted, under the source's
row lock, so two imports take turns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from radlake.catalog.db import DEFAULT_RETRY_SECONDS, run_transaction
from radlake.catalog.fit import fit_row
from radlake.catalog.labels import (
    ImageRef,
    add_labels,
    existing_labels,
    image_refs,
    source_kind,
    write_classes,
)
from radlake.catalog.models import Label
from radlake.catalog.persist import ensure_source, lock_source
from radlake.domain import Box, LabelOrigin
from radlake.errors import RadlakeError
from radlake.formats.label_readers import FrameMismatch, LabelEntry, LabelFile, place_box
from radlake.formats.model import safe_stem

SOURCE_KIND = "label_import"
EXAMPLES = 5
OUTSIDE_SLACK_PX = 1.0


class LabelImportError(RadlakeError, ValueError):
    """An import that cannot start: an unknown origin, a source that is a dataset's."""


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """Where the labels go and what they are."""

    source: str
    origin: LabelOrigin = LabelOrigin.GROUND_TRUTH
    reader: str | None = None
    images_of: str | None = None  # match only the images of this source


@dataclass(slots=True)
class ImportSummary:
    """What an import read, wrote and left out (with a few examples of each)."""

    source: str
    origin: str
    entries: int = 0
    written: int = 0
    already_present: int = 0
    boxes: int = 0
    image_level: int = 0
    unmatched: int = 0
    ambiguous: int = 0
    invalid: int = 0
    frame_mismatch: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def note(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)

    def line(self) -> str:
        parts = [
            f"{self.source}: {self.entries} entries read, {self.written} labels written "
            f"({self.origin}), {self.already_present} already present, "
            f"{self.unmatched} unmatched, {self.invalid} invalid"
        ]
        if self.ambiguous:
            parts.append(f"{self.ambiguous} matching several images")
        if self.frame_mismatch:
            parts.append(f"{self.frame_mismatch} on an image of another size")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "origin": self.origin,
            "entries": self.entries,
            "written": self.written,
            "already_present": self.already_present,
            "boxes": self.boxes,
            "image_level": self.image_level,
            "unmatched": self.unmatched,
            "ambiguous": self.ambiguous,
            "invalid": self.invalid,
            "frame_mismatch": self.frame_mismatch,
            "examples": {kind: list(texts) for kind, texts in sorted(self.examples.items())},
        }


class ImageMatcher:
    """Finds the catalogued image an entry names: by sha256, basename, then stem."""

    def __init__(self, images: Sequence[ImageRef]) -> None:
        self.by_sha = {image.sha256: image for image in images}
        self.by_name: dict[str, list[ImageRef]] = defaultdict(list)
        self.by_stem: dict[str, list[ImageRef]] = defaultdict(list)
        for image in images:
            self.by_name[image.name].append(image)
            stem = PurePosixPath(image.name).stem
            self.by_stem[stem].append(image)
            exported = safe_stem(image.name)  # radlake exports rename odd characters
            if exported != stem:
                self.by_stem[exported].append(image)

    def match(self, entry: LabelEntry) -> list[ImageRef]:
        """The images the entry may name: one is a match, none or several are not."""
        if entry.sha256:
            found = self.by_sha.get(entry.sha256)
            return [found] if found else []
        name = entry.file_name or ""
        for candidates in (self.by_name.get(name), self.by_stem.get(PurePosixPath(name).stem)):
            if candidates:
                return candidates
        return self.by_stem.get(name, [])


def _check_source(session: Session, name: str) -> None:
    kind = source_kind(session, name=name)
    if kind is not None and kind != SOURCE_KIND:
        raise LabelImportError(
            f"source {name!r} is a {kind} source, whose loads replace its labels; "
            "import under another --source name"
        )


def import_labels(
    parsed: LabelFile,
    request: ImportRequest,
    *,
    engine: Engine,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> ImportSummary:
    """Write a parsed label file's labels onto matching images; re-runnable.

    Raises:
        LabelImportError: the source name belongs to a dataset source.
        CatalogError: the catalog kept failing.
    """
    if not request.source.strip() or len(request.source) > 100:
        raise LabelImportError(
            f"expected a source name of 1 to 100 characters, got {len(request.source)}"
        )

    def write(session: Session) -> ImportSummary:
        _check_source(session, request.source)
        if request.images_of is not None and source_kind(session, name=request.images_of) is None:
            # Matching against no image would report every entry unmatched and exit 0.
            raise LabelImportError(f"--images-of: no source named {request.images_of[:100]!r}")
        source_id = ensure_source(session, name=request.source, kind=SOURCE_KIND)
        lock_source(session, source_id)  # a second import waits, then finds these rows
        summary = ImportSummary(request.source, request.origin.value)
        matcher = ImageMatcher(image_refs(session, source=request.images_of))
        rows: list[dict[str, Any]] = []
        for entry in parsed.entries:
            summary.entries += 1
            label = entry.file_name or entry.sha256 or "?"
            if entry.problem:
                summary.note("invalid", f"{entry.where} ({label}): {entry.problem}")
                continue
            found = matcher.match(entry)
            if len(found) != 1:
                kind = "unmatched" if not found else "ambiguous"
                summary.note(kind, f"{entry.where}: {label}")
                continue
            image = found[0]
            try:
                box = place_box(entry, image.columns, image.rows)
            except FrameMismatch as exc:
                summary.note("frame_mismatch", f"{entry.where} ({label}): {exc}")
                continue
            outside = _outside(box, image.columns, image.rows)
            if outside:
                summary.note("invalid", f"{entry.where} ({label}): {outside}")
                continue
            rows.append(_row(entry, request, source_id, image, label, box))
        write_classes(session, source_id=source_id, taxonomy=parsed.taxonomy)
        new = _new_rows(session, source_id, request.origin.value, rows)
        add_labels(session, rows=new)
        summary.written = len(new)
        summary.already_present = len(rows) - len(new)
        summary.boxes = sum(row["x_min"] is not None for row in new)
        summary.image_level = len(new) - summary.boxes
        return summary

    return run_transaction(engine, write, retry_seconds=retry_seconds)


def _outside(box: Box | None, columns: int, rows: int) -> str:
    """Why a box does not lie on its image ("" when it does). Nothing is clipped: a box
    far off the image is a wrong file or frame, not a finding. A pixel of slack keeps
    boxes drawn to the edge (x_max = width + 1) and round-trip noise (1e-7)."""
    if box is None:
        return ""
    slack = OUTSIDE_SLACK_PX
    if (
        box.x_min < -slack
        or box.y_min < -slack
        or box.x_max > columns + slack
        or box.y_max > rows + slack
    ):
        corners = ", ".join(f"{v:.6g}" for v in (box.x_min, box.y_min, box.x_max, box.y_max))
        return f"box [{corners}] lies outside the {columns}x{rows} image"
    return ""


def _row(
    entry: LabelEntry,
    request: ImportRequest,
    source_id: int,
    image: ImageRef,
    key: str,
    box: Box | None,
) -> dict[str, Any]:
    row, _ = fit_row(  # odd text (NUL, too long) fits every backend, as ingest does
        Label,
        {
            "source_id": source_id,
            "source_image_key": key,
            "image_id": image.id,
            "class_name": entry.class_name,
            "class_id": entry.class_id,
            "reader": request.reader or entry.reader or None,
            "origin": request.origin.value,
            "confidence": None,
            "x_min": None if box is None else box.x_min,
            "y_min": None if box is None else box.y_min,
            "x_max": None if box is None else box.x_max,
            "y_max": None if box is None else box.y_max,
        },
    )
    return row


def _new_rows(
    session: Session, source_id: int, origin: str, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows not stored yet: each stored label answers for one row of the file, so a
    label the file repeats is kept as often as the file gives it."""
    stored = existing_labels(
        session, source_id=source_id, image_ids=[row["image_id"] for row in rows], origin=origin
    )
    new = []
    for row in rows:
        key = (row["image_id"], row["class_name"], row["reader"], origin)
        box = _box(row)
        candidates = stored.get(key, [])
        # Boxes are 8-byte reals on every backend (migration 0007): they read back exactly.
        match = next((i for i, old in enumerate(candidates) if old == box), None)
        if match is None:
            new.append(row)
        else:
            candidates.pop(match)
    return new


def _box(row: dict[str, Any]) -> Box | None:
    if row["x_min"] is None:
        return None
    return Box(row["x_min"], row["y_min"], row["x_max"], row["y_max"])


def default_source_name(path: Path) -> str:
    """The source name an import gets without --source: the file's (or folder's) stem."""
    stem = path.stem if path.is_file() else path.name
    return (stem or "labels")[:100]
