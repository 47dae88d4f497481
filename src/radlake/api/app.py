"""Builds the FastAPI app: routers, error mapping, the lake in app.state."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from radlake import __version__
from radlake.api import errors, schemas, web, web_dashboard, web_predict, web_review
from radlake.api.cors import DicomwebCORS
from radlake.api.deps import Viewer
from radlake.api.routes import (
    catalog,
    datasets,
    deidentified,
    dicomweb,
    downloads,
    feedback,
    images,
    predict,
)
from radlake.catalog.dashboard_tables import warm
from radlake.lake import Lake, load_settings, open_lake
from radlake.web_sessions import DEFAULT_LIFETIME

DEFAULT_UPLOAD_LIMIT = 512 * 1024 * 1024
PUBLIC_PATHS = frozenset({"/health"})
BEARER = "bearer"


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with bearer auth declared on every operation but
    PUBLIC_PATHS (documentation only: deps.get_caller does the checking)."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        document.setdefault("components", {})["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token (`radlake token create`); the web pages "
                "send it as a sign-in cookie instead",
            }
        }
        for path, operations in document.get("paths", {}).items():
            for operation in operations.values():
                if path not in PUBLIC_PATHS:
                    operation["security"] = [{BEARER: []}]
                # Routers declare 422 for all their routes; it only applies where a
                # parameter or a body can be invalid.
                if not operation.get("parameters") and "requestBody" not in operation:
                    operation.get("responses", {}).pop("422", None)
        app.openapi_schema = document
    return app.openapi_schema


@asynccontextmanager
async def _warm_dashboard(app: FastAPI) -> AsyncIterator[None]:
    """A served app reads the dashboard's tables in the background as it starts."""
    thread = threading.Thread(
        target=warm, args=(app.state.lake.engine,), name="dashboard-warm-up", daemon=True
    )
    thread.start()
    yield


def create_app(
    lake: Lake | None = None,
    *,
    upload_limit: int = DEFAULT_UPLOAD_LIMIT,
    web_session_lifetime: timedelta | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The API over lake (default: the lake, web session lifetime and DICOMweb CORS
    origins RADLAKE_* settings describe)."""
    # The schema needs a token like every route; /docs and /redoc are off because
    # FastAPI's pages load their scripts from a CDN (nothing is fetched from outside).
    served = lake is None  # the factory `radlake serve` and uvicorn --factory call
    app = FastAPI(
        lifespan=_warm_dashboard if served else None,
        title="radlake",
        version=__version__,
        description="Medical imaging data lake. Every route but /health needs a token.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    if lake is None:
        settings = load_settings()
        lake = open_lake(settings)
        web_session_lifetime = web_session_lifetime or settings.web_session_lifetime()
        cors_origins = cors_origins or settings.dicomweb_cors_origins
    app.state.lake = lake
    app.state.web_session_lifetime = web_session_lifetime or DEFAULT_LIFETIME
    app.state.upload_limit = upload_limit
    errors.install(app)
    if cors_origins:
        app.add_middleware(DicomwebCORS, origins=tuple(cors_origins))

    @app.get("/health", tags=["operations"], response_model=schemas.Health)
    def health() -> dict[str, Any]:
        """Liveness: no token needed, no data returned."""
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(caller: Viewer) -> dict[str, Any]:
        """The OpenAPI document of this API (any signed-in role)."""
        return app.openapi()

    for module in (images, deidentified, catalog, datasets, downloads, predict, feedback):
        app.include_router(module.router)
    app.include_router(dicomweb.router)  # /dicomweb: QIDO-RS, WADO-RS, STOW-RS
    app.include_router(web.router)
    app.include_router(web_predict.router)
    app.include_router(web_review.router)
    app.include_router(web_dashboard.router)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    return app
