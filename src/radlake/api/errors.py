"""Domain errors to HTTP, in one place; answers carry a reason, never a traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from radlake.auth import TokenError
from radlake.curation.versions import DatasetError
from radlake.errors import (
    CatalogError,
    ImageError,
    ImageNotFound,
    NotInitialized,
    ObjectNotFound,
    RadlakeError,
    RenderError,
    StorageError,
)
from radlake.pipelines.ingest import IngestFault

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ImageNotFound, 404),
    (ObjectNotFound, 404),
    (DatasetError, 404),
    (TokenError, 409),
    (RenderError, 422),
    (ImageError, 422),
    (NotInitialized, 503),
    (IngestFault, 503),
    (CatalogError, 503),
    (StorageError, 503),
)


def status_for(exc: Exception) -> int:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return 422 if isinstance(exc, ValueError) else 500


def install(app: FastAPI) -> None:
    """Register the handlers on app."""

    async def domain(request: Request, exc: Exception) -> JSONResponse:
        code = status_for(exc)
        detail = str(exc) if code < 500 or isinstance(exc, RadlakeError) else "internal error"
        return JSONResponse({"detail": detail}, status_code=code)

    app.add_exception_handler(RadlakeError, domain)
