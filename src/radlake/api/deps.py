"""Dependencies: the lake, a database session, the caller's token and role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy.orm import Session

from radlake.auth import Role, verify_token
from radlake.catalog.db import session_factory
from radlake.catalog.queries import ImageFilter
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


def _token_text(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE_NAME)


def get_caller(request: Request, session: Annotated[Session, Depends(get_session)]) -> Caller:
    """The caller's token; 401 when missing or not valid."""
    text = _token_text(request)
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


def selection(
    modality: str | None = None,
    manufacturer: str | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient: str | None = None,
    format: str | None = None,
    body_part: str | None = None,
    view: str | None = None,
    source: str | None = None,
    min_rows: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    min_columns: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    min_size: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    max_size: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    finding: str | None = None,
    reader: str | None = None,
    dataset: str | None = None,
    version: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    split: str | None = None,
    attr: Annotated[
        list[str] | None, Query(description="NAME=VALUE source attributes, repeatable")
    ] = None,
) -> ImageFilter:
    """The shared filter model, from query parameters."""
    attributes: list[tuple[str, str]] = []
    for pair in attr or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HTTPException(422, detail=f"expected attr=NAME=VALUE, got {pair[:80]!r}")
        attributes.append((key, value))
    return ImageFilter(
        modality=modality,
        manufacturer=manufacturer,
        series_uid=series_uid,
        study_uid=study_uid,
        patient=patient,
        format=format,
        body_part=body_part,
        view=view,
        source=source,
        min_rows=min_rows,
        min_columns=min_columns,
        min_size=min_size,
        max_size=max_size,
        finding=finding,
        reader=reader,
        dataset=dataset,
        version=version,
        split=split,
        attributes=tuple(attributes),
    )


Selection = Annotated[ImageFilter, Depends(selection)]
