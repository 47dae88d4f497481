"""Dependencies: the lake, a database session, the caller's token and role."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.orm import Session

from radlake.auth import Role, verify_token
from radlake.catalog.db import session_factory
from radlake.curation.filters import SEVERAL_VALUES, FilterError, ImageFilter, describe
from radlake.lake import Lake
from radlake.web_sessions import csrf_matches, find_session

# The cookie holds a web session id (radlake.web_sessions), never the API token.
COOKIE_NAME = "radlake_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


def get_lake(request: Request) -> Lake:
    lake: Lake = request.app.state.lake
    return lake


def get_session(lake: Annotated[Lake, Depends(get_lake)]) -> Iterator[Session]:
    with session_factory(lake.engine)() as session:
        yield session


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the token's id, name and role."""

    token_id: int
    name: str
    role: Role


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def same_origin(request: Request) -> bool:
    """True when the request's Origin (else Referer) is this server itself, port
    included: SameSite cookies still ride along from another port of the same host."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    return urlsplit(claimed).netloc == request.headers.get("host")


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _csrf_sent(request: Request) -> AsyncIterator[str | None]:
    """The CSRF token a write carries: header X-CSRF-Token (fetch), else the form field
    csrf_token (a page's HTML form). Only cookie-signed writes are asked for one."""
    if request.method in SAFE_METHODS or _bearer(request) or COOKIE_NAME not in request.cookies:
        yield None
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is not None:
        yield sent
        return
    if not request.headers.get("content-type", "").startswith(_FORM_TYPES):
        yield None
        return
    try:
        # The route's own form parameters parsed this body already; this reads Starlette's
        # cached copy, and for a route without form parameters parses it here.
        form = await request.form()
    except Exception:  # a malformed body: the route answers for it, the token is missing
        yield None
        return
    try:
        value = form.get(CSRF_FIELD)
        yield value if isinstance(value, str) else None
    finally:
        await form.close()


def get_caller(
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    csrf: Annotated[str | None, Depends(_csrf_sent)],
) -> Caller:
    """The caller: a bearer token, else the web page's session cookie. 401 when neither
    is valid; 403 for a cookie-signed write from another origin or without the
    session's CSRF token (issue 8). Bearer clients are not browsers: no CSRF check."""
    text = _bearer(request)
    if text is not None:
        token = verify_token(session, text)
    else:
        cookie = request.cookies.get(COOKIE_NAME)
        unsafe = request.method not in SAFE_METHODS
        if cookie and unsafe and not same_origin(request):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail="a write with the sign-in cookie must come from this server's pages",
            )
        active = find_session(session, cookie=cookie) if cookie else None
        if active is not None and unsafe and not csrf_matches(active, given=csrf):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=(
                    "a write with the sign-in cookie needs the page's CSRF token "
                    f"({CSRF_HEADER} header or {CSRF_FIELD} form field); it was missing "
                    "or wrong: reload the page"
                ),
            )
        token = None if active is None else active.token
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=(
                "a valid token is required (Authorization: Bearer ...), "
                "or a web session that is signed in and not expired"
            ),
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Caller(token.id, token.name, Role.parse(token.role))


def require(role: Role) -> Callable[[Caller], Caller]:
    """A dependency that lets through callers with at least role (403 otherwise)."""

    def check(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        if caller.role < role:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"this needs the {role.name.lower()} role"
            )
        return caller

    return check


# DICOMweb's searches and retrievals: de-identified objects only, so the dicomweb
# role (a web viewer's token) gets them too.
DicomwebReader = Annotated[Caller, Depends(require(Role.DICOMWEB))]
Viewer = Annotated[Caller, Depends(require(Role.VIEWER))]
Reviewer = Annotated[Caller, Depends(require(Role.REVIEWER))]
Curator = Annotated[Caller, Depends(require(Role.CURATOR))]
Admin = Annotated[Caller, Depends(require(Role.ADMIN))]
DbSession = Annotated[Session, Depends(get_session)]
LakeDep = Annotated[Lake, Depends(get_lake)]


def _accepted_query_keys(route: APIRoute) -> frozenset[str]:
    """Every query parameter a route declares, its dependencies' included."""
    found = _ACCEPTED.get(route.unique_id)
    if found is None:
        found = frozenset(_query_keys(route.dependant))
        _ACCEPTED[route.unique_id] = found
    return found


_ACCEPTED: dict[str, frozenset[str]] = {}


def _query_keys(dependant: Dependant) -> Iterator[str]:
    yield from (param.alias for param in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _query_keys(sub)


def _refuse_unknown(request: Request) -> None:
    """422 for a query key the route does not declare (a typo would be ignored)."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        unknown = sorted(set(request.query_params) - _accepted_query_keys(route))
        if unknown:
            names = ", ".join(repr(key[:40]) for key in unknown[:5])
            raise HTTPException(422, detail=f"unknown query parameter {names}")


def strict_query(request: Request) -> None:
    """For routes whose query parameters each take one value: an unknown key, or a key
    given twice (?model=a&model=b silently meant the last), is a 422."""
    _refuse_unknown(request)
    for key in sorted(set(request.query_params)):
        if len(request.query_params.getlist(key)) > 1:
            raise HTTPException(422, detail=f"{key[:40]} given twice: it takes one value")


def _selection(request: Request, **values: Any) -> ImageFilter:
    """The shared filter model, from query parameters; unknown keys are a 422."""
    _refuse_unknown(request)
    attributes: list[tuple[str, str]] = []
    for pair in values.pop("attr", None) or []:
        if not pair:  # an empty form input
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HTTPException(422, detail=f"expected attr=NAME=VALUE, got {pair[:80]!r}")
        attributes.append((key, value))
    for name in SEVERAL_VALUES:
        repeated = request.query_params.getlist(name)
        if len(repeated) > 1:  # ?view=PA&view=AP, the same as ?view=PA,AP
            values[name] = repeated
    for name in _ONE_VALUE:
        if len(request.query_params.getlist(name)) > 1:
            # ?dataset=a&dataset=b silently meant one of them (as --select says too).
            raise HTTPException(422, detail=f"{name} given twice: it takes one value")
    try:
        # exclude=KEY=VALUE, repeatable; the web page's empty input adds nothing.
        excluded = [pair for pair in values.pop("exclude", None) or [] if pair]
        exclude = ImageFilter.parse(excluded) if excluded else None
        return ImageFilter.model_validate(values | {"attributes": attributes, "exclude": exclude})
    except FilterError as exc:
        raise HTTPException(422, detail=f"exclude: {exc}") from None
    except ValidationError as exc:
        raise HTTPException(422, detail=describe(exc)) from None


_ONE_VALUE = tuple(
    name
    for name in ImageFilter.model_fields
    if name not in SEVERAL_VALUES and name not in ("attributes", "exclude")
)


def _query_parameters() -> list[inspect.Parameter]:
    """One query parameter per field of ImageFilter (declared once, there)."""
    params = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)]
    for name, field in ImageFilter.model_fields.items():
        if name == "attributes":
            annotation: Any = Annotated[
                list[str] | None,
                Query(alias="attr", description="NAME=VALUE: " + (field.description or "")),
            ]
            name = "attr"
        elif name == "exclude":
            annotation = Annotated[list[str] | None, Query(description=field.description)]
        elif name in SEVERAL_VALUES:
            # Text, comma-separated; a repeated key is read in _selection. (Typed as an
            # array, any single value would fit it, and the document would promise less.)
            annotation = Annotated[str | None, Query(description=field.description)]
        else:
            query = Query(description=field.description)
            annotation = Annotated[(field.annotation, *field.metadata, query)]
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return params


_selection.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    _query_parameters(), return_annotation=ImageFilter
)


def _selection_or_reason(request: Request, **values: Any) -> ImageFilter | str:
    """For pages: the filter, or why it is not one (shown on the page, not as JSON)."""
    try:
        return _selection(request, **values)
    except HTTPException as exc:
        return str(exc.detail)


_selection_or_reason.__signature__ = _selection.__signature__  # type: ignore[attr-defined]

Selection = Annotated[ImageFilter, Depends(_selection)]
PageSelection = Annotated[ImageFilter | str, Depends(_selection_or_reason)]
