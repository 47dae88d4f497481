"""One HTTP call, timed by the client, that never raises: what load.py and
reviewer.py record for every request they send."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

ERROR_TEXT = 200  # characters of an error kept in the results


@dataclass(frozen=True, slots=True)
class Call:
    """A request's outcome: the status (None when no answer came), the client's
    milliseconds, the JSON answer of a 2xx, and the reason of a failure."""

    status: int | None
    client_ms: float
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def error_key(self) -> str | None:
        """How errors are counted: the status ('404'), or what kept the answer away
        ('timeout', 'connect', 'transport'); None for a success."""
        if self.ok:
            return None
        if self.status is not None and not 200 <= self.status < 300:
            return str(self.status)
        return (self.error or "transport").split(":", 1)[0]

    def malformed(self, reason: str) -> Call:
        """This 2xx as an error: its answer is not what the route promises."""
        return Call(self.status, self.client_ms, error=f"malformed: {reason}"[:ERROR_TEXT])


def _failure(kind: str, exc: Exception) -> str:
    return f"{kind}: {type(exc).__name__}: {exc}"[:ERROR_TEXT]


def send(client: httpx.Client, method: str, path: str, body: Any = None) -> Call:
    """method path (with a JSON body) on client; transport failures are outcomes too."""
    started = time.perf_counter()
    try:
        answer = client.request(method, path, json=body)
    except httpx.TimeoutException as exc:
        return Call(None, 1000 * (time.perf_counter() - started), error=_failure("timeout", exc))
    except httpx.ConnectError as exc:
        return Call(None, 1000 * (time.perf_counter() - started), error=_failure("connect", exc))
    except httpx.HTTPError as exc:  # a dropped connection, a protocol error
        return Call(None, 1000 * (time.perf_counter() - started), error=_failure("transport", exc))
    elapsed = 1000 * (time.perf_counter() - started)
    try:
        data = answer.json()
    except ValueError:
        data = None
    if 200 <= answer.status_code < 300:
        return Call(answer.status_code, elapsed, body=data)
    detail = data.get("detail") if isinstance(data, dict) else answer.text
    return Call(answer.status_code, elapsed, error=str(detail)[:ERROR_TEXT])
