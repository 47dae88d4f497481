"""WADO-RS (PS3.18 10.4): de-identified objects as multipart/related, their stored
headers as DICOM JSON metadata, and rendered pictures of an instance or a frame.

What is served: the de-identified objects only, to every role (as GET
/images/{id}/dicom). An object whose pixels were withheld (text suspected and not
removable) is served to no one: a study or series is answered without it, the
instance itself is a 403. Retrievals of objects and metadata are audited like other
downloads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from radlake.api import audit
from radlake.api.decoding import decode_slot
from radlake.api.deps import DbSession, DicomwebReader, LakeDep
from radlake.api.dicomweb_media import (
    DICOM_JSON,
    Part,
    dicom_part_media,
    multipart_body,
    multipart_type,
    negotiate,
    new_boundary,
    retrieve_syntaxes,
)
from radlake.api.dicomweb_params import bad, check_uid
from radlake.catalog.deid_models import PIXELS_WITHHELD
from radlake.catalog.dicomweb_queries import Stored, headers, stored_instances
from radlake.domain import ImageFormat
from radlake.pipelines.stored_images import RenderOptions, StoredImage, StoredImages

router = APIRouter()
WITHHELD = "its pixels are withheld: text was suspected in them and could not be removed"
RENDERED_TYPES = ("image/jpeg", "image/png")  # PS3.18 8.7.4: JPEG is the default
RENDER_FORMATS = {"image/jpeg": "jpeg", "image/png": "png"}
RENDER_PARAMS = frozenset({"viewport", "window", "quality", "annotation", "charset", "iccprofile"})
MAX_SIDE = 4096
CACHE_CONTROL = "private, max-age=3600"


@dataclass(frozen=True, slots=True)
class Scope:
    """The study, series and instance a WADO-RS path names (UIDs checked: 400)."""

    study: str
    series: str | None
    sop: str | None

    @property
    def target(self) -> str:
        """The audit event's target: study/UID[/series/UID[/instance/UID]]."""
        uids = (self.study, self.series, self.sop)
        names = zip(("study", "series", "instance"), uids, strict=True)
        return "/".join(f"{name}/{uid}" for name, uid in names if uid is not None)


def _scope(request: Request) -> Scope:
    found = request.path_params
    study, series, sop = found["study"], found.get("series"), found.get("instance")
    check_uid(study, "StudyInstanceUID in the path")
    if series is not None:
        check_uid(series, "SeriesInstanceUID in the path")
    if sop is not None:
        check_uid(sop, "SOPInstanceUID in the path")
    return Scope(study, series, sop)


# One endpoint serves a study, a series and an instance: the path says which.
Scoped = Annotated[Scope, Depends(_scope)]
LEVEL_PATHS = (
    "/studies/{study}",
    "/studies/{study}/series/{series}",
    "/studies/{study}/series/{series}/instances/{instance}",
)


def path_parameters(path: str) -> dict[str, Any]:
    """OpenAPI entries of the UIDs in path (read by _scope, so not in the signature)."""
    names = re.findall(r"{(\w+)}", path)
    return {
        "parameters": [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
    }


def servable(items: list[Stored], single: bool) -> list[Stored]:
    """The objects that may be served: 404 when none exist; for one instance whose
    pixels are withheld, 403 with the reason."""
    kept = [s for s in items if s.pixels != PIXELS_WITHHELD]
    if single and items and not kept:
        raise HTTPException(403, detail=f"this instance is not served: {WITHHELD}")
    if not kept:
        raise HTTPException(404, detail="no such de-identified object")
    return kept


def retrieve(
    scope: Scoped, request: Request, caller: DicomwebReader, session: DbSession, lake: LakeDep
) -> Response:
    """WADO-RS: the served de-identified objects of a study, a series or one instance,
    as multipart/related, streamed one object at a time."""
    syntaxes = retrieve_syntaxes(request.headers.get("accept"))
    found = stored_instances(
        session, study_uid=scope.study, series_uid=scope.series, sop_uid=scope.sop
    )
    served = servable(found, single=scope.sop is not None)
    if syntaxes is not None:
        other = sorted({s.transfer_syntax or "?" for s in served} - syntaxes)
        if other:
            raise HTTPException(
                406,
                detail=f"stored in transfer syntax {', '.join(other)[:200]}; radlake does not "
                "transcode: ask for transfer-syntax=* or one of those",
            )
    parts = [Part(s.key, dicom_part_media(s.transfer_syntax)) for s in served]
    size = sum(s.size_bytes for s in served)
    audit.record(lake, caller, "dicomweb.retrieve", scope.target, instances=len(parts), bytes=size)
    boundary = new_boundary()
    return StreamingResponse(
        multipart_body(lake.store, parts, boundary), media_type=multipart_type(boundary)
    )


def metadata(
    scope: Scoped, request: Request, caller: DicomwebReader, session: DbSession, lake: LakeDep
) -> Response:
    """WADO-RS: the de-identified headers (DICOM JSON, no bulk data) of a study's, a
    series' or one instance's served objects."""
    media = negotiate(request.headers.get("accept"), (DICOM_JSON, "application/json"))
    found = headers(session, study_uid=scope.study, series_uid=scope.series, sop_uid=scope.sop)
    if not found:
        raise HTTPException(404, detail="no such de-identified object")
    audit.record(lake, caller, "dicomweb.metadata", scope.target, instances=len(found))
    return Response(json.dumps(found, separators=(",", ":")), media_type=media)


for _path in LEVEL_PATHS:
    router.add_api_route(
        _path,
        retrieve,
        methods=["GET"],
        response_class=StreamingResponse,
        responses={200: {"content": {'multipart/related; type="application/dicom"': {}}}},
        openapi_extra=path_parameters(_path),
    )
    router.add_api_route(
        _path + "/metadata",
        metadata,
        methods=["GET"],
        response_class=Response,
        responses={200: {"content": {DICOM_JSON: {}}}},
        openapi_extra=path_parameters(_path),
    )


def _numbers(text: str, name: str, count: int) -> list[float]:
    values = text.split(",")
    try:
        numbers = [float(v) for v in values[:count]]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise bad(f"{name}: expected {count} comma-separated numbers, got {text[:40]!r}")
    return numbers


def _viewport_size(text: str, stored: Stored) -> int:
    """PS3.18 8.3.5.1.3: the longest side that fits the picture in VW x VH pixels."""
    width, height = _numbers(text, "viewport", 2)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise bad(f"viewport: expected VW,VH, each side from 1 to {MAX_SIDE} pixels")
    rows, columns = stored.rows or 1, stored.columns or 1
    scale = min(width / columns, height / rows)
    return max(16, min(MAX_SIDE, round(max(rows, columns) * scale)))


def _window(text: str) -> str:
    """PS3.18 8.3.5.1.4: CENTER,WIDTH[,FUNCTION]; only the linear function."""
    parts = text.split(",")
    function = parts.pop().strip().lower() if len(parts) == 3 else ""
    if function not in ("", "linear", "linear_exact"):
        raise bad("window: only the linear VOI LUT function is supported")
    center, width = _numbers(",".join(parts), "window", 2)
    return f"{center},{width}"


def _render_options(request: Request, stored: Stored, fmt: str, frame: int) -> RenderOptions:
    """viewport and window as PS3.18 8.3.5.1 has them; quality, annotation, charset and
    iccprofile are accepted and not applied (no annotation is drawn: it would show
    patient data)."""
    params = request.query_params
    unknown = sorted(set(params) - RENDER_PARAMS)
    if unknown:
        raise bad(f"unknown query parameter {unknown[0][:40]!r} for a rendered resource")
    size = _viewport_size(params["viewport"], stored) if "viewport" in params else None
    window = _window(params["window"]) if "window" in params else None
    return RenderOptions.parse(
        format="png" if fmt == "png" else "jpeg", size=size, slice_index=frame, window=window
    )


def _rendered(
    request: Request, session: DbSession, lake: LakeDep, scope: Scope, frame: int
) -> Response:
    media = negotiate(request.headers.get("accept"), RENDERED_TYPES)
    found = stored_instances(
        session, study_uid=scope.study, series_uid=scope.series, sop_uid=scope.sop
    )
    # One SOP Instance UID may name two objects (one instance in two transfer
    # syntaxes): the first in instance order answers.
    stored = servable(found, single=True)[0]
    if not 0 <= frame < (stored.frames or 1):
        raise bad(f"frame {frame + 1}: the instance has {stored.frames or 1} frames")
    options = _render_options(request, stored, RENDER_FORMATS[media], frame)
    etag = options.etag(stored.sha256)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    images = StoredImages(
        lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes, decode_guard=decode_slot
    )
    # The de-identified object's own bytes: text the check blanked stays blanked.
    image = StoredImage(stored.sha256, ImageFormat.DICOM, stored.key)
    return Response(images.encoded(image, options), media_type=media, headers=headers)


_IMAGE: dict[str, Any] = {
    "response_class": Response,
    "responses": {200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    "openapi_extra": path_parameters(LEVEL_PATHS[-1]),
}


@router.get(LEVEL_PATHS[-1] + "/rendered", **_IMAGE)
def instance_rendered(
    scope: Scoped, request: Request, caller: DicomwebReader, session: DbSession, lake: LakeDep
) -> Response:
    """WADO-RS: the instance's first frame as JPEG or PNG (Accept), native size
    unless a viewport is given."""
    return _rendered(request, session, lake, scope, 0)


@router.get(LEVEL_PATHS[-1] + "/frames/{frame}/rendered", **_IMAGE)
def frame_rendered(
    scope: Scoped,
    frame: str,
    request: Request,
    caller: DicomwebReader,
    session: DbSession,
    lake: LakeDep,
) -> Response:
    """WADO-RS: one frame (numbered from 1) as JPEG or PNG."""
    if not re.fullmatch(r"[0-9]{1,6}", frame) or int(frame) < 1:
        raise bad(f"frame: expected one frame number from 1, got {frame[:40]!r}")
    return _rendered(request, session, lake, scope, int(frame) - 1)
