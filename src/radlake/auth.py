"""API tokens: random secrets shown once; only their SHA-256 is stored.

Roles are ordered: dicomweb < viewer < reviewer < curator < admin. A dicomweb token
reads /dicomweb (de-identified objects) only, for a web viewer's page. Viewers read
the API and the web pages; reviewers also
file feedback on predictions (accept, reject, correct, add boxes); curators also
upload, create datasets and build retraining sets; admins also manage tokens and read
the audit log. Roles are stored by name, so their numbers may change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from enum import IntEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radlake.catalog.models import ApiToken, AuditEvent, utcnow
from radlake.errors import RadlakeError

TOKEN_PREFIX = "rl_"  # noqa: S105 (a prefix, not a secret)
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class Role(IntEnum):
    # Reads /dicomweb (de-identified objects) and nothing else: the token a web
    # viewer such as OHIF carries in a page anyone who loads it can read.
    DICOMWEB = 0
    VIEWER = 1
    REVIEWER = 2
    CURATOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, text: str) -> Role:
        """'viewer' -> Role.VIEWER.

        Raises:
            TokenError: not one of dicomweb, viewer, reviewer, curator, admin.
        """
        try:
            return cls[text.upper()]
        except KeyError:
            raise TokenError(
                f"expected a role dicomweb, viewer, reviewer, curator or admin, got {text!r}"
            ) from None


class TokenError(RadlakeError, ValueError):
    """A token request cannot be met (duplicate name, unknown token, bad role)."""


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, role: Role) -> str:
    """A new token for name (shown once; only its hash is kept).

    Raises:
        TokenError: the name is not 1-100 letters, digits, '.', '_' or '-' (starting
            with a letter or digit), or a token with this name exists.
    """
    if not TOKEN_NAME.fullmatch(name):
        # Names are printed in commands to copy (`radlake token revoke NAME`) and in
        # tables: nothing a shell or a terminal would read as more than a name.
        raise TokenError(
            f"a token name is 1-100 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit: got {name[:40]!r}"
        )
    taken = TokenError(f"a token named {name!r} exists (revoked or not): choose another name")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        # Names stay taken once revoked, so the audit trail names one token each.
        raise taken
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role.name.lower(), token_hash=hash_token(token)))
    try:
        # Inserted now, so a second process creating the same name at the same time
        # fails here (the unique name), before its caller uses the token.
        session.flush()
    except IntegrityError:
        raise taken from None
    session.add(
        AuditEvent(
            actor="cli", action="token.create", target=name, detail={"role": role.name.lower()}
        )
    )
    return token


def revoke_token(session: Session, *, name: str) -> None:
    """Revoke the named token.

    Raises:
        TokenError: no active token has this name.
    """
    token = session.scalar(
        select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    )
    if token is None:
        raise TokenError(f"no active token named {name!r}")
    token.revoked_at = utcnow()
    session.add(AuditEvent(actor="cli", action="token.revoke", target=name))


def verify_token(session: Session, token: str) -> ApiToken | None:
    """The active token matching token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    return session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    )


def list_tokens(session: Session) -> list[ApiToken]:
    """Every token row by name (hashes only; the secrets were never kept)."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))
