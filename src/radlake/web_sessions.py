"""Web sessions: what the web page's sign-in cookie names (issue 8, web security).

Signing in with an API token opens a session: a random id goes into the HttpOnly
cookie and only its SHA-256 into the catalog, so the cookie never carries the API
token and signing out (or revoking the token) ends the session on the server. Each
session has a CSRF token that the session's pages send back on every write; it is
derived from the session id (an HMAC keyed by it), so pages can show it without the
server keeping any secret in the clear, and a CSRF token cannot be turned back into
the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from radlake.auth import hash_token
from radlake.catalog.models import ApiToken, WebSession, utcnow

SESSION_PREFIX = "rs_"
DEFAULT_LIFETIME = timedelta(hours=12)
# Expired rows are kept a while (who was signed in when) and then dropped at a sign-in.
KEEP_EXPIRED = timedelta(days=30)
_CSRF_LABEL = b"radlake web session csrf v1"


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """A new session: the cookie value and its CSRF token (neither is stored)."""

    cookie: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """A session that is signed in now, with its token."""

    row: WebSession
    token: ApiToken


def csrf_token_for(cookie: str) -> str:
    """The CSRF token of the session whose cookie is cookie."""
    return hmac.new(cookie.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def open_session(
    session: Session, *, token: ApiToken, lifetime: timedelta, now: datetime | None = None
) -> OpenedSession:
    """A new session for token lasting lifetime; drops long-expired sessions."""
    now = now or utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now - KEEP_EXPIRED))
    cookie = SESSION_PREFIX + secrets.token_urlsafe(32)
    csrf = csrf_token_for(cookie)
    expires = now + lifetime
    session.add(
        WebSession(
            token_id=token.id,
            session_hash=hash_token(cookie),
            csrf_hash=hash_token(csrf),
            created_at=now,
            expires_at=expires,
        )
    )
    return OpenedSession(cookie, csrf, expires)


def find_session(
    session: Session, *, cookie: str, now: datetime | None = None
) -> ActiveSession | None:
    """The active session this cookie names: not signed out, not expired, and its
    token not revoked. None otherwise (a forged, stale or old-style cookie too)."""
    if not cookie.startswith(SESSION_PREFIX) or len(cookie) > 200:
        return None
    found = session.execute(
        select(WebSession, ApiToken)
        .join(ApiToken, ApiToken.id == WebSession.token_id)
        .where(
            WebSession.session_hash == hash_token(cookie),
            WebSession.revoked_at.is_(None),
            WebSession.expires_at > (now or utcnow()),
            ApiToken.revoked_at.is_(None),
        )
    ).one_or_none()
    return None if found is None else ActiveSession(found[0], found[1])


def csrf_matches(active: ActiveSession, *, given: str | None) -> bool:
    """True when given is this session's CSRF token (compared in constant time)."""
    if not given or len(given) > 200:
        return False
    return hmac.compare_digest(hash_token(given), active.row.csrf_hash)


def close_session(session: Session, *, cookie: str, now: datetime | None = None) -> bool:
    """Sign out the session this cookie names; True when one was open."""
    if not cookie.startswith(SESSION_PREFIX) or len(cookie) > 200:
        return False
    result = session.execute(
        update(WebSession)
        .where(WebSession.session_hash == hash_token(cookie), WebSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
