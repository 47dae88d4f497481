"""Tokens from the command line: shown once, stored as a hash, revocable."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from radlake.api.app import create_app
from radlake.auth import Role, TokenError, create_token
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import ApiToken
from radlake.config import Settings
from radlake.lake import open_lake
from tests.conftest import run_radlake as radlake


def test_token_lifecycle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    no_lake = radlake(home, "serve")
    assert no_lake.returncode == 1 and "radlake init" in no_lake.stderr
    assert radlake(home, "init").returncode == 0
    created = radlake(home, "token", "create", "alice", "--role", "curator")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("rl_") and len(token) > 40
    duplicate = radlake(home, "token", "create", "alice")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    bad_role = radlake(home, "token", "create", "bob", "--role", "root")
    assert bad_role.returncode == 1 and "viewer, reviewer, curator or admin" in bad_role.stderr
    listing = radlake(home, "token", "list")
    assert "alice" in listing.stdout and token not in listing.stdout

    lake = open_lake(Settings(home=home))
    with session_factory(lake.engine)() as session:
        stored = session.scalar(select(ApiToken).where(ApiToken.name == "alice"))
    assert stored is not None and stored.role == "curator"
    assert token not in stored.token_hash  # only the hash is kept
    database = (home / "catalog.sqlite").read_bytes()
    assert token.encode() not in database

    client = TestClient(create_app(lake))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/images", headers=headers).status_code == 200
    assert radlake(home, "token", "revoke", "alice").returncode == 0
    assert client.get("/images", headers=headers).status_code == 401
    again = radlake(home, "token", "revoke", "alice")
    assert again.returncode == 1 and "no active token" in again.stderr


def test_token_names_are_plain_words(tmp_path: Path) -> None:
    """Names are printed in commands to copy and in tables: nothing else gets in."""
    home = tmp_path / "home"
    assert radlake(home, "init").returncode == 0
    for name in ("", "   ", "-x", "--help", "a b", "[bold]x", "x;rm", "é", "x" * 101):
        refused = radlake(home, "token", "create", "--", name)
        assert refused.returncode == 1, name
        assert (
            refused.stderr.startswith("error: a token name is") and refused.stderr.count("\n") == 1
        ), (name, refused.stderr)
    made = radlake(home, "token", "create", "ci.reader_2-b" + "x" * 87)
    assert made.returncode == 0, made.stderr
    listing = radlake(home, "token", "list").stdout
    assert "[bold]" not in listing and "ci.reader_2-b" in listing


def test_two_creating_one_name_at_once_get_one_token(catalog: Engine) -> None:
    """The second waits on the first's uncommitted row and is told the name is taken."""
    first = session_factory(catalog)()
    create_token(first, name="same", role=Role.VIEWER)  # inserted, not committed
    outcome: list[BaseException | str] = []

    def second() -> None:
        try:
            with transaction(catalog) as session:
                outcome.append(create_token(session, name="same", role=Role.VIEWER))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=1)  # still waiting for the first (or told already)
    first.commit()
    first.close()
    thread.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], TokenError), outcome
    assert "exists" in str(outcome[0])
    with session_factory(catalog)() as session:
        assert list(session.scalars(select(ApiToken.name))) == ["same"]
