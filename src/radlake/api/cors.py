"""Cross-origin access to DICOMweb only, for a web viewer served elsewhere (OHIF).

A viewer on another origin (say OHIF on :3000) calls /dicomweb with a bearer token in
its requests, so the browser asks first (CORS preflight). Only the origins a setting
names are answered, only under /dicomweb, and never with credentials: cookies (the
web page's sign-in) are not sent cross-origin, so the page's CSRF defences stand.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

DICOMWEB_PREFIX = "/dicomweb"


class DicomwebCORS:
    """CORS answers for paths under /dicomweb; every other path passes untouched."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Warning", "Content-Location"],
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        under = path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/")
        target = self.cors if scope["type"] == "http" and under else self.app
        await target(scope, receive, send)
