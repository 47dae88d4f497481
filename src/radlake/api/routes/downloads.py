"""Bulk downloads as streamed zips: a filter, a dataset split, or a saved cohort.

The archive is written while it is sent: the first byte leaves as soon as the
matching rows are known, and memory holds about one image at a time. metadata.csv
(every image's fields and labels) comes last, built when the images are done.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from radlake.api import audit
from radlake.api.decoding import decode_slot
from radlake.api.deps import Caller, Curator, DbSession, LakeDep, Selection, Viewer
from radlake.api.privacy import (
    BURNED_IN_REASON,
    DEIDENTIFIED,
    pixels_withheld,
    require_original_access,
    shown_key,
)
from radlake.api.zipstream import ZipEntry, stream_zip
from radlake.auth import Role
from radlake.catalog.db import batches, session_factory, transaction
from radlake.catalog.models import Cohort, Image, Label, Rendition
from radlake.catalog.queries import apply_filter
from radlake.curation.filters import ImageFilter
from radlake.curation.versions import get_version
from radlake.domain import ImageFormat
from radlake.lake import Lake
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages
from radlake.storage.keys import preview_key

router = APIRouter(tags=["downloads"])
Content = Literal["preview", "rendered", "original"]
_COLUMNS = (
    Image.id,
    Image.sha256,
    Image.format,
    Image.original_key,
    Image.modality,
    Image.view_position,
    Image.manufacturer,
    Image.rows,
    Image.columns,
    Image.source_key,
    Image.attributes,
)
CSV_FIELDS = (
    "id",
    "file",
    "source_key",
    "sha256",
    "format",
    "modality",
    "view",
    "manufacturer",
    "rows",
    "columns",
    "findings",
    "boxes",
)


class CohortIn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    filter: ImageFilter = Field(default_factory=ImageFilter)


def _rows(session: DbSession, selection: ImageFilter) -> list[Row[Any]]:
    return list(session.execute(apply_filter(select(*_COLUMNS), selection).order_by(Image.id)))


def _reader(
    lake: Lake, row: Row[Any], content: Content, fmt: str, size: int, stand_in: str | None
) -> Callable[[], bytes]:
    images = StoredImages(
        lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes, decode_guard=decode_slot
    )

    def read() -> bytes:
        if stand_in is not None:  # a de-identified rendition in place of withheld pixels
            return lake.store.get_bytes(stand_in)
        if content == "original":
            return lake.store.get_bytes(row.original_key)
        if content == "preview":
            return lake.store.get_bytes(preview_key(row.sha256))
        # Rendered on the fly, not kept: a zip of 10,000 images writes nothing.
        options = RenderOptions(format="jpeg" if fmt == "jpeg" else "png", size=size)
        return images.encoded(StoredImage.of(row), options)

    return read


def _file_name(row: Row[Any], content: Content, fmt: str, stand_in: str | None) -> str:
    if stand_in is not None:
        return f"images/{row.id}.{'jpg' if stand_in.endswith(('.jpg', '.jpeg')) else 'png'}"
    if content == "original":
        return f"images/{row.id}.{ImageFormat(row.format).extension}"
    return f"images/{row.id}.{'png' if content == 'preview' else 'jpg' if fmt == 'jpeg' else 'png'}"


def _metadata_csv(
    lake: Lake, rows: Sequence[Row[Any]], names: Sequence[str], role: Role
) -> Callable[[], bytes]:
    def read() -> bytes:
        findings: dict[int, set[str]] = {}
        boxes: dict[int, int] = {}
        ids = [row.id for row in rows]
        with session_factory(lake.engine)() as session:
            for chunk in batches(ids):
                for image_id, class_name, x_min in session.execute(
                    select(Label.image_id, Label.class_name, Label.x_min).where(
                        Label.image_id.in_(chunk)
                    )
                ):
                    assert image_id is not None
                    findings.setdefault(image_id, set()).add(class_name)
                    boxes[image_id] = boxes.get(image_id, 0) + (x_min is not None)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for row, name in zip(rows, names, strict=True):
            writer.writerow(
                (
                    row.id,
                    name,
                    shown_key(row.source_key, role),
                    row.sha256,
                    row.format,
                    row.modality or "",
                    row.view_position or "",
                    row.manufacturer or "",
                    row.rows,
                    row.columns,
                    "|".join(sorted(findings.get(row.id, ()))),
                    boxes.get(row.id, 0),
                )
            )
        return buffer.getvalue().encode()

    return read


@dataclass(frozen=True, slots=True)
class ZipOptions:
    """What each image of a zip is: the stored preview, a rendering, or the original."""

    content: Content
    image_format: Literal["jpeg", "png"]
    size: int


def zip_options(
    content: Content = "preview",
    image_format: Literal["jpeg", "png"] = "jpeg",
    size: Annotated[int, Query(ge=16, le=4096)] = 512,
) -> ZipOptions:
    return ZipOptions(content, image_format, size)


ZipQuery = Annotated[ZipOptions, Depends(zip_options)]


def _stand_ins(session: DbSession, caller: Caller, rows: Sequence[Row[Any]]) -> dict[int, str]:
    """For a viewer: the de-identified rendition of every image whose pixels are withheld
    (403 with the reason when one has none)."""
    flagged = [row.id for row in rows if pixels_withheld(caller.role, row.attributes)]
    found: dict[int, str] = {}
    for chunk in batches(flagged):
        found |= {
            image_id: key
            for image_id, key in session.execute(
                select(Rendition.image_id, Rendition.key).where(
                    Rendition.image_id.in_(chunk), Rendition.name == DEIDENTIFIED
                )
            )
        }
    missing = [image_id for image_id in flagged if image_id not in found]
    if missing:
        shown = ", ".join(str(image_id) for image_id in missing[:10])
        more = "" if len(missing) <= 10 else f" and {len(missing) - 10} more"
        raise HTTPException(
            403, detail=f"images {shown}{more} {BURNED_IN_REASON} (leave them out of the filter)"
        )
    return found


def _zip(
    lake: Lake,
    session: DbSession,
    caller: Caller,
    rows: list[Row[Any]],
    target: str,
    filename: str,
    options: ZipOptions,
) -> StreamingResponse:
    content, fmt, size = options.content, options.image_format, options.size
    if content == "original":
        require_original_access(caller.role)
    stand_ins = _stand_ins(session, caller, rows)
    names = [_file_name(row, content, fmt, stand_ins.get(row.id)) for row in rows]
    # Rendered images are already compressed: stored, not deflated again.
    entries = [
        ZipEntry(
            name, _reader(lake, row, content, fmt, size, stand_ins.get(row.id)), compress=False
        )
        for row, name in zip(rows, names, strict=True)
    ]
    entries.append(ZipEntry("metadata.csv", _metadata_csv(lake, rows, names, caller.role)))
    audit.record(lake, caller, "download.zip", target, images=len(rows), content=content)
    return StreamingResponse(
        stream_zip(entries),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/images.zip")
def images_zip(
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    selection: Selection,
    options: ZipQuery,
) -> StreamingResponse:
    """Every image matching the filter (stored previews, renderings or originals) + metadata.csv."""
    rows = _rows(session, selection)
    return _zip(
        lake,
        session,
        caller,
        rows,
        f"images?{selection.as_dict()}",
        "images.zip",
        options,
    )


@router.get("/datasets/{name}/versions/{version}/splits/{split}.zip")
def split_zip(
    name: Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
    version: Annotated[int, Path(ge=1, le=1_000_000)],
    split: Annotated[str, Path(max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")],
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    options: ZipQuery,
) -> StreamingResponse:
    """One split of a dataset version as a zip."""
    get_version(session, name, version)
    rows = _rows(session, ImageFilter(dataset=name, version=version, split=split))
    if not rows:
        raise HTTPException(404, detail=f"version {version} of {name!r} has no split {split!r}")
    return _zip(
        lake,
        session,
        caller,
        rows,
        f"dataset/{name}/{version}/{split}",
        f"{name}-v{version}-{split}.zip",
        options,
    )


@router.post("/cohorts", status_code=201)
def save_cohort(body: CohortIn, caller: Curator, lake: LakeDep) -> dict[str, Any]:
    """Save a named query (curators)."""
    selection = body.filter
    try:
        with transaction(lake.engine) as session:
            session.add(
                Cohort(name=body.name, selection=selection.as_dict(), created_by=caller.name)
            )
    except IntegrityError:
        raise HTTPException(409, detail=f"a cohort named {body.name!r} exists") from None
    audit.record(lake, caller, "cohort.save", f"cohort/{body.name}")
    return {"name": body.name, "filter": selection.as_dict()}


@router.get("/cohorts")
def cohorts(caller: Viewer, session: DbSession) -> list[dict[str, Any]]:
    """Saved cohorts."""
    return [
        {
            "name": c.name,
            "filter": c.selection,
            "created_by": c.created_by,
            "created_at": c.created_at,
        }
        for c in session.scalars(select(Cohort).order_by(Cohort.name))
    ]


@router.delete("/cohorts/{name}", status_code=204)
def delete_cohort(
    name: Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
    caller: Curator,
    lake: LakeDep,
) -> None:
    """Delete a saved cohort (curators); its images stay in the lake."""
    with transaction(lake.engine) as session:
        cohort = session.scalar(select(Cohort).where(Cohort.name == name))
        if cohort is None:
            raise HTTPException(404, detail=f"no cohort named {name!r}")
        session.delete(cohort)
    audit.record(lake, caller, "cohort.delete", f"cohort/{name}")


@router.get("/cohorts/{name}.zip")
def cohort_zip(
    name: Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    options: ZipQuery,
) -> StreamingResponse:
    """A saved cohort's images as a zip."""
    cohort = session.scalar(select(Cohort).where(Cohort.name == name))
    if cohort is None:
        raise HTTPException(404, detail=f"no cohort named {name!r}")
    rows = _rows(session, ImageFilter.from_dict(cohort.selection))
    return _zip(lake, session, caller, rows, f"cohort/{name}", f"{name}.zip", options)
