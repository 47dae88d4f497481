"""Server-side web sessions (issue 8): the sign-in cookie names a session kept in the
catalog by its hash; signing out, expiry and revoking the token end it. On SQLite,
PostgreSQL and MariaDB, through the app and through the module's functions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, select, update

from radlake.api.app import create_app
from radlake.api.deps import COOKIE_NAME
from radlake.auth import Role, create_token, revoke_token
from radlake.catalog.db import _alembic_config, make_engine, session_factory, transaction, upgrade
from radlake.catalog.models import ApiToken, WebSession, utcnow
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.storage.store import open_store
from radlake.web_sessions import (
    close_session,
    csrf_matches,
    csrf_token_for,
    find_session,
    open_session,
)
from tests.conftest import SECRET

SAME = {"Origin": "http://testserver"}


@dataclass
class Web:
    app_lake: Lake
    client: TestClient
    tokens: dict[str, str]

    def sign_in(self, role: str) -> tuple[str, str]:
        """A new session: its cookie and the CSRF token its pages carry."""
        self.client.cookies.clear()
        answer = self.client.post("/ui/signin", data={"token": self.tokens[role]})
        assert answer.status_code == 303, answer.text
        cookie = self.client.cookies[COOKIE_NAME]
        page = self.client.get("/ui").text
        found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
        assert found is not None
        return cookie, found.group(1)

    def use(self, cookie: str) -> TestClient:
        self.client.cookies.clear()
        self.client.cookies.set(COOKIE_NAME, cookie)
        return self.client

    def rows(self) -> list[WebSession]:
        with session_factory(self.app_lake.engine)() as session:
            return list(session.scalars(select(WebSession).order_by(WebSession.id)))


@pytest.fixture
def web(catalog_url: str, tmp_path: Path) -> Iterator[Web]:
    """The app over an empty lake on each catalog backend, one token per role."""
    engine = make_engine(catalog_url)
    upgrade(engine)
    lake = Lake(engine, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    with transaction(engine) as session:
        tokens = {r.name.lower(): create_token(session, name=r.name.lower(), role=r) for r in Role}
    app = create_app(lake, web_session_lifetime=timedelta(hours=2))
    with TestClient(app, follow_redirects=False) as client:
        yield Web(lake, client, tokens)
    engine.dispose()


def test_the_cookie_names_a_session_and_never_holds_the_api_token(web: Web) -> None:
    answer = web.client.post("/ui/signin", data={"token": web.tokens["curator"]})
    header = answer.headers["set-cookie"]
    cookie = web.client.cookies[COOKIE_NAME]
    token = web.tokens["curator"]
    assert cookie.startswith("rs_") and token not in header and token[3:] not in header
    assert "Max-Age=7200" in header  # the lifetime the app was given
    (row,) = web.rows()
    # Only hashes are kept: neither the cookie nor its CSRF token is in the catalog.
    assert row.session_hash == hashlib.sha256(cookie.encode()).hexdigest()
    assert row.csrf_hash == hashlib.sha256(csrf_token_for(cookie).encode()).hexdigest()
    assert row.revoked_at is None and row.created_at.tzinfo is not None
    lasts = row.expires_at - row.created_at
    assert lasts == timedelta(hours=2), lasts
    with session_factory(web.app_lake.engine)() as session:
        owner = session.get(ApiToken, row.token_id)
        assert owner is not None and owner.name == "curator"
    assert web.use(cookie).get("/images").status_code == 200
    # The old kind of cookie, the API token itself, no longer signs anyone in.
    assert web.use(token).get("/images").status_code == 401
    assert web.use(token).get("/ui").status_code == 303


def test_a_signed_out_sessions_cookie_gets_401(web: Web) -> None:
    cookie, csrf = web.sign_in("curator")
    client = web.use(cookie)
    out = client.post("/ui/signout", data={"csrf_token": csrf}, headers=SAME)
    assert out.status_code == 303
    assert web.rows()[0].revoked_at is not None
    replay = web.use(cookie)
    assert replay.get("/images").status_code == 401
    saved = replay.post(
        "/cohorts", json={"name": "x", "filter": {}}, headers={**SAME, "X-CSRF-Token": csrf}
    )
    assert saved.status_code == 401, saved.text
    assert replay.get("/ui").status_code == 303
    # Signing out again with a dead cookie just clears it.
    again = replay.post("/ui/signout", data={"csrf_token": csrf}, headers=SAME)
    assert again.status_code == 303 and 'radlake_session="";' in again.headers["set-cookie"]
    # Other sessions of the same token live on: sign-out ends this browser's only.
    other, _ = web.sign_in("curator")
    assert web.use(other).get("/images").status_code == 200


def test_signing_in_again_ends_the_browsers_previous_session(web: Web) -> None:
    first, _ = web.sign_in("viewer")
    client = web.use(first)
    again = client.post("/ui/signin", data={"token": web.tokens["curator"]})
    assert again.status_code == 303
    second = again.cookies[COOKIE_NAME]
    assert second != first  # a new id at each sign-in: no session fixation
    assert web.use(first).get("/images").status_code == 401
    assert web.use(second).get("/ui/upload").status_code == 200  # now the curator
    assert [row.revoked_at is not None for row in web.rows()] == [True, False]


def test_an_expired_session_gets_401(web: Web) -> None:
    cookie, csrf = web.sign_in("curator")
    assert web.use(cookie).get("/images").status_code == 200
    with transaction(web.app_lake.engine) as session:
        session.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    client = web.use(cookie)
    assert client.get("/images").status_code == 401
    assert "expired" in client.get("/images").json()["detail"]
    assert client.get("/ui").headers["location"].startswith("/ui/signin")
    write = client.post(
        "/cohorts", json={"name": "x", "filter": {}}, headers={**SAME, "X-CSRF-Token": csrf}
    )
    assert write.status_code == 401


def test_revoking_the_token_ends_its_sessions(web: Web) -> None:
    cookie, _ = web.sign_in("viewer")
    keeper, _ = web.sign_in("admin")
    with transaction(web.app_lake.engine) as session:
        revoke_token(session, name="viewer")
    assert web.use(cookie).get("/images").status_code == 401
    assert web.use(cookie).get("/ui").status_code == 303
    assert web.use(keeper).get("/images").status_code == 200


def test_session_functions_directly(catalog: Engine) -> None:
    with transaction(catalog) as session:
        create_token(session, name="reader", role=Role.VIEWER)
    now = utcnow()
    with transaction(catalog) as session:
        token = session.scalars(select(ApiToken)).one()
        old = open_session(
            session, token=token, lifetime=timedelta(hours=1), now=now - timedelta(days=40)
        )
        new = open_session(session, token=token, lifetime=timedelta(hours=1), now=now)
    assert new.cookie != old.cookie and new.csrf_token == csrf_token_for(new.cookie)
    with session_factory(catalog)() as session:
        active = find_session(session, cookie=new.cookie)
        assert active is not None and active.token.name == "reader"
        assert csrf_matches(active, given=new.csrf_token)
        for wrong in (None, "", old.csrf_token, new.cookie, new.csrf_token + "0", "x" * 5000):
            assert not csrf_matches(active, given=wrong), wrong
        assert find_session(session, cookie=new.cookie, now=now + timedelta(hours=2)) is None
        assert find_session(session, cookie=old.cookie) is None  # expired long ago
        for forged in ("", "rs_", "rs_" + "A" * 43, new.cookie + "x", "rl_" + new.cookie[3:]):
            assert find_session(session, cookie=forged) is None, forged
    with transaction(catalog) as session:
        assert close_session(session, cookie=new.cookie) is True
        assert close_session(session, cookie=new.cookie) is False  # already signed out
        assert close_session(session, cookie="nonsense") is False
    with session_factory(catalog)() as session:
        assert find_session(session, cookie=new.cookie) is None
        # A sign-in drops sessions that expired more than 30 days ago, keeps the rest.
        hashes = set(session.scalars(select(WebSession.session_hash)))
    assert hashlib.sha256(new.cookie.encode()).hexdigest() in hashes
    with transaction(catalog) as session:
        token = session.scalars(select(ApiToken)).one()
        open_session(session, token=token, lifetime=timedelta(hours=1))
    with session_factory(catalog)() as session:
        left = set(session.scalars(select(WebSession.session_hash)))
    assert hashlib.sha256(old.cookie.encode()).hexdigest() not in left
    assert len(left) == 2


def test_migration_0005_goes_up_down_and_up_again(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    try:
        config = _alembic_config(engine)
        command.upgrade(config, "0005")  # this migration alone, on an empty database
        columns = {c["name"] for c in inspect(engine).get_columns("web_session")}
        assert columns == {
            "id",
            "token_id",
            "session_hash",
            "csrf_hash",
            "created_at",
            "expires_at",
            "revoked_at",
        }
        command.downgrade(config, "0004")
        assert "web_session" not in inspect(engine).get_table_names()
        assert "api_token" in inspect(engine).get_table_names()
        command.upgrade(config, "0005")
        assert "web_session" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
