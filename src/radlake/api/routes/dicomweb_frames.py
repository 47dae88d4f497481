"""WADO-RS frames (PS3.18 10.4.1.1.6): /studies/{study}/series/{series}/instances/
{instance}/frames/{list}, the pixel data of the frames asked for, as stored.

Each frame is one part of a multipart/related answer: an uncompressed frame as
application/octet-stream, a compressed one in the media type of its transfer syntax
(PS3.18 Table 8.7.3-5: image/jpeg, image/jls, image/jp2, image/jpx, image/jphc,
image/dicom-rle), with the transfer-syntax parameter. An Accept of
application/octet-stream with transfer-syntax=* (what OHIF and other
cornerstone-based viewers send) lets the server choose: every frame is then sent as
stored, as application/octet-stream, and its transfer-syntax parameter says how it
is encoded. Frames are not transcoded: an Accept that rules out the stored form is
a 406 with the reason. The object is read whole (it is at most the upload limit),
never an original.
"""

from __future__ import annotations

import io
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from radlake.api import audit
from radlake.api.deps import DbSession, DicomwebReader, LakeDep
from radlake.api.dicomweb_media import (
    MULTIPART,
    MediaRange,
    accept_ranges,
    new_boundary,
    not_acceptable,
)
from radlake.api.dicomweb_params import bad
from radlake.api.routes.dicomweb_wado import LEVEL_PATHS, Scoped, path_parameters, servable
from radlake.catalog.dicomweb_queries import stored_instances
from radlake.imaging.dicom_dataset import quiet

router = APIRouter()
OCTETS = "application/octet-stream"
MAX_FRAMES = 10_000
# PS3.18 Table 8.7.3-5: the media type of a compressed frame, by transfer syntax.
COMPRESSED = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# Native little endian pixel bytes are the same in every one of these.
LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"})


def _frame_numbers(text: str) -> list[int]:
    if not re.fullmatch(r"[0-9]{1,6}(,[0-9]{1,6}){0,9999}", text):
        raise bad(f"frames: expected frame numbers from 1, comma-separated, got {text[:40]!r}")
    numbers = [int(n) for n in text.split(",")]
    if min(numbers) < 1 or len(numbers) > MAX_FRAMES:
        raise bad(f"frames: numbers start at 1, at most {MAX_FRAMES} of them")
    return numbers


def _part_media(syntax: str, accept: str | None) -> str:
    """The Content-Type of each part, if Accept allows frames stored in syntax."""
    native = COMPRESSED.get(syntax) or OCTETS
    # Frames the server can send without being asked for their syntax by name.
    plain = syntax in COMPRESSED or syntax in LITTLE_ENDIAN
    for wanted in accept_ranges(accept):
        if wanted.media in ("*/*", "multipart/*"):
            if plain:
                return native
            continue
        if wanted.media != MULTIPART:
            continue
        asked_type = MediaRange(wanted.params.get("type", OCTETS).lower())
        asked = wanted.params.get("transfer-syntax")
        # None: PS3.18's default for octet-stream is Explicit VR Little Endian, whose
        # native pixel bytes are the stored ones for every little-endian syntax.
        if asked_type.covers(native) and (
            asked in ("*", syntax) or (asked is None and syntax in LITTLE_ENDIAN)
        ):
            return native
        # "*" (or this very syntax) as octet-stream: the stored bytes, labelled.
        if asked_type.covers(OCTETS) and asked in ("*", syntax):
            return OCTETS
    raise not_acceptable(accept, [f'{MULTIPART}; type="{native}"; transfer-syntax={syntax}'])


def _frames(data: bytes, numbers: list[int]) -> list[bytes]:
    """The pixel data of frames numbers (from 1) of a Part 10 object."""
    with quiet():
        ds = dcmread(io.BytesIO(data))
        count = int(ds.get("NumberOfFrames") or 1)
        if "PixelData" not in ds:
            raise HTTPException(404, detail="this instance has no pixel data")
        if max(numbers) > count:
            raise bad(f"frames: the instance has {count} frames")
        pixels = ds.PixelData
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        # is_encapsulated raises on a UID pydicom does not know as a transfer syntax.
        if syntax.is_transfer_syntax and syntax.is_encapsulated:
            every = list(generate_frames(pixels, number_of_frames=count))
            return [every[n - 1] for n in numbers]
        bits = int(ds.BitsAllocated)
        if bits % 8:
            raise HTTPException(406, detail=f"{bits}-bit frames are not served")
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * bits // 8
        return [bytes(pixels[(n - 1) * size : n * size]) for n in numbers]


def frames(
    scope: Scoped,
    frame_list: str,
    request: Request,
    caller: DicomwebReader,
    session: DbSession,
    lake: LakeDep,
) -> Response:
    """WADO-RS: frames of one de-identified instance, as stored."""
    numbers = _frame_numbers(frame_list)
    found = stored_instances(
        session, study_uid=scope.study, series_uid=scope.series, sop_uid=scope.sop
    )
    # One SOP Instance UID may name two objects (one instance in two transfer
    # syntaxes): the first in instance order answers.
    stored = servable(found, single=True)[0]
    syntax = stored.transfer_syntax or ""
    media = _part_media(syntax, request.headers.get("accept"))
    pieces = _frames(lake.store.get_bytes(stored.key), numbers)
    audit.record(lake, caller, "dicomweb.frames", scope.target, frames=len(pieces))
    boundary = new_boundary()
    part = f"--{boundary}\r\nContent-Type: {media}; transfer-syntax={syntax}\r\n\r\n"
    body = b"".join(part.encode() + piece + b"\r\n" for piece in pieces)
    return Response(
        body + f"--{boundary}--\r\n".encode(),
        media_type=f'{MULTIPART}; type="{media}"; boundary={boundary}',
    )


_PATH = LEVEL_PATHS[-1] + "/frames/{frame_list}"
_DOC: dict[str, Any] = {"response_class": Response}
router.add_api_route(
    _PATH, frames, methods=["GET"], openapi_extra=path_parameters(LEVEL_PATHS[-1]), **_DOC
)
