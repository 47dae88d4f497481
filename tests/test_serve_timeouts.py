"""`radlake serve` cuts off clients that trickle their request (slowloris, issue 8):
the real command on 127.0.0.1, raw sockets sending headers or a body byte by byte,
and a slow but honest upload that must still pass."""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import _free_port, run_radlake

TIMEOUT = 2.0  # RADLAKE_REQUEST_TIMEOUT for the server under test
MIN_RATE = 1000  # RADLAKE_REQUEST_MIN_RATE: bytes of body that earn one more second
KEEP_ALIVE = 3  # RADLAKE_KEEP_ALIVE_SECONDS
SLACK = 1.5  # timer and scheduling latitude on a loaded machine


@dataclass(frozen=True, slots=True)
class Server:
    port: int
    token: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve") / "lake"
    assert run_radlake(home, "init").returncode == 0
    created = run_radlake(home, "token", "create", "uploader", "--role", "curator")
    assert created.returncode == 0, created.stderr
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env |= {
        "RADLAKE_HOME": str(home),
        "RADLAKE_REQUEST_TIMEOUT": str(TIMEOUT),
        "RADLAKE_REQUEST_MIN_RATE": str(MIN_RATE),
        "RADLAKE_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "radlake.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "radlake serve did not start within 90 s"
            time.sleep(0.1)
    yield Server(port, created.stdout.strip())
    process.terminate()
    process.wait(timeout=10)
    if process.stderr:
        process.stderr.close()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> tuple[bytes, float]:
    """Send data one byte per `every` seconds until the server answers or closes;
    what it sent back (until it closed) and after how many seconds."""
    started = time.monotonic()
    answer = b""
    for byte in data:
        ready, _, _ = select.select([sock], [], [], every)
        if ready:
            break
        try:
            sock.send(bytes([byte]))
        except OSError:  # closed under us: the answer is already waiting
            break
        assert time.monotonic() - started < limit, "the server let the trickle go on"
    sock.settimeout(limit)
    while chunk := sock.recv(65536):
        answer += chunk
    return answer, time.monotonic() - started


def test_headers_sent_byte_by_byte_are_cut_off_with_408(server: Server) -> None:
    with connect(server) as sock:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        answer, seconds = trickle(sock, request, every=0.25, limit=TIMEOUT + 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert TIMEOUT - 0.3 < seconds < TIMEOUT + SLACK, seconds


def test_a_silent_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.settimeout(TIMEOUT + 10)
        answer = sock.recv(65536)
        seconds = time.monotonic() - started
    assert answer == b"", answer[:200]  # closed, no 408: it never asked anything
    assert seconds < TIMEOUT + SLACK, seconds


def test_a_body_sent_byte_by_byte_is_cut_off_with_408(server: Server) -> None:
    head = (
        "POST /images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with connect(server) as sock:
        sock.sendall(head)
        answer, seconds = trickle(sock, b"--xyz\r\n" + b"a" * 500, every=0.25, limit=30)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    # A few bytes earn a few milliseconds: the body is cut off about TIMEOUT after its start.
    assert TIMEOUT - 0.3 < seconds < TIMEOUT + SLACK, seconds


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body) off the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def noise_png(side: int = 160) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 255, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_slow_honest_upload_passes_and_the_connection_is_kept(server: Server) -> None:
    png = noise_png()
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--xyz--\r\n"
    )
    head = (
        "POST /images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token}\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    chunk = 1000  # 4 KB/s: four times the minimum rate, yet longer than TIMEOUT in all
    assert len(body) / (chunk / 0.25) > TIMEOUT * 2
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for offset in range(0, len(body), chunk):
            sock.sendall(body[offset : offset + chunk])
            time.sleep(0.25)
        sock.settimeout(30)
        answer = read_response(sock)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
        assert b'"format":"png"' in answer and b'"already_present":false' in answer
        assert took > TIMEOUT * 2, took
        # The same connection serves the next request, then idles out after keep-alive.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        health = read_response(sock)
        assert health.startswith(b"HTTP/1.1 200 ") and health.endswith(b"}"), health
        idle = time.monotonic()
        assert sock.recv(65536) == b""
        assert time.monotonic() - idle < KEEP_ALIVE + SLACK
