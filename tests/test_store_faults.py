"""Faults of the store are retried, then reported as faults (issue "Ingest that never
stops", the store part): a real moto S3 server behind tests/faultproxy.py, which
refuses, resets and stalls connections on demand; plus what a local write puts on disk
(fsync) and put_if_absent's integrity check."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from radlake.errors import ObjectNotFound, StorageError, StoreUnavailable
from radlake.storage import store as store_module
from radlake.storage.keys import derived_key, raw_key
from radlake.storage.store import ObjectInfo, ObjectStore, open_store
from tests.conftest import POSTGRES_URL, s3_options
from tests.faultproxy import FaultProxy, Mode, fault_proxy_fixture  # noqa: F401 (fixture)

ProxyFactory = Callable[..., FaultProxy]
SHA = "ab" * 32
PAYLOAD = os.urandom(600 * 1024)  # a 500 KB-ish original: several TCP segments
# The client's own timeouts, small so a stalled request fails in seconds, not 20 s.
FAST_TIMEOUTS = {"connect_timeout": 1, "read_timeout": 2}


@pytest.fixture
def proxy(s3_endpoint: str, fault_proxy: ProxyFactory) -> FaultProxy:
    """A fault-injecting proxy in front of the moto S3 server."""
    address = urlsplit(s3_endpoint)
    assert address.hostname is not None and address.port is not None
    return fault_proxy((address.hostname, address.port))


@pytest.fixture
def through_proxy(s3_bucket: str, proxy: FaultProxy) -> Callable[[float], ObjectStore]:
    """An S3 store reaching the bucket through the proxy, with retry_seconds given."""

    def make(retry_seconds: float) -> ObjectStore:
        options: dict[str, Any] = s3_options(proxy.url)
        return open_store(
            f"s3://{s3_bucket}/lake",
            retry_seconds=retry_seconds,
            skip_instance_cache=True,
            config_kwargs=FAST_TIMEOUTS,
            **options,
        )

    return make


def _timed(action: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


# --- S3 through the proxy: outages are ridden out --------------------------------------


def test_a_short_outage_during_puts_and_gets_is_ridden_out(
    proxy: FaultProxy, through_proxy: Callable[[float], ObjectStore]
) -> None:
    store = through_proxy(8.0)
    store.put_bytes("raw/aa/before", PAYLOAD)  # a pooled keep-alive connection now exists

    proxy.outage(2.0)  # refuse for 2 s: open connections are cut, new ones closed
    _, took = _timed(lambda: store.put_bytes(raw_key(SHA, "dcm"), PAYLOAD))
    assert store.get_bytes("raw/aa/before") == PAYLOAD
    assert proxy.counts["refuse"] > 0
    assert 1.0 < took < 8.0

    proxy.outage(2.0, mode="reset")  # connections reset mid-request during a read
    assert store.get_bytes(raw_key(SHA, "dcm")) == PAYLOAD
    assert store.info(raw_key(SHA, "dcm")).size == len(PAYLOAD)
    assert sorted(store.list("raw")) == ["raw/aa/before", raw_key(SHA, "dcm")]
    assert proxy.counts["reset"] > 0

    big = os.urandom(8 * 1024 * 1024)  # a multi-MB PUT within the client's timeouts
    proxy.outage(1.0)
    store.put_bytes("raw/aa/big", big)
    assert store.get_bytes("raw/aa/big") == big


def test_connections_reset_mid_put_are_retried_and_the_object_is_intact(
    proxy: FaultProxy, through_proxy: Callable[[float], ObjectStore]
) -> None:
    store = through_proxy(8.0)
    key = raw_key(SHA, "dcm")
    store.put_bytes(key, b"an older object, to be replaced whole or not at all")
    proxy.set_mode("reset", connections=3)  # RST after part of each request was read
    store.put_bytes(key, PAYLOAD)
    assert proxy.counts["reset"] == 3
    assert store.get_bytes(key) == PAYLOAD
    assert store.put_if_absent(key, PAYLOAD) is False


def test_an_outage_longer_than_retry_seconds_is_store_unavailable_in_bounded_time(
    proxy: FaultProxy, through_proxy: Callable[[float], ObjectStore]
) -> None:
    store = through_proxy(3.0)
    through_proxy(30.0).put_bytes("raw/aa/there", b"x")  # set up without a tight deadline
    proxy.set_mode("refuse")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"^store unreachable \(writing raw/") as caught:
        store.put_bytes(raw_key(SHA, "dcm"), PAYLOAD)
    took = time.monotonic() - started
    assert 2.5 < took < 3.0 + 8.0  # retried until the deadline, then stopped
    message = str(caught.value)
    assert "\n" not in message and "testing" not in message  # one line, no credentials
    assert isinstance(caught.value, StorageError) and isinstance(caught.value, ConnectionError)
    assert proxy.counts["refuse"] > 3

    proxy.set_mode("pass")  # the store heals: the same client works again
    assert store.get_bytes("raw/aa/there") == b"x"


@pytest.mark.parametrize(
    "operation",
    [
        lambda store: store.get_bytes("raw/aa/there"),
        lambda store: store.info("raw/aa/there"),
        lambda store: store.exists("raw/aa/there"),
        lambda store: store.size("raw/aa/there"),
        lambda store: store.put_if_absent("raw/aa/other", b"y"),
        lambda store: store.delete("raw/aa/there"),
        lambda store: list(store.list("raw")),
    ],
    ids=["get_bytes", "info", "exists", "size", "put_if_absent", "delete", "list"],
)
def test_every_operation_reports_a_lasting_outage_as_store_unavailable(
    proxy: FaultProxy,
    through_proxy: Callable[[float], ObjectStore],
    operation: Callable[[ObjectStore], object],
) -> None:
    store = through_proxy(1.0)
    through_proxy(30.0).put_bytes("raw/aa/there", b"x")  # set up without a tight deadline
    proxy.set_mode("reset")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="store unreachable"):
        operation(store)
    # Bounded: the 1 s deadline plus one try's timeouts, with room for a loaded machine.
    assert time.monotonic() - started < 1.0 + 8.0


def test_a_stalled_server_is_a_fault_not_a_hang(
    proxy: FaultProxy,
    through_proxy: Callable[[float], ObjectStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = through_proxy(2.0)
    through_proxy(30.0).put_bytes("raw/aa/there", b"x")  # set up without a tight deadline
    proxy.set_mode("stall")  # accepts, never reads, never answers
    # A small request waits for an answer: the read timeout (2 s) ends each try.
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="store unreachable"):
        store.get_bytes("raw/aa/there")
    assert time.monotonic() - started < 2.0 + 2 * 2 + 8.0

    # A large upload blocks once the socket buffers are full, where no read timeout
    # runs: the attempt's own deadline (timeouts + bytes at a minimum rate) ends it.
    monkeypatch.setattr(store_module, "MIN_UPLOAD_BYTES_PER_SECOND", 16 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="store unreachable"):
        store.put_bytes("raw/aa/large", os.urandom(32 * 1024 * 1024))
    assert time.monotonic() - started < 2.0 + 2 * 5 + 8.0


def test_a_missing_object_is_not_retried(
    proxy: FaultProxy, through_proxy: Callable[[float], ObjectStore]
) -> None:
    store = through_proxy(60.0)
    started = time.monotonic()
    with pytest.raises(ObjectNotFound):
        store.get_bytes(raw_key(SHA, "dcm"))
    with pytest.raises(ObjectNotFound):
        store.info(raw_key(SHA, "dcm"))
    assert not store.exists(raw_key(SHA, "dcm"))
    assert list(store.list("nothing/here")) == []
    store.delete(raw_key(SHA, "dcm"))
    # Retrying a miss would spin until the 60 s deadline; half of it leaves a loaded
    # machine plenty of room for five plain requests.
    assert time.monotonic() - started < 30.0

    # An invalid key never reaches the store, even while it is down.
    proxy.set_mode("refuse")
    accepted = proxy.counts["accepted"]
    with pytest.raises(StorageError, match="expected a relative key"):
        store.get_bytes("../escape")
    assert proxy.counts["accepted"] == accepted


def test_put_if_absent_costs_one_head_request(
    through_proxy: Callable[[float], ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = through_proxy(5.0)
    calls: list[str] = []
    real_call, real_sync_call = store.fs._call_s3, store.fs.call_s3

    async def recording(method: str, *args: object, **kwargs: object) -> object:
        calls.append(method)
        return await real_call(method, *args, **kwargs)

    def recording_sync(method: str, *args: object, **kwargs: object) -> object:
        calls.append(method)
        return real_sync_call(method, *args, **kwargs)

    # Every S3 request s3fs sends, from its async methods and from the sync wrapper.
    monkeypatch.setattr(store.fs, "_call_s3", recording)
    monkeypatch.setattr(store.fs, "call_s3", recording_sync)
    key = raw_key(SHA, "dcm")
    assert store.put_if_absent(key, PAYLOAD) is True
    assert calls == ["head_object", "put_object"]
    calls.clear()
    assert store.put_if_absent(key, PAYLOAD) is False
    assert calls == ["head_object"]


# --- put_if_absent rewrites a damaged object ------------------------------------------


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_truncated_object_is_rewritten_by_put_if_absent(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "file":
        store = open_store((tmp_path / "store").as_uri())
    else:
        bucket = request.getfixturevalue("s3_bucket")
        store = open_store(
            f"s3://{bucket}/lake", **s3_options(request.getfixturevalue("s3_endpoint"))
        )
    key = raw_key(SHA, "dcm")
    assert store.put_if_absent(key, PAYLOAD) is True
    # What a torn copy or a bad disk leaves: the first 100 bytes under the real key.
    store.fs.pipe_file(f"{store.root}/{key}", PAYLOAD[:100])
    assert store.size(key) == 100
    assert store.put_if_absent(key, PAYLOAD) is True
    assert store.get_bytes(key) == PAYLOAD
    assert store.put_if_absent(key, PAYLOAD) is False


# --- info ------------------------------------------------------------------------------


def test_info_gives_size_and_modification_time(store: ObjectStore) -> None:
    before = time.time()
    store.put_bytes(raw_key(SHA, "dcm"), PAYLOAD)
    found = store.info(raw_key(SHA, "dcm"))
    assert isinstance(found, ObjectInfo)
    assert found.size == len(PAYLOAD)
    assert found.modified is not None
    assert before - 2 <= found.modified <= time.time() + 2  # S3 keeps whole seconds
    with pytest.raises(ObjectNotFound, match="no object under key"):
        store.info(raw_key("cd" * 32, "dcm"))
    with pytest.raises(ObjectNotFound):
        store.info(f"raw/{SHA[:2]}")  # a "folder" is not an object
    with pytest.raises(StorageError, match="expected a relative key"):
        store.info("raw/../x")


# --- local disks: what is retried, what fails at once, what reaches the disk ---------


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    return open_store((tmp_path / "store").as_uri(), retry_seconds=30.0)


@pytest.mark.parametrize(
    ("number", "text"),
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")],
)
def test_a_full_or_forbidden_disk_fails_at_once_with_a_clear_message(
    local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch, number: int, text: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(number, text)

    monkeypatch.setattr("radlake.storage.store.os.replace", refuse)
    started = time.monotonic()
    with pytest.raises(
        StorageError, match=f"store error writing raw/.*: \\w+Error: {text}$"
    ) as caught:
        local_store.put_bytes(raw_key(SHA, "dcm"), PAYLOAD)
    assert not isinstance(caught.value, StoreUnavailable)
    # Not retried: a retry would go on to the 30 s deadline.
    assert time.monotonic() - started < 10.0


def test_a_passing_disk_error_is_retried(
    local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    failures = [OSError(errno.EIO, "Input/output error"), TimeoutError("NFS server slow")]

    def flaky(source: str, target: str) -> None:
        if failures:
            raise failures.pop(0)
        real_replace(source, target)

    monkeypatch.setattr("radlake.storage.store.os.replace", flaky)
    local_store.put_bytes(raw_key(SHA, "dcm"), PAYLOAD)
    assert failures == []
    assert local_store.get_bytes(raw_key(SHA, "dcm")) == PAYLOAD
    assert list(Path(local_store.root, "tmp").iterdir()) == []


def test_a_local_write_is_on_disk_before_it_counts(
    local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        events.append((f"fsync {kind}", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: str, target: str) -> None:
        events.append(("rename", target))
        real_replace(source, target)

    monkeypatch.setattr("radlake.storage.store.os.fsync", fsync)
    monkeypatch.setattr("radlake.storage.store.os.replace", replace)
    local_store.put_bytes(derived_key("cd" * 32, "preview", "png"), PAYLOAD)
    assert [kind for kind, _ in events].count("fsync folder") == 3  # derived/ was new too
    events.clear()
    key = derived_key(SHA, "preview", "png")  # a new folder derived/<sha>/ as well
    local_store.put_bytes(key, PAYLOAD)

    target = str(Path(local_store.root, key))
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync file", "rename", "fsync folder", "fsync folder"]
    assert events[0][1].startswith(str(Path(local_store.root, "tmp")))  # before the rename
    assert events[1][1] == target
    assert events[2][1] == str(Path(target).parent)  # the rename itself
    assert events[3][1] == str(Path(local_store.root, "derived"))  # the new folder's entry

    events.clear()
    local_store.put_bytes(key, PAYLOAD)  # an existing folder: file and folder only
    assert [kind for kind, _ in events] == ["fsync file", "rename", "fsync folder"]


def test_retry_seconds_travel_with_a_pickled_store(tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri(), retry_seconds=4.5)
    copy = pickle.loads(pickle.dumps(store))  # noqa: S301 (our own bytes)
    assert copy.retry_seconds == 4.5
    with pytest.raises(StorageError, match="retry_seconds"):
        open_store((tmp_path / "store").as_uri(), retry_seconds=-1)


# --- the proxy itself: generic TCP, clean shutdown ------------------------------------


def test_the_proxy_carries_and_cuts_the_postgresql_wire_protocol(
    fault_proxy: ProxyFactory,
) -> None:
    psycopg = pytest.importorskip("psycopg")
    server = make_url(POSTGRES_URL)
    proxy = fault_proxy((server.host or "127.0.0.1", server.port or 5432))
    url = server.set(drivername="postgresql", host=proxy.host, port=proxy.port)
    dsn = url.render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(dsn, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL behind {POSTGRES_URL} is not reachable ({exc})")
    with connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
        proxy.set_mode("reset")  # a pooled connection is cut too
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 2")
    modes: list[Mode] = ["refuse", "reset", "stall"]
    for mode in modes:
        proxy.set_mode(mode)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=1).close()
    proxy.outage(0.5).join()
    with psycopg.connect(dsn, connect_timeout=3) as connection:
        assert connection.execute("SELECT 3").fetchone() == (3,)
    assert {"pass", "refuse", "reset", "stall"} <= set(proxy.counts)


def test_the_proxy_leaves_no_thread_and_no_socket_behind(s3_endpoint: str) -> None:
    address = urlsplit(s3_endpoint)
    assert address.hostname is not None and address.port is not None
    threads = set(threading.enumerate())
    clients: list[socket.socket] = []
    modes: list[Mode] = ["pass", "stall", "reset", "refuse"]
    with FaultProxy((address.hostname, address.port)) as proxy:
        for mode in modes:
            proxy.set_mode(mode)
            client = socket.create_connection(proxy.address, timeout=2)
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        proxy.outage(30.0, mode="stall")  # closing the proxy cancels its timer
    for client in clients:
        client.close()
    assert set(threading.enumerate()) - threads == set()  # the loop and timer threads ended
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=1).close()
