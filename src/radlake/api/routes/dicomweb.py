"""DICOMweb under /dicomweb (PS3.18): QIDO-RS searches here, WADO-RS retrieval in
dicomweb_wado (objects, metadata, rendered) and dicomweb_frames (pixel data of
frames), STOW-RS in dicomweb_stow; one router holds them all.

Every answer comes from deid_instance and the de-identified objects (issue 13):
never an original UID, header or byte. Viewers and dicomweb tokens search and
retrieve; storing needs the curator role. No match is a 204 with no body (PS3.18
8.3.4.4.1 as published; CP-2473 proposes 200 with an empty body): dicomweb-client,
OHIF and curl read both as "nothing found", and a 204 cannot be mistaken for a page
of results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response

from radlake.api import schemas
from radlake.api.deps import DbSession, DicomwebReader
from radlake.api.dicomweb_json import Json, instance_match, series_match, study_match
from radlake.api.dicomweb_media import DICOM_JSON, PREFIX, base_url, negotiate, warning_header
from radlake.api.dicomweb_params import Search, check_uid, parse_search
from radlake.api.routes import dicomweb_frames, dicomweb_stow, dicomweb_wado
from radlake.catalog.dicomweb_queries import search_instances, search_series, search_studies

JSON_TYPES = (DICOM_JSON, "application/json")
MORE = "There are additional results that can be requested"  # PS3.18 8.3.4.4

router = APIRouter(
    prefix=PREFIX,
    tags=["dicomweb"],
    responses=schemas.errors(400, 401, 403, 404, 422)
    | {406: {"model": schemas.ErrorDetail, "description": "Accept names nothing served here"}},
)


def json_answer(found: list[Json], warnings: Sequence[str] = ()) -> Response:
    """DICOM JSON, or 204 with no body when nothing was found."""
    headers = warning_header(warnings)
    if not found:
        return Response(status_code=204, headers=headers)
    body = json.dumps(found, separators=(",", ":"))
    return Response(body, media_type=DICOM_JSON, headers=headers)


def _search(
    request: Request, session: DbSession, level: str, study: str | None, series: str | None
) -> Response:
    media = negotiate(request.headers.get("accept"), JSON_TYPES)
    if study is not None:
        check_uid(study, "StudyInstanceUID in the path")
    if series is not None:
        check_uid(series, "SeriesInstanceUID in the path")
    search = parse_search(request.query_params, level=level, study=study, series=series)
    found, more = ([], False) if search.nothing else _run(session, search, level, request)
    answer = json_answer(found, search.warnings + ((MORE,) if more else ()))
    if found:
        answer.headers["content-type"] = media
    return answer


def _run(
    session: DbSession, search: Search, level: str, request: Request
) -> tuple[list[Json], bool]:
    base, page = base_url(request), dict(limit=search.limit, offset=search.offset)
    if level == "study":
        studies = search_studies(session, match=search.match, **page)
        return [study_match(g, base, search.returned) for g in studies.groups], studies.more
    if level == "series":
        series = search_series(session, match=search.match, **page)
        return [series_match(g, base, search.returned) for g in series.groups], series.more
    rows, more = search_instances(session, match=search.match, **page)
    return [instance_match(row, base, search.returned) for row in rows], more


_SEARCH: dict[str, Any] = {
    "responses": {200: {"content": {DICOM_JSON: {}}}, 204: {"description": "Nothing matched"}},
    "response_class": Response,
}


@router.get("/studies", **_SEARCH)
def studies(request: Request, caller: DicomwebReader, session: DbSession) -> Response:
    """QIDO-RS: search for studies (PS3.18 10.6)."""
    return _search(request, session, "study", None, None)


@router.get("/series", **_SEARCH)
def all_series(request: Request, caller: DicomwebReader, session: DbSession) -> Response:
    """QIDO-RS: search for series in every study."""
    return _search(request, session, "series", None, None)


@router.get("/instances", **_SEARCH)
def all_instances(request: Request, caller: DicomwebReader, session: DbSession) -> Response:
    """QIDO-RS: search for instances in every study."""
    return _search(request, session, "instance", None, None)


@router.get("/studies/{study}/series", **_SEARCH)
def study_series(
    study: str, request: Request, caller: DicomwebReader, session: DbSession
) -> Response:
    """QIDO-RS: search for the series of one study."""
    return _search(request, session, "series", study, None)


@router.get("/studies/{study}/instances", **_SEARCH)
def study_instances(
    study: str, request: Request, caller: DicomwebReader, session: DbSession
) -> Response:
    """QIDO-RS: search for the instances of one study."""
    return _search(request, session, "instance", study, None)


@router.get("/studies/{study}/series/{series}/instances", **_SEARCH)
def series_instances(
    study: str, series: str, request: Request, caller: DicomwebReader, session: DbSession
) -> Response:
    """QIDO-RS: search for the instances of one series."""
    return _search(request, session, "instance", study, series)


router.include_router(dicomweb_wado.router)
router.include_router(dicomweb_frames.router)
router.include_router(dicomweb_stow.router)
