"""Times on the command line: ISO 8601, a zone or UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from radlake.errors import ConfigError


def parse_time(text: str, *, option: str = "--since") -> datetime:
    """'2026-12-01', '2026-12-01T10:00', '2026-12-01T10:00:00+01:00' -> an aware datetime
    (a time without a zone is UTC).

    Raises:
        ConfigError: not an ISO 8601 date or time (one error line, exit 1).
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{option}: expected an ISO 8601 time like 2026-12-01T10:00:00Z, got {text[:60]!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
