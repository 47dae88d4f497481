"""Images: query, one image, original bytes, renderings, labels, upload."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, HTTPException, Path, Query, Request, Response, UploadFile

from radlake.api import audit, schemas
from radlake.api.conditional import byte_range, none_match
from radlake.api.decoding import decode_slot
from radlake.api.deps import Curator, DbSession, LakeDep, Selection, Viewer
from radlake.api.privacy import (
    DEIDENTIFIED,
    pixels_withheld,
    require_original_access,
    withheld,
)
from radlake.api.serialize import image_full, image_listing, label_item
from radlake.api.upload_ingest import ingest_upload
from radlake.catalog.db import transaction
from radlake.catalog.image_reads import (
    TOTAL_CAP,
    image_labels,
    image_page,
    pixel_columns,
    rendition_keys,
)
from radlake.catalog.queries import get_image
from radlake.catalog.uploads import record_upload
from radlake.domain import ImageFormat, Plane, RejectedInput
from radlake.imaging.render import PREVIEW_SIZE
from radlake.pipelines.deidentify import deidentify_images
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages, check_size

router = APIRouter(tags=["images"], responses=schemas.errors(401, 422))
ImageId = Annotated[int, Path(ge=1, le=2**62, description="Image id")]
MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}
CACHE_CONTROL = "private, max-age=3600"
UPLOAD_CHUNK = 1 << 20
MAX_NAME_CHARACTERS = 120


@router.get("/images", response_model=schemas.ImageListing)
def list_images(
    caller: Viewer,
    session: DbSession,
    selection: Selection,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int, Query(ge=0, le=2**62, description="Last id of the previous page")] = 0,
    count: Annotated[
        Literal["capped", "exact"],
        Query(description=f"capped: exact up to {TOTAL_CAP}, then {TOTAL_CAP}, not exact"),
    ] = "capped",
) -> dict[str, Any]:
    """Images matching the filter, in id order, a page at a time, with their total."""
    page = image_page(
        session, selection=selection, limit=limit, after_id=cursor, exact_count=count == "exact"
    )
    return image_listing(page, caller.role)


@router.get("/images/{image_id}", response_model=schemas.ImageDetail, responses=schemas.errors(404))
def one_image(image_id: ImageId, caller: Viewer, session: DbSession) -> dict[str, Any]:
    """Every catalogued field of one image."""
    return image_full(get_image(session, image_id=image_id), caller.role)


@router.get(
    "/images/{image_id}/original",
    response_class=Response,
    responses=schemas.errors(403, 404)
    | schemas.binary(
        "application/dicom", "application/octet-stream", description="The bytes as received"
    ),
)
def original(
    image_id: ImageId, request: Request, caller: Viewer, session: DbSession, lake: LakeDep
) -> Response:
    """The bytes as received, full headers included (curators and admins; 403 for
    viewers); revalidation by ETag (304) and single byte ranges (206)."""
    require_original_access(caller.role)
    image = pixel_columns(session, image_id=image_id)
    extension = ImageFormat(image.format).extension
    headers = {
        "Content-Disposition": f'attachment; filename="{image.sha256[:16]}.{extension}"',
        "ETag": f'"{image.sha256}"',
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
    }
    if none_match(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    media = "application/dicom" if image.format == "dicom" else "application/octet-stream"
    data = lake.store.get_bytes(image.original_key)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != headers["ETag"]:
        wanted = None  # the client's copy changed: send it whole (RFC 9110 13.1.5)
    try:
        span = byte_range(wanted, len(data))
    except ValueError:
        return Response(
            status_code=416, headers=headers | {"Content-Range": f"bytes */{len(data)}"}
        )
    audit.record(lake, caller, "download.original", f"image/{image_id}", bytes=len(data))
    if span is None:
        return Response(data, media_type=media, headers=headers)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return Response(data[first : last + 1], status_code=206, media_type=media, headers=headers)


@router.get(
    "/images/{image_id}/render",
    response_class=Response,
    responses=schemas.errors(403, 404, 422)
    | schemas.binary("image/png", "image/jpeg", description="A rendering"),
)
def rendering(
    image_id: ImageId,
    request: Request,
    caller: Viewer,
    session: DbSession,
    lake: LakeDep,
    format: Literal["png", "jpeg"] = "png",
    size: Annotated[
        int, Query(ge=16, le=4096, description="Longest side: 64, 128, 256, 512, 1024 or 2048")
    ] = PREVIEW_SIZE,
    slice_index: Annotated[int | None, Query(alias="slice", ge=0, le=100_000)] = None,
    plane: Plane = Plane.AXIAL,
    window: Annotated[str | None, Query(max_length=40, description="CENTER,WIDTH")] = None,
) -> Response:
    """A rendering: the stored preview (PNG or JPEG) for the default options, else made
    on the fly and not kept (pipelines/stored_images.py); ETag revalidation is free."""
    row = pixel_columns(session, image_id=image_id)
    if pixels_withheld(caller.role, row.attributes):
        return _deidentified(session, lake, image_id)
    image = StoredImage.of(row)
    options = RenderOptions.parse(
        format=format, size=check_size(size), slice_index=slice_index, plane=plane, window=window
    )
    etag = options.etag(image.sha256)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    images = StoredImages(
        lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes, decode_guard=decode_slot
    )
    return Response(images.rendering(image, options), media_type=MEDIA[format], headers=headers)


def _deidentified(session: DbSession, lake: LakeDep, image_id: int) -> Response:
    """A flagged image's de-identified rendition, the only picture of it viewers get."""
    key = rendition_keys(session, image_ids=[image_id], name=DEIDENTIFIED).get(image_id)
    if key is None:
        raise withheld(image_id)
    media = MEDIA["jpeg"] if key.endswith((".jpg", ".jpeg")) else MEDIA["png"]
    return Response(
        lake.store.get_bytes(key), media_type=media, headers={"Cache-Control": CACHE_CONTROL}
    )


@router.get(
    "/images/{image_id}/labels", response_model=schemas.ImageLabels, responses=schemas.errors(404)
)
def labels(image_id: ImageId, caller: Viewer, session: DbSession) -> dict[str, Any]:
    """Boxes and image-level findings with class, reader, origin and confidence."""
    found = image_labels(session, image_id=image_id)
    return {"image_id": image_id, "labels": [label_item(label) for label in found]}


def _safe_part(text: str, fallback: str) -> str:
    """Text fit for one key component: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:MAX_NAME_CHARACTERS]
    return cleaned or fallback


def upload_key(uploader: str, received: datetime, client_name: str | None) -> str:
    """upload/<token name>/<UTC time>/<client file name, sanitised>: a meaningful key,
    kept as data and never used as a path (only the name's last component is kept)."""
    base = re.split(r"[\\/]", client_name or "")[-1]
    stamp = received.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"upload/{_safe_part(uploader, 'token')}/{stamp}/{_safe_part(base, 'unnamed')}"


def _read_upload(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes, up to limit (413 beyond; the client's file name is never used)."""
    buffer = io.BytesIO()
    while chunk := file.file.read(UPLOAD_CHUNK):
        if buffer.tell() + len(chunk) > limit:
            raise HTTPException(413, detail=f"upload larger than the {limit}-byte limit")
        buffer.write(chunk)
    if buffer.tell() == 0:
        raise HTTPException(422, detail="empty file (0 bytes)")
    return buffer.getvalue()


@router.post(
    "/images",
    status_code=201,
    response_model=schemas.Uploaded,
    responses=schemas.errors(400, 403, 409, 413, 422),
)
def upload(
    request: Request,
    caller: Curator,
    lake: LakeDep,
    file: Annotated[UploadFile, File(description="A DICOM, NIfTI, PNG or JPEG file")],
) -> dict[str, Any]:
    """Ingest one image through the ingest pipeline, once; 422 with the reason if it is
    not one (nothing is kept of a rejected upload: its sender has it and the reason)."""
    limit = min(int(request.app.state.upload_limit), lake.limits.max_input_bytes)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(413, detail=f"upload larger than the {limit}-byte limit")
    data = _read_upload(file, limit)
    received = datetime.now(UTC)
    key = upload_key(caller.name, received, file.filename)
    result = ingest_upload(lake, data, source="upload", key=key)
    outcome, image_id = result.outcome, result.image_id
    if isinstance(outcome, RejectedInput):
        raise HTTPException(422, detail=outcome.reason)
    if image_id is None:  # catalogued a moment ago: only a concurrent delete could do this
        raise HTTPException(409, detail="the upload was catalogued and then removed")
    if result.new:
        with transaction(lake.engine) as session:
            record_upload(
                session,
                image_id=image_id,
                uploaded_by=caller.name,
                uploaded_at=received,
                client_file_name=file.filename,
            )
    fmt = outcome.metadata.format
    if lake.deid.on_ingest and fmt == ImageFormat.DICOM:
        with decode_slot():  # the pixel check decodes
            deidentify_images(lake, [image_id])
    audit.record(lake, caller, "upload", f"image/{image_id}", bytes=len(data), format=fmt.value)
    return {
        "id": image_id,
        "sha256": outcome.sha256,
        "format": fmt.value,
        "modality": outcome.metadata.modality,
        "already_present": not result.new,
    }
