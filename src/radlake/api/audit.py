"""Audit events: downloads and uploads say who, what and when."""

from __future__ import annotations

from typing import Any

from radlake.api.deps import Caller
from radlake.catalog.db import transaction
from radlake.catalog.models import AuditEvent
from radlake.lake import Lake


def record(lake: Lake, caller: Caller, action: str, target: str, **detail: Any) -> None:
    """Write one audit event in its own transaction (it survives a failed response)."""
    with transaction(lake.engine) as session:
        session.add(
            AuditEvent(
                token_id=caller.token_id,
                actor=caller.name,
                action=action,
                target=target[:500],
                detail=detail,
            )
        )
