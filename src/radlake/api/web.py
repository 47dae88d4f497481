"""The web page: sign-in, browse with filters, one image with its boxes, upload.

Pages are rendered on the server (Jinja2, autoescape on) from the same functions the
JSON routes run, so a page shows exactly what the API returns and nothing more.
static/app.js only submits filters, switches render URLs, toggles boxes and posts
cohorts and uploads with fetch. Signing in opens a server-side web session
(radlake.web_sessions): the HttpOnly, SameSite=Strict cookie holds its random id, never
the API token. Pages go by that cookie alone; without an active session they redirect
to the sign-in form. Every page of a session carries its CSRF token (a meta tag for
app.js, a hidden field in forms), which writes must send back (deps.get_caller).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from radlake.api import audit
from radlake.api.deps import (
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    Caller,
    DbSession,
    LakeDep,
    PageSelection,
    same_origin,
)
from radlake.api.privacy import pixels_withheld
from radlake.api.routes.images import ImageId
from radlake.api.serialize import image_full, image_listing, label_item, prediction_runs
from radlake.auth import Role, verify_token
from radlake.catalog.image_reads import image_labels
from radlake.catalog.image_reads import image_page as image_page_of
from radlake.catalog.queries import get_image, image_counts, list_dataset_versions
from radlake.curation.filters import FILTER_FIELDS, ImageFilter, field_schemas
from radlake.errors import ImageNotFound
from radlake.imaging.pixels import Window
from radlake.web_sessions import (
    DEFAULT_LIFETIME,
    close_session,
    csrf_matches,
    csrf_token_for,
    find_session,
    open_session,
)

router = APIRouter(include_in_schema=False)
TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)
# Before web sessions the cookie held the API token itself: sign-in and sign-out
# delete one a browser may still keep.
LEGACY_COOKIE = "radlake_token"
PAGE_HEADERS = {
    # Scripts and styles come from /static only, so injected markup could not run.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make form posts Origin: null
    "Cache-Control": "no-store",
}
# Distinct on grey pixels; classes of one image take them in name order.
PALETTE = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#ff2dfd", "#00e5ff", "#ff9500", "#af52de")
WINDOW_PRESETS = (
    ("header default", None),
    ("soft tissue", "40,400"),
    ("lung", "-600,1500"),
    ("bone", "300,1500"),
    ("brain", "40,80"),
)
# Every field of the filter model is a control of the page (a field added there
# appears here); these have drop-downs of the catalog's values, the rest are inputs.
FILTER_KEYS = tuple("attr" if name == "attributes" else name for name in FILTER_FIELDS)
DROPDOWNS = ("modality", "view", "finding", "dataset", "split", "source")
NUMBER_KEYS = frozenset(
    name for name, schema in field_schemas().items() if "integer" in str(schema)
)
PageSize = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[int, Query(ge=0, le=2**62)]


def _cookie_caller(request: Request, session: Session) -> Caller | None:
    """Who the session cookie signs in, if its session is active."""
    cookie = request.cookies.get(COOKIE_NAME)
    active = find_session(session, cookie=cookie) if cookie else None
    if active is None:
        return None
    token = active.token
    return Caller(token.id, token.name, Role.parse(token.role))


def _session_lifetime(request: Request) -> timedelta:
    lifetime = getattr(request.app.state, "web_session_lifetime", None)
    return lifetime if isinstance(lifetime, timedelta) else DEFAULT_LIFETIME


def _forget_cookies(request: Request, response: Response, *names: str) -> None:
    for name in names:
        response.delete_cookie(
            name,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


def _to_signin(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/signin?{urlencode({'next': target})}", status_code=303)


def _safe_next(target: str) -> str:
    """Only our own pages: never another site (an open redirect)."""
    ok = target.startswith("/ui") and not any(c in target for c in "\\\r\n\t ")
    return target if ok else "/ui"


def _page(
    request: Request, name: str, caller: Caller | None, status_code: int = 200, **context: Any
) -> Response:
    cookie = request.cookies.get(COOKIE_NAME)
    context |= {
        "caller": caller,
        "is_curator": caller is not None and caller.role >= Role.CURATOR,
        "is_reviewer": caller is not None and caller.role >= Role.REVIEWER,
        "is_admin": caller is not None and caller.role >= Role.ADMIN,
        # Pages of a signed-in session only: the token that its writes send back.
        "csrf_token": csrf_token_for(cookie) if caller is not None and cookie else None,
        "csrf_field": CSRF_FIELD,
    }
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=PAGE_HEADERS
    )


def _title(key: str) -> str:
    if key in _PAIR_TITLES:
        return _PAIR_TITLES[key]
    return key.replace("_", " ").capitalize()


_PAIR_TITLES = {"attr": "Attribute NAME=VALUE", "exclude": "Exclude KEY=VALUE"}


def _query_pairs(selection: ImageFilter) -> list[tuple[str, str]]:
    """The filter as query parameters, the same the API's /images and /images.zip take."""
    pairs: list[tuple[str, str]] = []
    for key, text in selection.as_pairs():
        head, _, rest = key.partition(".")
        if head in ("attr", "exclude") and rest:  # repeatable NAME=VALUE parameters
            pairs.append((head, f"{rest}={text}"))
        else:
            pairs.append((key, text))
    return pairs


def _options(
    counts: dict[str, int | None], chosen: str | None, nullable: bool = False
) -> list[tuple[str, str]]:
    """(value, label) pairs. In a nullable column 'unknown' counts empty values, which
    no filter value selects, so it is left out."""
    found = [
        (key, key if n is None else f"{key} ({n})")
        for key, n in counts.items()
        if not (nullable and key == "unknown")
    ]
    if chosen and chosen not in counts:
        found.append((chosen, chosen))
    return found


def _flatten(detail: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in detail.items():
        if key == "renditions":
            continue
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            rows.append((prefix + key, json.dumps(value, default=str)))
        else:
            rows.append((prefix + key, "" if value is None else str(value)))
    return rows


@router.get("/")
def home(request: Request, session: DbSession) -> Response:
    """The browse page, or sign-in first."""
    target = "/ui" if _cookie_caller(request, session) else "/ui/signin"
    return RedirectResponse(target, status_code=303)


@router.get("/ui/signin")
def signin_form(request: Request, next: str = "/ui") -> Response:
    """The sign-in form."""
    return _page(request, "signin.html", None, next=_safe_next(next), error=None)


@router.post("/ui/signin")
def signin(
    request: Request,
    session: DbSession,
    lake: LakeDep,
    token: Annotated[str, Form(max_length=300)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui",
) -> Response:
    """Check the token against the catalog, then open a web session whose id (not the
    token) goes into an HttpOnly cookie."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        # Another site's form would sign this browser in under a token of its choosing.
        return _page(request, "error.html", None, 403, message="Sign in from this site's form.")
    found = verify_token(session, token.strip()) if token.strip() else None
    if found is None:
        error = "That token is not valid (unknown, revoked or mistyped)."
        return _page(request, "signin.html", None, 401, next=_safe_next(next), error=error)
    role = Role.parse(found.role)
    if role < Role.VIEWER:
        error = "That token is a DICOMweb viewer's: it reads /dicomweb only, not these pages."
        return _page(request, "signin.html", None, 403, next=_safe_next(next), error=error)
    lifetime = _session_lifetime(request)
    previous = request.cookies.get(COOKIE_NAME)
    if previous:  # signing in again (maybe as another token) ends this browser's session
        close_session(session, cookie=previous)
    opened = open_session(session, token=found, lifetime=lifetime)
    session.commit()
    caller = Caller(found.id, found.name, role)
    audit.record(lake, caller, "ui.signin", "ui")
    response = RedirectResponse(_safe_next(next), status_code=303)
    if LEGACY_COOKIE in request.cookies:
        _forget_cookies(request, response, LEGACY_COOKIE)
    response.set_cookie(
        COOKIE_NAME,
        opened.cookie,
        max_age=int(lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/signout")
def signout(
    request: Request,
    session: DbSession,
    lake: LakeDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """End the web session on the server and forget its cookie. A session's sign-out
    needs its CSRF token, so another site cannot sign this browser out."""
    cookie = request.cookies.get(COOKIE_NAME)
    active = find_session(session, cookie=cookie) if cookie else None
    if active is not None and cookie:
        caller = Caller(active.token.id, active.token.name, Role.parse(active.token.role))
        sent = request.headers.get(CSRF_HEADER) or csrf_token
        if not same_origin(request) or not csrf_matches(active, given=sent):
            message = "Sign out with this site's own button (no valid CSRF token was sent)."
            return _page(request, "error.html", caller, 403, message=message)
        close_session(session, cookie=cookie)
        session.commit()
        audit.record(lake, caller, "ui.signout", "ui")
    response = RedirectResponse("/ui/signin", status_code=303)
    legacy = (LEGACY_COOKIE,) if LEGACY_COOKIE in request.cookies else ()
    _forget_cookies(request, response, COOKIE_NAME, *legacy)
    return response


@router.get("/ui")
def browse(
    request: Request,
    session: DbSession,
    selection: PageSelection,
    limit: PageSize = 48,
    cursor: Cursor = 0,
) -> Response:
    """Filters, a page of thumbnails, the total, zip download and save-as-cohort."""
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    if isinstance(selection, str):
        message = f"This filter is not valid: {selection}."
        return _page(request, "error.html", caller, 422, message=message)
    page = image_listing(
        image_page_of(session, selection=selection, limit=limit, after_id=cursor), caller.role
    )
    counts = image_counts(session)
    names = list(dict.fromkeys(v.dataset.name for v in list_dataset_versions(session)))
    values = dict(selection.as_pairs())  # several values read as the text PA,AP
    chosen = {key: values.get(key) for key in FILTER_KEYS}
    choices = {
        "modality": _options(counts["modality"], chosen["modality"], True),
        "view": _options(counts["view"], chosen["view"], True),
        "finding": _options(counts["class"], chosen["finding"]),
        "dataset": _options(dict.fromkeys(names), chosen["dataset"]),
        "split": _options(counts["split"], chosen["split"]),
        "source": _options(counts["source"], chosen["source"]),
    }
    filters = [(key, _title(key), choices[key]) for key in DROPDOWNS]
    inputs = [
        (key, _title(key), "number" if key in NUMBER_KEYS else "text", chosen[key])
        for key in FILTER_KEYS
        if key not in choices and key not in _PAIR_TITLES
    ]
    # One input per attribute or exclude condition, and an empty one to add another.
    for key in _PAIR_TITLES:
        given = [text for name, text in _query_pairs(selection) if name == key]
        inputs += [(key, _title(key), "text", pair) for pair in [*given, None]]
    pairs = _query_pairs(selection)
    return _page(
        request,
        "browse.html",
        caller,
        page=page,
        filters=filters,
        inputs=inputs,
        more_open=any(value is not None for *_, value in inputs),
        chosen={key: "" if value is None else str(value) for key, value in chosen.items()},
        query=urlencode(pairs),
        next_query=urlencode([*pairs, ("limit", str(limit)), ("cursor", str(page["next_cursor"]))])
        if page["next_cursor"]
        else None,
        first_query=urlencode([*pairs, ("limit", str(limit))]),
        cursor=cursor,
        selection=selection.as_dict(),
    )


@router.get("/ui/images/{image_id}")
def image_page(
    request: Request,
    image_id: ImageId,
    session: DbSession,
    window: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """The rendering with its boxes, window presets, metadata and downloads."""
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    try:
        image = get_image(session, image_id=image_id)
    except ImageNotFound:
        message = f"There is no image with id {image_id}."
        return _page(request, "error.html", caller, 404, message=message)
    detail = image_full(image, caller.role)
    rows = [label_item(label) for label in image_labels(session, image_id=image_id)]
    try:
        chosen = window if window and Window.parse(window) else None
    except ValueError:
        chosen = None
    classes = sorted({row["class_name"] for row in rows})
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(classes)}
    render_url = f"/images/{image_id}/render"
    if chosen:
        render_url += "?" + urlencode({"window": chosen})
    # Each model version's latest run, in palette colours from the other end.
    runs = [
        run | {"colour": PALETTE[-1 - i % len(PALETTE)]}
        for i, run in enumerate(
            # Boxes come from the pixels: none where the caller may not see them.
            []
            if pixels_withheld(caller.role, image.attributes)
            else prediction_runs(session, image_id=image_id, role=caller.role)
        )
    ]
    from radlake.api.web_review import review_context  # it imports this module's helpers

    return _page(
        request,
        "image.html",
        caller,
        image=detail,
        labels=rows,
        boxes=[row for row in rows if row["box"] is not None],
        colours=colours,
        readers=sorted({row["reader"] or "" for row in rows}),
        origins=sorted({row["origin"] for row in rows}),
        metadata=_flatten(detail),
        presets=WINDOW_PRESETS if detail["format"] == "dicom" else (),
        window=chosen,
        render_url=render_url,
        predictions=runs,
        review=review_context(session, caller=caller, image_id=image_id, runs=runs),
    )


@router.get("/ui/upload")
def upload_page(request: Request, session: DbSession) -> Response:
    """The upload form (curators)."""
    caller = _cookie_caller(request, session)
    if caller is None:
        return _to_signin(request)
    if caller.role < Role.CURATOR:
        message = "Uploading needs the curator role; your token is a viewer's."
        return _page(request, "error.html", caller, 403, message=message)
    return _page(request, "upload.html", caller)
