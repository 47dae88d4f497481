"""Request receipt deadlines for `radlake serve`: a client that trickles its headers or
body (slowloris) is answered 408 and cut off (issue 8, web security).

uvicorn has no such timeout: timeout_keep_alive only covers the idle time between
requests and is reset by every byte that arrives, and an ASGI middleware runs only
once the headers are complete (uvicorn issue 157 lists the missing
--timeout-request-start and --timeout-request-complete). So this is uvicorn's own h11
protocol with a deadline, on Apache mod_reqtimeout's rule: a request's headers must
arrive within `timeout` seconds; its body gets `timeout` seconds more from the end of
the headers, and every `min_rate` bytes received earn one more second, so a large
upload over a slow link passes while a body sent at one byte per ten seconds is cut
off after about `timeout` seconds. The clock stops while the server itself has
paused reading (its app has not consumed what came), and once the request is whole.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("uvicorn.error")
_BODY = b"the request did not arrive in time"
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request.

    Built by uvicorn as `functools.partial(DeadlineH11Protocol, timeout=..., min_rate=...)`
    passed as its `http` protocol class (a partial pickles, so workers > 1 work too).
    """

    def __init__(self, *args: Any, timeout: float = 30.0, min_rate: int = 500, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.receipt_timeout = timeout
        self.receipt_min_rate = min_rate
        self._deadline: float | None = None
        self._in_body = False
        self._started = False  # a byte of the current request has arrived
        self._timer: asyncio.TimerHandle | None = None

    # The deadline: armed for headers, extended through the body, disarmed when whole.

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._expired)

    def _disarm(self) -> None:
        self._deadline = None
        self._in_body = False
        self._started = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._deadline is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # our app is behind, not the client: wait for it
            self._deadline = max(self._deadline, now + self.receipt_timeout)
        if self._deadline > now:  # extended by bytes that came meanwhile
            self._timer = self.loop.call_at(self._deadline, self._expired)
            return
        phase = "body" if self._in_body else "headers"
        logger.warning(
            "request %s not received within the deadline (%.0f s): answered 408, closed",
            phase,
            self.receipt_timeout,
        )
        cycle = self.cycle if self._in_body else None
        if self._started and (cycle is None or not cycle.response_started):
            # Not to a connection that never sent a byte: a client reusing it would
            # take the 408 for the answer to its next request.
            self.transport.write(TIMEOUT_RESPONSE)
        if cycle is not None:
            # The app sees the client gone; its own response, if any, goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self._disarm()
        self.transport.close()

    def _track(self, received: int) -> None:
        """After h11 has taken in `received` bytes: which phase the request is in."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            now = self.loop.time()
            self._started = True
            if not self._in_body:
                self._in_body = True
                self._arm(now + self.receipt_timeout)
            elif self._deadline is not None:
                self._deadline += received / self.receipt_min_rate
        elif state is not h11.IDLE:
            self._disarm()  # the request is whole (or the connection is done)

    # uvicorn's protocol hooks.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.loop.time() + self.receipt_timeout)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            # The next request on a kept-alive connection starts (its idle time before
            # was timeout_keep_alive's to judge).
            self._arm(self.loop.time() + self.receipt_timeout)
        self._started = True
        super().data_received(data)
        self._track(len(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:
            self._disarm()  # idle now: timeout_keep_alive closes the connection
        else:
            self._track(0)  # a pipelined request already in, or a body still coming

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
