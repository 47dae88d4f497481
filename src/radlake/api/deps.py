"""Dependencies: the lake, a database session, the caller's token and role."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
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

COOKIE_NAME = "radlake_token"


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


def get_caller(request: Request, session: Annotated[Session, Depends(get_session)]) -> Caller:
    """The caller's token; 401 when missing or not valid; 403 for a write signed by
    the web page's cookie that does not come from this server's own pages (CSRF)."""
    text = _bearer(request)
    if text is None:
        text = request.cookies.get(COOKIE_NAME)
        if text and request.method not in SAFE_METHODS and not same_origin(request):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail="a write with the sign-in cookie must come from this server's pages",
            )
    token = verify_token(session, text) if text else None
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid token is required (Authorization: Bearer ...)",
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


Viewer = Annotated[Caller, Depends(require(Role.VIEWER))]
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


def _selection(request: Request, **values: Any) -> ImageFilter:
    """The shared filter model, from query parameters; unknown keys are a 422."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        unknown = sorted(set(request.query_params) - _accepted_query_keys(route))
        if unknown:
            names = ", ".join(repr(key[:40]) for key in unknown[:5])
            raise HTTPException(422, detail=f"unknown query parameter {names}")
    attributes: list[tuple[str, str]] = []
    for pair in values.pop("attr", None) or []:
        if not pair:  # an empty form input
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HTTPException(422, detail=f"expected attr=NAME=VALUE, got {pair[:80]!r}")
        attributes.append((key, value))
    for name in SEVERAL_VALUES:
        given = values.get(name)
        if given is not None and len(given) == 1:
            values[name] = given[0]  # one form control or ?view=PA,AP: blank is "any"
    try:
        # exclude=KEY=VALUE, repeatable; the web page's empty input adds nothing.
        excluded = [pair for pair in values.pop("exclude", None) or [] if pair]
        exclude = ImageFilter.parse(excluded) if excluded else None
        return ImageFilter.model_validate(values | {"attributes": attributes, "exclude": exclude})
    except FilterError as exc:
        raise HTTPException(422, detail=f"exclude: {exc}") from None
    except ValidationError as exc:
        raise HTTPException(422, detail=describe(exc)) from None


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
        elif name == "exclude" or name in SEVERAL_VALUES:
            # Repeatable (?view=PA&view=AP) as well as comma-separated; the model checks.
            annotation = Annotated[list[str] | None, Query(description=field.description)]
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
