"""`radlake serve` and `radlake token create|revoke|list`."""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated, cast

import typer
from rich.table import Table

from radlake import auth
from radlake.auth import Role, create_token, revoke_token
from radlake.catalog.db import session_factory, transaction
from radlake.cli.output import console
from radlake.config import Settings
from radlake.lake import load_settings, open_lake

token_app = typer.Typer(help="API tokens (only their hashes are stored).")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the REST API (its OpenAPI document at /openapi.json, with a token)."""
    import uvicorn

    settings = load_settings()
    open_lake(settings)  # fail here, in one line, if there is no lake
    uvicorn.run(
        "radlake.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        http=receipt_protocol(settings),
        ws="none",  # no route speaks WebSocket
        timeout_keep_alive=settings.keep_alive_seconds,
    )


def receipt_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the settings' request receipt deadline (slowloris)."""
    from radlake.api.receipt import DeadlineH11Protocol

    protocol = functools.partial(
        DeadlineH11Protocol, timeout=settings.request_timeout, min_rate=settings.request_min_rate
    )
    # uvicorn calls it as it would a class; a partial also pickles for workers > 1.
    return cast("type[asyncio.Protocol]", protocol)


@token_app.command("create")
def create(
    name: str,
    role: Annotated[
        str,
        typer.Option(help="dicomweb (reads /dicomweb only), viewer, reviewer, curator or admin."),
    ] = "viewer",
) -> None:
    """Create a token and print it once."""
    lake = open_lake(load_settings())
    with transaction(lake.engine) as session:
        token = create_token(session, name=name, role=Role.parse(role))
    console.print(token, highlight=False)


@token_app.command("revoke")
def revoke(name: str) -> None:
    """Revoke a token by name."""
    lake = open_lake(load_settings())
    with transaction(lake.engine) as session:
        revoke_token(session, name=name)
    console.print(f"revoked {name}")


@token_app.command("list")
def list_tokens() -> None:
    """Tokens by name, role and state (never the secrets)."""
    lake = open_lake(load_settings())
    table = Table("name", "role", "created", "revoked")
    with session_factory(lake.engine)() as session:
        for token in auth.list_tokens(session):
            table.add_row(
                token.name, token.role, str(token.created_at), str(token.revoked_at or "")
            )
    console.print(table)
