"""Domain errors to HTTP, in one place; answers carry a reason, never a traceback."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from radlake.inference.errors import InferenceUnavailable, ModelFileError, ModelNotFound
from radlake.pipelines.ingest import IngestFault

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ImageNotFound, 404),
    (ModelNotFound, 404),
    # A registered model that cannot run is the server's fault, not the request's;
    # its message names the model and ONNX Runtime's first line, no image data.
    (ModelFileError, 500),
    (InferenceUnavailable, 503),
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


LOG = logging.getLogger("radlake.api")
# What a database that is down, unreachable or out of connections raises.
CATALOG_FAULTS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)
CATALOG_FAULT = "fault: the catalog database cannot be reached now; try again shortly"


def is_catalog_fault(exc: BaseException) -> bool:
    """A fault of the database, not of the request: down, unreachable, out of
    connections, or (SQLite) a file that is not, or no longer, a database, which the
    driver raises as a bare DatabaseError (constraint and data errors are subclasses)."""
    return isinstance(exc, CATALOG_FAULTS) or type(exc) is sa_exc.DatabaseError


ECHO_LIMIT = 80  # characters of a client's own input quoted back in an error


def _encodable(text: str) -> str:
    # A lone surrogate ("\\ud800" in a JSON body) cannot be written out as UTF-8: quoting
    # it raw turned the 422 into a 500.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def short(value: object) -> object:
    """A client's input as an error may quote it: cut to ECHO_LIMIT characters, and
    always something JSON can carry."""
    if isinstance(value, bool | None):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf or nan: 1e400 in a body made the 422 a 500
    if isinstance(value, str | bytes) and len(value) > ECHO_LIMIT:
        return _encodable(f"{value[:ECHO_LIMIT]!s}… ({len(value)} characters)")
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, int) and abs(value) >= 10**ECHO_LIMIT:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, dict | list | tuple | bytes):
        text = _encodable(str(value))
        return text if len(text) <= ECHO_LIMIT else f"{text[:ECHO_LIMIT]}… ({len(text)} characters)"
    return value


class Unexpected:
    """ASGI middleware for what no handler answered: a bug is a 500 "internal error",
    a catalog database that is down a 503 fault, and the log gets the error's type and
    the route only (a database error quotes the key it clashed on: patient data).

    A failure after the status line went out (a zip whose store read fails halfway)
    ends the request without its last body message, so the server cuts the connection
    and the client sees a broken transfer, never a finished-looking file. (Starlette's
    BaseHTTPMiddleware, used here before, finished such a response normally, and
    uvicorn printed the whole traceback into the log.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            # Starlette wraps an error its handlers could not answer once started.
            cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ else exc
            where = (type(cause).__name__, scope["method"], scope["path"])
            if started:
                LOG.error("response cut short (%s) on %s %s", *where)
                return
            if is_catalog_fault(cause):
                LOG.error("catalog fault (%s) on %s %s", *where)
                answer = JSONResponse(
                    {"detail": CATALOG_FAULT}, status_code=503, headers={"Retry-After": "5"}
                )
            else:
                LOG.error("internal error (%s) on %s %s", *where)
                answer = JSONResponse({"detail": "internal error"}, status_code=500)
            await answer(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the handlers on app."""

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's 422 quotes each bad input whole: a 4,096-digit id came back in full.
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        detail = [
            {
                "loc": [short(part) for part in error.get("loc", ())],
                "msg": str(short(str(error.get("msg", "")))),
                "type": error.get("type"),
                **({"input": short(error["input"])} if "input" in error else {}),
            }
            for error in errors[:20]
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    async def domain(request: Request, exc: Exception) -> JSONResponse:
        code = status_for(exc)
        detail = str(exc) if code < 500 or isinstance(exc, RadlakeError) else "internal error"
        return JSONResponse({"detail": detail}, status_code=code)

    app.add_exception_handler(RadlakeError, domain)
    app.add_exception_handler(RequestValidationError, invalid)

    app.add_middleware(Unexpected)
