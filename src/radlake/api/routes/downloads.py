"""Bulk downloads as streamed zips: a filter, a dataset split, or a saved cohort.

The archive is written while it is sent: the first byte leaves as soon as the
matching rows are known, and memory holds about one image at a time. metadata.csv
(every image's fields and labels) comes last, built when the images are done.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row

from radlake.api import audit, schemas
from radlake.api.decoding import decode_slot
from radlake.api.deps import Caller, Curator, DbSession, LakeDep, Selection, Viewer
from radlake.api.privacy import (
    BURNED_IN_REASON,
    DEIDENTIFIED,
    pixels_withheld,
    require_original_access,
    shown_key,
)
from radlake.api.routes.deidentified import WITHHELD_REASON
from radlake.api.zipstream import ZipEntry, stream_zip
from radlake.auth import Role
from radlake.catalog import cohorts as saved_cohorts
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.image_reads import label_tallies, rendition_keys, zip_rows
from radlake.catalog.serialize import cohort_row
from radlake.curation.filters import ImageFilter
from radlake.curation.versions import get_version
from radlake.domain import NEW_NAME, ImageFormat
from radlake.lake import Lake
from radlake.pipelines.deidentify import ensure_deidentified
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages
from radlake.storage.keys import preview_key

router = APIRouter(tags=["downloads"], responses=schemas.errors(401, 422))
# dicom: de-identified DICOM objects (issue 13; other formats as their preview);
# original: the bytes as received, admins only.
Content = Literal["preview", "rendered", "original", "dicom"]
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
    # An unknown key is a mistake to report, not to drop ({"fliter": ...} saved everything).
    model_config = ConfigDict(extra="forbid")

    # Starts with a letter or digit, as dataset names do ('..' saved as '...zip').
    name: str = Field(pattern=NEW_NAME)
    filter: ImageFilter = Field(default_factory=ImageFilter)


def _reader(
    lake: Lake, row: Row[Any], content: Content, fmt: str, size: int, stand_in: str | None
) -> Callable[[], bytes]:
    """stand_in: a key served in place of the image (a de-identified object or picture)."""
    images = StoredImages(
        lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes, decode_guard=decode_slot
    )

    def read() -> bytes:
        if stand_in is not None:  # a de-identified rendition in place of withheld pixels
            return lake.store.get_bytes(stand_in)
        if content == "original":
            return lake.store.get_bytes(row.original_key)
        if content in ("preview", "dicom"):
            return lake.store.get_bytes(preview_key(row.sha256))
        # Rendered on the fly, not kept: a zip of 10,000 images writes nothing.
        options = RenderOptions(format="jpeg" if fmt == "jpeg" else "png", size=size)
        return images.encoded(StoredImage.of(row), options)

    return read


def _file_name(row: Row[Any], content: Content, fmt: str, stand_in: str | None) -> str:
    if stand_in is not None and stand_in.endswith(".dcm"):
        return f"images/{row.id}.dcm"
    if stand_in is not None:
        return f"images/{row.id}.{'jpg' if stand_in.endswith(('.jpg', '.jpeg')) else 'png'}"
    if content == "original":
        return f"images/{row.id}.{ImageFormat(row.format).extension}"
    preview = content in ("preview", "dicom")
    return f"images/{row.id}.{'png' if preview else 'jpg' if fmt == 'jpeg' else 'png'}"


def _metadata_csv(
    lake: Lake, rows: Sequence[Row[Any]], names: Sequence[str], role: Role, content: Content
) -> Callable[[], bytes]:
    # A zip of de-identified objects carries nothing that leads back to the originals:
    # no source key (archives name files after patients), no original's sha256.
    linked = content != "dicom"
    fields = [f for f in CSV_FIELDS if linked or f not in ("source_key", "sha256")]

    def read() -> bytes:
        ids = [row.id for row in rows]
        with session_factory(lake.engine)() as session:
            findings, boxes = label_tallies(session, image_ids=ids)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row, name in zip(rows, names, strict=True):
            writer.writerow(
                {
                    "id": row.id,
                    "file": name,
                    "source_key": shown_key(row.source_key, role),
                    "sha256": row.sha256,
                    "format": row.format,
                    "modality": row.modality or "",
                    "view": row.view_position or "",
                    "manufacturer": row.manufacturer or "",
                    "rows": row.rows,
                    "columns": row.columns,
                    "findings": "|".join(sorted(findings.get(row.id, ()))),
                    "boxes": boxes.get(row.id, 0),
                }
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
    found = rendition_keys(session, image_ids=flagged, name=DEIDENTIFIED)
    missing = [image_id for image_id in flagged if image_id not in found]
    if missing:
        raise HTTPException(
            403, detail=f"images {_ids(missing)} {BURNED_IN_REASON} (leave them out of the filter)"
        )
    return found


def _deidentified_objects(lake: Lake, rows: Sequence[Row[Any]]) -> dict[int, str]:
    """The de-identified object of every DICOM image (made where missing); 403/422 with
    the images' ids when one is withheld or cannot be de-identified."""
    dicom = [row.id for row in rows if row.format == ImageFormat.DICOM.value]
    refs, failed = ensure_deidentified(lake, dicom)
    withheld = sorted(i for i, ref in refs.items() if ref.withheld)
    if withheld:
        raise HTTPException(
            403, detail=f"images {_ids(withheld)}: {WITHHELD_REASON} (leave them out of the filter)"
        )
    missing = sorted(i for i in dicom if i not in refs)
    if missing:
        reason = failed.get(missing[0], "cannot de-identify")
        raise HTTPException(
            422, detail=f"images {_ids(missing)} cannot be de-identified ({reason})"
        )
    return {image_id: ref.key for image_id, ref in refs.items()}


def _ids(image_ids: Sequence[int]) -> str:
    shown = ", ".join(str(image_id) for image_id in image_ids[:10])
    more = "" if len(image_ids) <= 10 else f" and {len(image_ids) - 10} more"
    return shown + more


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
    stand_ins = (
        _deidentified_objects(lake, rows)
        if content == "dicom"
        else _stand_ins(session, caller, rows)
    )
    names = [_file_name(row, content, fmt, stand_ins.get(row.id)) for row in rows]
    # Rendered images are already compressed: stored, not deflated again.
    entries = [
        ZipEntry(
            name, _reader(lake, row, content, fmt, size, stand_ins.get(row.id)), compress=False
        )
        for row, name in zip(rows, names, strict=True)
    ]
    entries.append(ZipEntry("metadata.csv", _metadata_csv(lake, rows, names, caller.role, content)))
    audit.record(lake, caller, "download.zip", target, images=len(rows), content=content)
    # The first chunk is made before the status line: a store that is down is a 503
    # fault here, not a 200 whose body breaks off (and a traceback in the log).
    chunks = stream_zip(entries)
    first = next(chunks, b"")
    return StreamingResponse(
        itertools.chain((first,), chunks),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/images.zip", response_class=StreamingResponse, responses=schemas.ZIP | schemas.errors(403)
)
def images_zip(
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    selection: Selection,
    options: ZipQuery,
) -> StreamingResponse:
    """Every image matching the filter (stored previews, renderings or originals) + metadata.csv."""
    rows = zip_rows(session, selection=selection)
    return _zip(
        lake,
        session,
        caller,
        rows,
        f"images?{selection.as_dict()}",
        "images.zip",
        options,
    )


@router.get(
    "/datasets/{name}/versions/{version}/splits/{split}.zip",
    response_class=StreamingResponse,
    responses=schemas.ZIP | schemas.errors(403, 404),
)
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
    rows = zip_rows(session, selection=ImageFilter(dataset=name, version=version, split=(split,)))
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


@router.post(
    "/cohorts",
    status_code=201,
    response_model=schemas.SavedCohort,
    responses=schemas.errors(400, 403, 409),
)
def save_cohort(body: CohortIn, caller: Curator, lake: LakeDep) -> dict[str, Any]:
    """Save a named query (curators)."""
    selection = body.filter.as_dict()
    try:
        with transaction(lake.engine) as session:
            saved_cohorts.add_cohort(
                session, name=body.name, selection=selection, created_by=caller.name
            )
    except saved_cohorts.CohortExists as exc:
        raise HTTPException(409, detail=str(exc)) from None
    audit.record(lake, caller, "cohort.save", f"cohort/{body.name}")
    return {"name": body.name, "filter": selection}


@router.get("/cohorts", response_model=list[schemas.CohortItem])
def cohorts(caller: Viewer, session: DbSession) -> list[dict[str, Any]]:
    """Saved cohorts."""
    return [cohort_row(cohort) for cohort in saved_cohorts.list_cohorts(session)]


@router.delete("/cohorts/{name}", status_code=204, responses=schemas.errors(403, 404))
def delete_cohort(
    name: Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
    caller: Curator,
    lake: LakeDep,
) -> None:
    """Delete a saved cohort (curators); its images stay in the lake."""
    with transaction(lake.engine) as session:
        if not saved_cohorts.delete_cohort(session, name=name):
            raise HTTPException(404, detail=f"no cohort named {name!r}")
    audit.record(lake, caller, "cohort.delete", f"cohort/{name}")


@router.get(
    "/cohorts/{name}.zip",
    response_class=StreamingResponse,
    responses=schemas.ZIP | schemas.errors(403, 404),
)
def cohort_zip(
    name: Annotated[str, Path(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")],
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    options: ZipQuery,
) -> StreamingResponse:
    """A saved cohort's images as a zip."""
    cohort = saved_cohorts.find_cohort(session, name=name)
    if cohort is None:
        raise HTTPException(404, detail=f"no cohort named {name!r}")
    rows = zip_rows(session, selection=ImageFilter.from_dict(cohort.selection))
    return _zip(lake, session, caller, rows, f"cohort/{name}", f"{name}.zip", options)
