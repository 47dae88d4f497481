"""STOW-RS (PS3.18 10.5): POST /dicomweb/studies[/{study}] with a multipart/related;
type="application/dicom" body, for curators and above (as POST /images).

Each part is read as it arrives (at most one part in memory), checked, ingested
(pipelines.ingest.ingest_bytes, the upload's entry point: hashed, catalogued once,
nothing kept of a rejected part, whose sender has it and the reason), and then
de-identified (pipelines.deidentify.ensure_deidentified; already-present instances
get their object made if it is missing). The answer is the Store Instances Response
Module: 200 when every instance is stored and served, 202 when some failed or carry
a warning, 409 when none was stored; each failed one with a FailureReason (PS3.4
B.2.3) and a text reason (no patient data).

UIDs in the answer: ReferencedSOPInstanceUID is the UID as sent (the sender's own,
so it can tell which part is which); RetrieveURL is where the de-identified object
is served, under its remapped UIDs: this service never serves the UIDs it received.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool

from radlake.api import audit
from radlake.api.decoding import decode_slot
from radlake.api.deps import Caller, Curator, LakeDep
from radlake.api.dicomweb_json import StowItem, instance_url, stow_response
from radlake.api.dicomweb_media import DICOM, DICOM_JSON, MULTIPART, base_url
from radlake.api.dicomweb_params import check_uid
from radlake.api.dicomweb_parts import BodyError, PartReader, ReceivedPart, boundary_of
from radlake.api.routes.images import upload_key
from radlake.api.schemas import ErrorDetail
from radlake.api.upload_ingest import ingest_upload
from radlake.catalog.db import transaction
from radlake.catalog.deid_instances import DeidRef
from radlake.catalog.dicomweb_queries import locations
from radlake.catalog.uploads import record_upload
from radlake.domain import ImageFormat, RejectedInput
from radlake.errors import CatalogError, StorageError
from radlake.imaging.dicom_dataset import quiet
from radlake.imaging.sniff import SNIFF_BYTES, sniff_format
from radlake.lake import Lake
from radlake.pipelines.deidentify import ensure_deidentified
from radlake.pipelines.ingest import IngestFault

LOG = logging.getLogger(__name__)
router = APIRouter()

# PS3.4 B.2.3 C-STORE failure and warning codes, as PS3.18 10.5.3 uses them.
OUT_OF_RESOURCES = 0xA700
NOT_MATCHING = 0xA900  # "Data Set does not match SOP Class": here, not of the study
CANNOT_UNDERSTAND = 0xC000
COERCED = 0xB000  # Coercion of Data Elements: stored, but not as sent
DEFAULT_TOTAL_LIMIT = 4 * 1024**3  # bytes of one request; app.state.stow_limit overrides
WITHHELD = "stored, not served: text was suspected in its pixels and could not be removed"
FAULT = "the store or the catalog failed: nothing was lost, send it again"


@dataclass(slots=True)
class _Pending:
    """A part on its way: the UIDs it was sent with, and the image and de-identified
    object it became (or why not)."""

    sop_class_uid: str | None
    sop_uid: str | None
    image_id: int | None = None
    ref: DeidRef | None = None
    failure: StowItem | None = None


def _header_uids(data: bytes) -> tuple[str | None, str | None, str | None]:
    """(SOP Class, SOP Instance, Study Instance) UIDs as sent, or Nones."""
    try:
        with quiet():
            ds = dcmread(
                io.BytesIO(data),
                stop_before_pixels=True,
                force=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
            )
            meta = getattr(ds, "file_meta", None)
            sop = ds.get("SOPInstanceUID") or (meta or {}).get("MediaStorageSOPInstanceUID")
            found = (ds.get("SOPClassUID"), sop, ds.get("StudyInstanceUID"))
    except Exception:  # pydicom raises many kinds on broken input: none is ours
        return None, None, None
    return tuple(str(v).strip()[:64] if v else None for v in found)  # type: ignore[return-value]


def _ingest(
    lake: Lake, caller: Caller, part: ReceivedPart, study: str | None, part_limit: int, index: int
) -> _Pending:
    """Check one part, ingest it and de-identify it; a failure is kept in the result,
    never raised, but for faults of the store or the catalog (IngestFault,
    StorageError, CatalogError), which the caller counts against every later part."""
    data = bytes(part.data)
    if part.media not in ("", DICOM):
        reason = f"a part of type {part.media[:60]}: only {DICOM} parts are stored"
        return _failed(None, None, CANNOT_UNDERSTAND, reason)
    if part.too_large:
        reason = f"larger than the {part_limit}-byte limit for one instance"
        return _failed(None, None, OUT_OF_RESOURCES, reason)
    if sniff_format(data[:SNIFF_BYTES]) is not ImageFormat.DICOM:
        return _failed(None, None, CANNOT_UNDERSTAND, "not a DICOM object (PS3.10)")
    sop_class, sop, sent_study = _header_uids(data)
    if study is not None and sent_study != study:
        reason = "its StudyInstanceUID is not the study of the request"
        return _failed(sop_class, sop, NOT_MATCHING, reason)
    received = datetime.now(UTC)
    # Not the SOP Instance UID as sent: viewers see a source key's last component.
    key = upload_key(caller.name, received, f"stow-part-{index}.dcm")
    result = ingest_upload(lake, data, source="dicomweb", key=key)
    if isinstance(result.outcome, RejectedInput):
        return _failed(sop_class, sop, CANNOT_UNDERSTAND, result.outcome.reason)
    if result.outcome.metadata.format is not ImageFormat.DICOM or result.image_id is None:
        return _failed(sop_class, sop, CANNOT_UNDERSTAND, "not catalogued as a DICOM image")
    if result.new:
        with transaction(lake.engine) as session:
            record_upload(
                session,
                image_id=result.image_id,
                uploaded_by=caller.name,
                uploaded_at=received,
                client_file_name=None,
            )
    image_id = result.image_id
    with decode_slot():  # the pixel check decodes
        refs, failed = ensure_deidentified(lake, [image_id])
    ref = refs.get(image_id)
    if ref is None:
        reason = "catalogued, but " + failed.get(image_id, "cannot de-identify")
        return _failed(sop_class, sop, CANNOT_UNDERSTAND, reason)
    return _Pending(sop_class, sop, image_id, ref)


def _failed(sop_class: str | None, sop: str | None, code: int, reason: str) -> _Pending:
    return _Pending(sop_class, sop, failure=StowItem(sop_class, sop, failure=code, reason=reason))


def lake_part_limit(lake: Lake, app_limit: int | None = None) -> int:
    """Bytes one part may have: the lake's input limit (and the app's upload limit)."""
    limit = lake.limits.max_input_bytes
    return min(limit, app_limit) if app_limit else limit


def _finish(lake: Lake, pending: list[_Pending], base: str) -> list[StowItem]:
    """Each part's answer: where its de-identified object is served, or why not.

    Raises:
        CatalogError: the catalog kept failing.
    """
    ids = [p.image_id for p in pending if p.ref is not None and p.image_id is not None]
    where: dict[int, tuple[str, str, str]] = {}
    if ids:
        with transaction(lake.engine) as session:
            where = locations(session, image_ids=ids)
    return [_item(p, where, base) for p in pending]


def _item(p: _Pending, where: dict[int, tuple[str, str, str]], base: str) -> StowItem:
    place = where.get(p.image_id) if p.image_id is not None else None
    if p.failure is not None or p.ref is None or place is None:
        return p.failure or StowItem(
            p.sop_class_uid, p.sop_uid, failure=OUT_OF_RESOURCES, reason=FAULT
        )
    if p.ref.withheld:
        return StowItem(p.sop_class_uid, p.sop_uid, warning=COERCED, reason=WITHHELD)
    return StowItem(p.sop_class_uid, p.sop_uid, retrieve_url=instance_url(base, *place))


def _status(items: list[StowItem]) -> int:
    """PS3.18 10.5.3: 200 all stored, 202 some failed or warned, 409 none stored."""
    if all(i.failure is not None for i in items):
        return 409
    if any(i.failure is not None or i.warning is not None for i in items):
        return 202
    return 200


def _content(request: Request) -> str:
    """The boundary of a multipart/related; type="application/dicom" body, else 415
    (another media type) or 400 (no boundary), with the reason."""
    media, params = boundary_of(request.headers.get("content-type", ""))
    expected = f'expected Content-Type {MULTIPART}; type="{DICOM}"; boundary=...'
    if media != MULTIPART:
        raise HTTPException(415, detail=f"{expected}, got {media[:60]!r}")
    kind = params.get("type", DICOM).lower()
    if kind != DICOM:
        raise HTTPException(
            415,
            detail=f"type {kind[:60]!r}: only {DICOM} instances are stored "
            "(metadata with bulk data is not supported)",
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise HTTPException(400, detail=f"{expected}: the boundary parameter is missing")
    return boundary


class _Run:
    """One request's parts and whether the store or catalog failed on one of them
    (the parts after a fault are not tried: they would wait for the same fault)."""

    def __init__(self, lake: Lake, caller: Caller, study: str | None, part_limit: int) -> None:
        self.lake, self.caller, self.study = lake, caller, study
        self.part_limit = part_limit
        self.pending: list[_Pending] = []
        self.fault = False

    def add(self, part: ReceivedPart) -> None:
        if self.fault:
            self.pending.append(_failed(None, None, OUT_OF_RESOURCES, FAULT))
            return
        try:
            self.pending.append(
                _ingest(
                    self.lake, self.caller, part, self.study, self.part_limit, len(self.pending) + 1
                )
            )
        except (IngestFault, StorageError, CatalogError) as exc:
            LOG.error("STOW-RS: %s; the parts after it are refused", type(exc).__name__)
            self.fault = True
            self.pending.append(_failed(None, None, OUT_OF_RESOURCES, FAULT))

    def rest(self, reason: str, code: int) -> None:
        """The body stopped being read: its remaining parts fail with reason."""
        self.pending.append(_failed(None, None, code, reason))


async def _store(request: Request, caller: Caller, lake: Lake, study: str | None) -> Response:
    boundary = _content(request)
    part_limit = lake_part_limit(lake, int(request.app.state.upload_limit))
    total = int(getattr(request.app.state, "stow_limit", DEFAULT_TOTAL_LIMIT))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > total:
        raise HTTPException(413, detail=f"the body is larger than the {total}-byte limit")
    try:
        reader = PartReader(boundary, part_limit=part_limit)
    except BodyError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    run, received = _Run(lake, caller, study, part_limit), 0
    try:
        async for chunk in request.stream():
            room = total - received
            received += len(chunk)
            # The parts complete within the limit are stored; the rest is not read.
            reader.feed(chunk[:room])
            for part in reader.take():
                await run_in_threadpool(run.add, part)
            if received > total:
                raise BodyError(f"the body passed the {total}-byte limit: the rest was not read")
        reader.finish()
        for part in reader.take():
            await run_in_threadpool(run.add, part)
    except BodyError as exc:
        if not run.pending:
            raise HTTPException(413 if received > total else 400, detail=str(exc)) from None
        run.rest(str(exc), OUT_OF_RESOURCES if received > total else CANNOT_UNDERSTAND)
    base = base_url(request)
    try:
        items = await run_in_threadpool(_finish, lake, run.pending, base)
    except CatalogError:
        LOG.error("STOW-RS: catalog fault while answering")
        items = [
            p.failure
            or StowItem(p.sop_class_uid, p.sop_uid, failure=OUT_OF_RESOURCES, reason=FAULT)
            for p in run.pending
        ]
    stored = [i for i in items if i.failure is None]
    target = "dicomweb/studies" + (f"/{study}" if study else "")
    audit.record(
        lake,
        caller,
        "dicomweb.store",
        target,
        instances=len(items),
        stored=len(stored),
        bytes=received,
    )
    studies = {i.retrieve_url.split("/series/")[0] for i in stored if i.retrieve_url}
    answer = stow_response(items, studies.pop() if len(studies) == 1 else None)
    return Response(json.dumps(answer), status_code=_status(items), media_type=DICOM_JSON)


_STOW: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: {"content": {DICOM_JSON: {}}, "description": "Every instance stored"},
        202: {"content": {DICOM_JSON: {}}, "description": "Some failed or carry a warning"},
        409: {"content": {DICOM_JSON: {}}, "description": "No instance was stored"},
        413: {"model": ErrorDetail, "description": "The body is larger than the limit"},
        415: {"model": ErrorDetail, "description": "Not multipart/related of DICOM"},
    },
}


@router.post("/studies", **_STOW)
async def store_instances(request: Request, caller: Curator, lake: LakeDep) -> Response:
    """STOW-RS: store DICOM instances (curators and admins), sent as a
    multipart/related; type="application/dicom" body (not described in this document:
    OpenAPI has no form for it)."""
    return await _store(request, caller, lake, None)


@router.post("/studies/{study}", **_STOW)
async def store_study_instances(
    study: str, request: Request, caller: Curator, lake: LakeDep
) -> Response:
    """STOW-RS: store DICOM instances of one study (others fail with 0xA900)."""
    return await _store(request, caller, lake, check_uid(study, "StudyInstanceUID in the path"))
