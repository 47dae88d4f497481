"""Write one selection (a group) to a folder: its originals, metadata.csv, excluded.csv.

    DIR/images/<id>.<ext>   the originals, copied from the store or linked to it
    DIR/metadata.csv        one row per image written: every catalogued column, the
                            hierarchy, ground-truth findings, one attr.NAME column per
                            source attribute
    DIR/excluded.csv        what the selection left out of the same source(s), and why

Issue 9: a plain selection is written as it is; it never needs to become a dataset
version with `--splits all=1.0`. Two groups that partition a base selection (one with
`min_short_side=1024`, one with `exclude.min_short_side=1024`) go to two folders.

Re-running is safe: a file already in place (same size, or the same link) is kept,
others are written to a temporary name and renamed, files of an earlier run that are
no longer selected are removed, and both CSVs are replaced whole. Only DIR/images/ and
the two CSVs are touched.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fsspec.implementations.local import LocalFileSystem
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from radlake.catalog.db import batches, session_factory
from radlake.catalog.models import Image, Label, Series, Study
from radlake.catalog.queries import apply_filter
from radlake.curation.filters import ImageFilter
from radlake.domain import ImageFormat, LabelOrigin
from radlake.errors import ObjectNotFound, RadlakeError
from radlake.lake import Lake
from radlake.pipelines.group_excluded import EXCLUDED_FIELDS, excluded_image, excluded_rows
from radlake.storage.store import ObjectStore

Mode = Literal["copy", "hardlink", "symlink", "none"]
IMAGES = "images"
METADATA_CSV = "metadata.csv"
EXCLUDED_CSV = "excluded.csv"
# Our own file names in DIR/images: anything else there is left alone.
_OURS = re.compile(r"^\.?\d+\.[a-z0-9]+(\.tmp)?$")
# Columns of the image table not written as such: attributes become attr.NAME columns.
_SKIPPED_COLUMNS = frozenset({"attributes"})
_HIERARCHY = ("source", "series_uid", "study_uid", "patient_pseudonym")


class GroupError(RadlakeError, ValueError):
    """A group cannot be written as asked: links to a remote store, a file as DIR."""


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """What one write did: selected = written + kept + missing when files are written
    (with mode "none", written = kept = 0)."""

    selected: int
    written: int
    kept: int
    removed: int
    missing: int
    excluded: int
    out: Path
    seconds: float


def local_root(store: ObjectStore) -> Path | None:
    """The folder behind a local store (links need one), None for S3 and memory."""
    return Path(store.root) if isinstance(store.fs, LocalFileSystem) else None


def write_group(
    lake: Lake,
    selection: ImageFilter,
    out: Path,
    *,
    mode: Mode = "copy",
    report: Callable[[int, int], None] | None = None,
) -> GroupSummary:
    """Write the images selection matches under out, with metadata.csv and excluded.csv.

    mode: copy the originals, hard- or symlink them (a local store only), or "none"
    (only the two CSVs; originals are still checked to be in the store).

    Raises:
        GroupError: a link asked for on a store that is not a local folder, or out is
            not a folder.
        StorageError, CatalogError: the store or the catalog failed.
    """
    started = time.perf_counter()
    root = local_root(lake.store)
    if mode in ("hardlink", "symlink") and root is None:
        raise GroupError(
            "--link/--symlink need a store in a local folder; this store is remote: use --copy"
        )
    try:
        if out.exists() and not out.is_dir():
            raise GroupError(f"expected a folder to write the group into, got a file: {out.name}")
        (out / IMAGES).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, a name too long, a read-only mount
        raise GroupError(f"cannot create the folder {out}: {exc.strerror}") from None
    with session_factory(lake.engine)() as session:
        ids = list(session.scalars(apply_filter(select(Image.id), selection).order_by(Image.id)))
        rows: list[dict[str, Any]] = []
        missing: list[Image] = []
        wanted: set[str] = set()
        written = kept = 0
        for chunk in batches(ids):
            images = _load(session, chunk)
            findings = _findings(session, chunk)
            for image in images:
                name = f"{image.id}.{ImageFormat(image.format).extension}"
                try:
                    changed = _place(lake.store, root, image, out / IMAGES / name, mode)
                except ObjectNotFound:
                    missing.append(image)
                    continue
                wanted.add(name)
                written += changed
                kept += not changed and mode != "none"
                rows.append(_metadata_row(image, f"{IMAGES}/{name}", findings))
                if report is not None:
                    report(len(rows) + len(missing), len(ids))
        excluded = [
            *(excluded_image(image, "original missing from the store") for image in missing),
            *excluded_rows(session, selection, ids),
        ]
    removed = _remove_stale(out / IMAGES, wanted)
    _write_csv(out / METADATA_CSV, _metadata_fields(rows), rows)
    _write_csv(out / EXCLUDED_CSV, EXCLUDED_FIELDS, excluded)
    return GroupSummary(
        selected=len(ids),
        written=written,
        kept=kept,
        removed=removed,
        missing=len(missing),
        excluded=len(excluded),
        out=out,
        seconds=time.perf_counter() - started,
    )


def _load(session: Session, ids: Sequence[int]) -> list[Image]:
    statement = (
        select(Image)
        .where(Image.id.in_(ids))
        .order_by(Image.id)
        .options(
            selectinload(Image.series).selectinload(Series.study).selectinload(Study.patient),
            selectinload(Image.source),
        )
    )
    return list(session.scalars(statement))


def _findings(session: Session, ids: Sequence[int]) -> dict[int, tuple[set[str], int]]:
    """Per image: its ground-truth classes (image-level findings) and how many boxes."""
    found: dict[int, tuple[set[str], int]] = {}
    rows = session.execute(
        select(Label.image_id, Label.class_name, Label.x_min).where(
            Label.image_id.in_(ids), Label.origin == LabelOrigin.GROUND_TRUTH.value
        )
    )
    for image_id, class_name, x_min in rows:
        assert image_id is not None  # selected by image id
        classes, boxes = found.get(image_id, (set(), 0))
        classes.add(class_name)
        found[image_id] = (classes, boxes + (x_min is not None))
    return found


# ------------------------------------------------------------------------- files


def _place(store: ObjectStore, root: Path | None, image: Image, target: Path, mode: Mode) -> bool:
    """Put image's original at target as mode says; False when it already was.

    Raises:
        ObjectNotFound: the original is not in the store.
    """
    source = None if root is None else root.joinpath(*image.original_key.split("/"))
    # Checked first, even for a file an earlier run wrote: the group is what the store
    # still holds (an original lost since goes to excluded.csv, and its copy away).
    present = source.is_file() if source is not None else store.exists(image.original_key)
    if not present:
        raise ObjectNotFound(f"no object {image.original_key}")
    if mode == "none":
        return False
    if _in_place(target, source, image.size_bytes, mode):
        return False
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    if mode == "hardlink":
        assert source is not None  # checked by write_group
        try:
            os.link(source, temporary)
        except OSError as exc:  # another file system (EXDEV), or links not allowed
            raise GroupError(
                f"cannot hard-link into {target.parent.parent.name}/ ({exc.strerror}):"
                " use --symlink or --copy"
            ) from None
    elif mode == "symlink":
        assert source is not None
        temporary.symlink_to(source.resolve())
    else:
        with store.open(image.original_key) as reader, temporary.open("wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
    os.replace(temporary, target)
    return True


def _in_place(target: Path, source: Path | None, size: int, mode: Mode) -> bool:
    """True when an earlier run left target as this mode would write it."""
    if mode == "symlink":
        return target.is_symlink() and source is not None and target.resolve() == source.resolve()
    if target.is_symlink() or not target.is_file():
        return False
    if mode == "hardlink":
        return source is not None and os.path.samefile(target, source)
    # Originals are content-addressed and never change: the same size is the same file,
    # unless it is a hard link an earlier --link run made (copy means a copy).
    return target.stat().st_size == size and (
        source is None or not os.path.samefile(target, source)
    )


def _remove_stale(folder: Path, wanted: set[str]) -> int:
    """Remove our files an earlier run wrote that this selection no longer has."""
    removed = 0
    for entry in folder.iterdir():
        if entry.name not in wanted and _OURS.match(entry.name) and not entry.is_dir():
            entry.unlink()
            removed += not entry.name.startswith(".")
    return removed


# ------------------------------------------------------------------------- tables


def _metadata_row(
    image: Image, file: str, findings: dict[int, tuple[set[str], int]]
) -> dict[str, Any]:
    row: dict[str, Any] = {"file": file}
    for column in Image.__table__.columns:
        if column.key not in _SKIPPED_COLUMNS:
            row[column.key] = getattr(image, column.key)
    series = image.series
    study = series.study if series else None
    row["source"] = image.source.name
    row["series_uid"] = series.series_uid if series else None
    row["study_uid"] = study.study_uid if study else None
    row["patient_pseudonym"] = study.patient.pseudonym if study and study.patient else None
    classes, boxes = findings.get(image.id, (set(), 0))
    row["findings"] = ";".join(sorted(classes))
    row["boxes"] = boxes
    for name, value in sorted((image.attributes or {}).items()):
        row[f"attr.{name}"] = value
    return row


def _metadata_fields(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Fixed columns first, then every attribute any row has, sorted (the same header
    for the same group, whatever order rows come in)."""
    fixed = ["id", "file"]
    fixed += [c.key for c in Image.__table__.columns if c.key not in {"id", *_SKIPPED_COLUMNS}]
    fixed += [*_HIERARCHY, "findings", "boxes"]
    attributes = sorted({key for row in rows for key in row if key.startswith("attr.")})
    return fixed + attributes


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Replace path whole: a reader never sees half a file, a crash leaves the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(fields)
        for row in rows:
            writer.writerow([_text(row.get(field)) for field in fields])
    os.replace(temporary, path)
