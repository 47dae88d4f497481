"""An image's de-identified DICOM object (issue 13): what everyone but admins downloads.

Made on first request when `radlake deid run` (or de-identification on ingest) has not
made it yet. Objects whose pixels were withheld (burned-in text that could not be
blanked) go to no one: admins have the original.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from radlake.api import audit, schemas
from radlake.api.conditional import none_match
from radlake.api.deps import DbSession, LakeDep, Viewer
from radlake.api.routes.images import CACHE_CONTROL, ImageId
from radlake.catalog.image_reads import pixel_columns
from radlake.domain import ImageFormat
from radlake.pipelines.deidentify import ensure_deidentified, read_object

router = APIRouter(tags=["images"], responses=schemas.errors(401, 422))
WITHHELD_REASON = (
    "its pixels show burned-in text that could not be blanked: withheld from everyone "
    "(admins may have the original)"
)


@router.get(
    "/images/{image_id}/dicom",
    response_class=Response,
    responses=schemas.errors(403, 404)
    | schemas.binary("application/dicom", description="The de-identified DICOM object"),
)
def deidentified_object(
    image_id: ImageId, request: Request, caller: Viewer, session: DbSession, lake: LakeDep
) -> Response:
    """The image's de-identified DICOM object (PS3.15 Basic Profile, the lake's options,
    keyed UIDs, burned-in text blanked); audited; ETag revalidation (304)."""
    image = pixel_columns(session, image_id=image_id)
    if image.format != ImageFormat.DICOM.value:
        raise HTTPException(
            404, detail=f"image {image_id} is {image.format}, not DICOM: it has no DICOM object"
        )
    refs, failed = ensure_deidentified(lake, [image_id])
    ref = refs.get(image_id)
    if ref is None:
        reason = failed.get(image_id, "cannot de-identify")
        raise HTTPException(422, detail=f"image {image_id}: {reason}")
    if ref.withheld:
        raise HTTPException(403, detail=f"image {image_id}: {WITHHELD_REASON}")
    found = read_object(lake, ref)  # made again if the store lost or changed it
    if found is None:
        raise HTTPException(422, detail=f"image {image_id}: cannot de-identify")
    ref, data = found
    headers = {
        "Content-Disposition": f'attachment; filename="{ref.sop_uid}.dcm"',
        "ETag": f'"{ref.sha256}"',
        "Cache-Control": CACHE_CONTROL,
    }
    if none_match(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    audit.record(lake, caller, "download.deidentified", f"image/{image_id}", bytes=len(data))
    return Response(data, media_type="application/dicom", headers=headers)
