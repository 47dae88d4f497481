"""The API in this process, for `radlake simulate` without --url: uvicorn in a
thread on 127.0.0.1 and a free port, serving the app `radlake serve` serves."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from radlake.traffic.pattern import SimulationError

START_SECONDS = 30.0
STOP_SECONDS = 10.0


@contextmanager
def serve_in_thread(
    app: FastAPI,
    *,
    http: type[asyncio.Protocol] | str = "h11",
    keep_alive_seconds: int = 5,
) -> Iterator[str]:
    """Serve app until the block ends; yields its base URL.

    Raises:
        SimulationError: the server did not start within START_SECONDS.
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        ws="none",
        http=http,
        timeout_keep_alive=keep_alive_seconds,
    )
    server = uvicorn.Server(config)
    # Off the main thread uvicorn installs no signal handlers: Ctrl-C stays ours.
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="simulate-api", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SimulationError("the API did not start on 127.0.0.1")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_SECONDS)
        sock.close()
