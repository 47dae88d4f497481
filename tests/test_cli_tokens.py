"""Tokens from the command line: shown once, stored as a hash, revocable."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from radlake.api.app import create_app
from radlake.catalog.db import session_factory
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
