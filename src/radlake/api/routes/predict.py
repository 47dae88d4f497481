"""Predictions: run a registered model on an image (an id or an upload) and read the
boxes recorded on an image (issue 10, "API and web page").

Who may do what: any signed-in role may run a model on an image it may see; an upload
needs the role uploads need (curator), since it adds an image to the lake. Pixels a
viewer is denied (api/privacy.py: possibly burned-in text) are not run for a viewer,
and their recorded boxes are not shown to one: boxes are derived from those pixels.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload

from radlake.api import schemas
from radlake.api.decoding import decode_slot
from radlake.api.deps import Caller, DbSession, LakeDep, Viewer
from radlake.api.predict_schemas import (
    MODEL_REF,
    ImagePredictions,
    PredictById,
    PredictFields,
    PredictionResult,
)
from radlake.api.privacy import pixels_withheld, withheld
from radlake.api.routes.images import ImageId, upload
from radlake.api.serialize import box_fields, prediction_runs
from radlake.auth import Role
from radlake.catalog.db import session_factory
from radlake.catalog.image_reads import pixel_columns
from radlake.catalog.model_registry import resolve_version
from radlake.inference.service import InferenceResult, predict_images, served_model
from radlake.pipelines.stored_images import StoredImages

router = APIRouter(tags=["predictions"], responses=schemas.errors(401, 422))
UPLOAD_ROLE = Role.CURATOR  # the role POST /images asks for


_FILE_FIELD = "file"
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_IGNORED_FIELDS = frozenset({"csrf_token"})  # the web page's form sends it (deps.py)
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictById.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        _FILE_FIELD: {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "An X-ray to store (if new) and run the model "
                            "on (curators); or give image_id instead",
                        },
                        **PredictFields.model_json_schema()["properties"],
                    },
                    "required": ["model"],
                }
            },
        },
    }
}


class PredictAsk:
    """A parsed request: its fields and the uploaded file, if any."""

    def __init__(self, fields: PredictFields, file: StarletteUpload | None) -> None:
        self.fields = fields
        self.file = file


def _invalid(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
    )


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


async def _predict_ask(request: Request) -> AsyncIterator[PredictAsk]:
    """The body as JSON (an image id) or a form (an image id or a file), checked here
    because one route takes both; 422 with the reason otherwise. The form's spooled
    file is closed once the answer is sent."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            # NaN and Infinity are not JSON (RFC 8259 section 6); Python would read them.
            body = json.loads(await request.body(), parse_constant=_not_json)
        except ValueError:
            raise HTTPException(400, detail="the body is not JSON") from None
        try:
            fields = PredictById.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        yield PredictAsk(fields, None)
        return
    if kind not in _FORM_TYPES:
        raise HTTPException(
            422,
            detail="expected a JSON body (image_id, model) or a form (file or image_id, model)",
        )
    try:
        form = await request.form(max_files=1, max_fields=20)
    except Exception:  # Starlette's MultiPartException and malformed bodies
        raise HTTPException(400, detail="the form could not be parsed") from None
    try:
        yield _from_form(form)
    finally:
        await form.close()


def _from_form(form: FormData) -> PredictAsk:
    values: dict[str, Any] = {}
    file: StarletteUpload | None = None
    for key, value in form.multi_items():
        if isinstance(value, StarletteUpload):
            if key != _FILE_FIELD:
                raise HTTPException(422, detail=f"a file goes in the field {_FILE_FIELD!r}")
            file = value
        elif key not in _IGNORED_FIELDS and value != "":  # an empty input is absent
            values[key] = value
    try:
        fields = PredictFields.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if (file is None) == (fields.image_id is None):
        raise HTTPException(422, detail="send either a file or an image_id, not both or neither")
    return PredictAsk(fields, file)


Ask = Annotated[PredictAsk, Depends(_predict_ask)]


def _guarded_images(lake: LakeDep) -> StoredImages:
    # Decodes go through the API's guard: a bound on decodes running at once.
    return StoredImages(
        lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes, decode_guard=decode_slot
    )


def _answer(result: InferenceResult, uploaded: dict[str, Any] | None) -> dict[str, Any]:
    body = result.as_dict()
    body["uploaded"] = uploaded
    body["detections"] = [
        {
            "prediction_id": prediction_id,
            "class_id": found.class_id,
            "class_name": found.class_name,
            "score": found.score,
            "box": box_fields(found.box),
        }
        for found, prediction_id in zip(result.detections, result.prediction_ids, strict=True)
    ]
    return body


@router.post(
    "/predict",
    response_model=PredictionResult,
    responses=schemas.errors(400, 403, 404, 413, 422)
    | {503: {"model": schemas.ErrorDetail, "description": "ONNX Runtime is not installed"}},
    openapi_extra=_BODY_DOC,
)
def predict(request: Request, caller: Viewer, lake: LakeDep, ask: Ask) -> dict[str, Any]:
    """Run a model on a catalogued image or on an upload (stored first, once, through
    the ingest pipeline; curators), record the run and answer its boxes."""
    fields = ask.fields
    model_ref = fields.model
    uploaded: dict[str, Any] | None = None
    if ask.file is not None:
        if caller.role < UPLOAD_ROLE:
            raise HTTPException(
                403,
                detail="uploading needs the curator role; send the image_id of a "
                "catalogued image instead",
            )
        # The model first: an unknown one is refused before an upload is stored; the
        # version found is the one run, even if an alias moves meanwhile.
        model_ref = served_model(lake, fields.model).ref
        # The upload route reads only .file and .filename, which Starlette's has too.
        uploaded = upload(request, caller, lake, cast(UploadFile, ask.file))
        image_id = int(uploaded["id"])
    else:
        assert fields.image_id is not None  # _predict_ask checked it
        image_id = fields.image_id
    _check_pixels(lake, caller, image_id)
    (result,) = predict_images(
        lake,
        model_ref=model_ref,
        image_ids=[image_id],
        score_threshold=fields.score_threshold,
        iou_threshold=fields.iou_threshold,
        # The run row is the record of who ran what, when (no separate audit event).
        caller=f"api:{caller.name}",
        batch_size=1,
        images=_guarded_images(lake),
    )
    return _answer(result, uploaded)


def _check_pixels(lake: LakeDep, caller: Caller, image_id: int) -> None:
    """404 for an unknown image; 403 when the caller may not see its pixels."""
    with session_factory(lake.engine)() as session:
        row = pixel_columns(session, image_id=image_id)
    if pixels_withheld(caller.role, row.attributes):
        raise withheld(image_id)


@router.get(
    "/images/{image_id}/predictions",
    response_model=ImagePredictions,
    responses=schemas.errors(403, 404),
)
def image_predictions(
    image_id: ImageId,
    caller: Viewer,
    session: DbSession,
    model: Annotated[str | None, Query(max_length=200, description=MODEL_REF)] = None,
) -> dict[str, Any]:
    """Each model version's latest run on the image with its boxes (of one version
    when model is given)."""
    row = pixel_columns(session, image_id=image_id)
    if pixels_withheld(caller.role, row.attributes):
        raise withheld(image_id)
    version_id = None if model is None else resolve_version(session, ref=model).id
    runs = prediction_runs(
        session, image_id=image_id, role=caller.role, model_version_id=version_id
    )
    return {"image_id": image_id, "runs": runs}
