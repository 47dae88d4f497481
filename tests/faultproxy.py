"""A fault-injecting TCP proxy for tests: put it between a client and a real server
(moto's S3, PostgreSQL, MariaDB, ...) and change what the network does while the
client runs.

    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        ...                                      # bytes pass both ways
        proxy.set_mode("reset")                  # every new connection: RST mid-request
        proxy.set_mode("stall", connections=1)   # only the next connection stalls
        proxy.outage(2.0)                        # refuse for 2 s, then pass again
        assert proxy.counts["refuse"] > 0        # the fault really happened

Modes:
    pass    forward bytes both ways
    refuse  accept, then close at once (the client reads end of stream, or gets a
            reset if its request was already sent)
    reset   read part of the request, then close with RST (SO_LINGER 0)
    stall   accept, never read, never answer (a frozen server: small requests wait
            for an answer, large uploads block once the socket buffers are full)
Every mode change cuts (RST) the connections opened before it, so pooled keep-alive
connections fail too, as when a server goes away and comes back.

In pytest, `from tests.faultproxy import fault_proxy_fixture  # noqa: F401` in a test
module (or conftest.py) provides the `fault_proxy` fixture, a factory whose proxies are
closed after the test:

    def test_catalog_outage(fault_proxy):
        proxy = fault_proxy(("127.0.0.1", 5432))

Generic TCP: nothing is parsed, so any protocol works, client-first (HTTP, the
PostgreSQL wire protocol) or server-first (MySQL), where `reset` waits at most
`reset_wait` seconds for the client's first bytes. Everything runs on one asyncio
loop in one background thread; close() cuts every connection and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar

import pytest

Mode = Literal["pass", "refuse", "reset", "stall"]
MODES: tuple[Mode, ...] = ("pass", "refuse", "reset", "stall")
CHUNK = 64 * 1024
SHUTDOWN_SECONDS = 10.0

T = TypeVar("T")


class _Link:
    """One client connection and, in pass mode, its upstream connection."""

    def __init__(self, generation: int, client: asyncio.StreamWriter) -> None:
        self.generation = generation
        self.writers = [client]
        self.cut = False
        self.was_cut = asyncio.Event()

    def add(self, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.cut:
            _reset(writer)

    def reset(self) -> None:
        self.cut = True
        self.was_cut.set()
        for writer in self.writers:
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: SO_LINGER on, timeout 0, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy on host:<free port> forwarding to target, with a switchable fault."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        reset_after_bytes: int = 16 * 1024,
        reset_wait: float = 1.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = target
        self.host = host
        self.port = 0
        # What was seen: "accepted" and one count per mode a connection was served in.
        self.counts: Counter[str] = Counter()
        self._reset_after_bytes = reset_after_bytes
        self._reset_wait = reset_wait
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._mode: Mode = "pass"
        self._remaining: int | None = None
        self._generation = 0
        self._timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free port (self.port); returns self."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"faultproxy-{self.target[1]}", daemon=True
        )
        self._thread.start()
        try:
            self._on_loop(self._listen())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop listening, cut every connection, stop the loop and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._cancel_timer()
        try:
            if self._server is not None:
                self._on_loop(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(SHUTDOWN_SECONDS)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """http://host:port, for HTTP clients such as an S3 endpoint."""
        return f"http://{self.host}:{self.port}"

    # --- faults -------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    def set_mode(self, mode: Mode, *, connections: int | None = None) -> None:
        """Serve new connections in mode, cutting the open ones; with connections=N only
        the next N connections get the fault, then the proxy passes again. Cancels a
        pending outage()."""
        self._cancel_timer()
        self._apply(mode, connections)

    def outage(self, seconds: float, mode: Mode = "refuse") -> threading.Timer:
        """Fault for seconds (from a timer thread), then pass again; returns the timer
        (join it to wait for the end of the outage)."""
        self.set_mode(mode)
        with self._lock:
            generation = self._generation
        timer = threading.Timer(seconds, self._restore, args=(generation,))
        timer.name = "faultproxy-outage"
        timer.daemon = True
        with self._lock:
            self._timer = timer
        timer.start()
        return timer

    def _restore(self, generation: int) -> None:
        # Only the outage that started this timer ends; a later set_mode wins.
        with self._lock:
            current = self._generation == generation
        if current:
            self._apply("pass", None)

    def _apply(self, mode: Mode, connections: int | None) -> None:
        if mode not in MODES:
            raise ValueError(f"expected a mode in {MODES}, got {mode!r}")
        if connections is not None and connections < 1:
            raise ValueError(f"expected connections >= 1, got {connections}")
        with self._lock:
            self._mode, self._remaining = mode, connections
            self._generation += 1
            generation = self._generation
        if self._loop is not None:
            self._on_loop(self._cut_before(generation))

    def _cancel_timer(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
            timer.join(SHUTDOWN_SECONDS)

    def _take_mode(self) -> tuple[Mode, int]:
        with self._lock:
            mode, generation = self._mode, self._generation
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining == 0:
                    # Back to pass without a cut: the faulted connections play out.
                    self._mode, self._remaining = "pass", None
            return mode, generation

    # --- the loop thread ----------------------------------------------------------

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(SHUTDOWN_SECONDS)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _cut_before(self, generation: int) -> None:
        for link in list(self._links):
            if link.generation < generation:
                link.reset()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for link in list(self._links):
            link.reset()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_SECONDS)
        # Let aborted transports run connection_lost and close their sockets.
        for _ in range(3):
            await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        mode, generation = self._take_mode()
        link = _Link(generation, writer)
        self._links.add(link)
        self.counts["accepted"] += 1
        self.counts[mode] += 1
        try:
            if mode == "refuse":
                pass
            elif mode == "reset":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(self._reset_after_bytes), self._reset_wait)
                link.reset()
            elif mode == "stall":
                # Not reading: asyncio stops reading the socket once its buffer is full.
                await link.was_cut.wait()
            else:
                await self._forward(reader, link)
        except (OSError, asyncio.IncompleteReadError):
            link.reset()
        finally:
            self._links.discard(link)
            for each in link.writers:
                each.close()
            for each in link.writers:
                with contextlib.suppress(OSError):
                    await each.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _forward(self, client: asyncio.StreamReader, link: _Link) -> None:
        try:
            upstream, writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self._connect_timeout
            )
        except (OSError, TimeoutError):
            link.reset()  # the server behind is down: the client sees its connection cut
            return
        link.add(writer)
        await asyncio.gather(
            self._pump(client, writer, link), self._pump(upstream, link.writers[0], link)
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()  # half-close, as the peer did
        except OSError:
            link.reset()  # one side failed: the other must not wait for it forever


@pytest.fixture(name="fault_proxy")
def fault_proxy_fixture() -> Iterator[Callable[..., FaultProxy]]:
    """A factory: fault_proxy((host, port), **options) starts a FaultProxy in front of
    that server; every proxy it started is closed after the test."""
    started: list[FaultProxy] = []

    def start(target: tuple[str, int], **options: Any) -> FaultProxy:
        proxy = FaultProxy(target, **options).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.close()
