"""An object store over fsspec: file://, memory:// and s3:// behave the same.

Writes are atomic, so a crash never leaves a half object under a real key: on a
local folder bytes go to a temporary file under tmp/, are flushed to disk (fsync) and
renamed into place, and the folder is flushed too, so a write counts only once it
would survive a power cut; on S3 a PUT is atomic by itself (a reader sees the old
object or the whole new one), so it is written directly rather than paying for a
server-side copy and delete; memory:// stores whole values.

Faults of the store are retried, then reported as faults, never as bad input (issue
"Ingest that never stops"): every operation retries transient failures with jittered
exponential backoff for `retry_seconds`, then raises StoreUnavailable. Failures that
retrying cannot fix (no such object, an invalid key, a full disk, no permission, a
request the server rejects) raise at once: ObjectNotFound or StorageError.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, TypeVar, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from radlake.errors import ObjectNotFound, StorageError, StoreUnavailable

TMP_PREFIX = "tmp"
STREAM_CHUNK = 4 << 20  # bytes read or copied at a time by open() and put_file()
DEFAULT_RETRY_SECONDS = 30.0
_BACKOFF = wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.2)

# botocore's own timeouts for S3 clients, so a stalled connection fails instead of
# hanging. aiohttp starts the read timeout once a request's body is sent, so it bounds
# the server's silence, not the upload: 20 s leaves room for a server to answer a PUT
# of the largest single part s3fs sends (under 100 MB; larger objects go as 50 MB
# parts). botocore's own retries are off, and so are s3fs's (below): nested, the
# layers multiply (s3fs tries 5 times, botocore 5 times each), and only one layer can
# keep a deadline. (aiohttp still resends an idempotent request once when a pooled
# connection turns out dead, RFC 9112 9.3.1: one cheap extra try.)
S3_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"total_max_attempts": 1},
}
# A server that stops reading mid-upload is not bounded by the read timeout (the body
# never finishes): one PUT attempt gets connect + read timeouts plus its bytes at this
# rate (2 Mbit/s, a slow uplink), then it is cancelled and retried.
MIN_UPLOAD_BYTES_PER_SECOND = 256 * 1024

# errno values that say the request itself cannot succeed: retrying only delays the
# report. ENOSPC/EDQUOT/EROFS: the disk is full or read-only; EACCES/EPERM: no right;
# EINVAL/ENAMETOOLONG/EMSGSIZE/ENOSYS: the store rejects the request (s3fs maps S3's
# 4xx codes onto these); ENOTDIR/EISDIR/EEXIST: a file sits where a folder must go.
_PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EINVAL,
        errno.ENAMETOOLONG,
        errno.EMSGSIZE,
        errno.ENOSYS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
    }
)
# Exceptions no retry fixes: a missing object, no permission, and programming errors.
_PERMANENT_TYPES = (
    FileNotFoundError,
    PermissionError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    TypeError,
    ValueError,
    AttributeError,
    LookupError,
    NotImplementedError,
)
# botocore errors that are configuration, not weather (matched by name: botocore is
# only imported by s3fs, and local stores should not pay for it).
_PERMANENT_BOTOCORE = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "NoRegionError"}
)
# S3 error codes that mean "later", whatever their HTTP status.
_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"}
)

# Their exceptions' text names the endpoint and request; messages show the type only.
_CLIENT_LIBRARIES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3", "s3fs"})

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object without reading it."""

    size: int  # bytes
    modified: float | None  # last write, epoch seconds; None when the store does not say


class ObjectStore:
    """Keys are '/'-separated paths relative to the store's root URL."""

    def __init__(
        self, url: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS, **options: Any
    ) -> None:
        """Open the store at url with fsspec options.

        retry_seconds: how long transient faults are retried before StoreUnavailable
        (0: one try).

        Raises:
            StorageError: the URL's protocol is unknown, or an option is invalid.
        """
        if not retry_seconds >= 0:
            raise StorageError(f"expected retry_seconds >= 0, got {retry_seconds!r}")
        self._s3 = url.startswith("s3://")
        if self._s3:
            # A listing must never make exists()/get() answer from a stale cache: other
            # processes (workers, the API) write to the same bucket.
            options.setdefault("use_listings_cache", False)
            options["config_kwargs"] = {**S3_CONFIG, **options.get("config_kwargs", {})}
        try:
            self.fs, root = fsspec.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"cannot open store {url!r}: {exc}") from exc
        if self._s3:
            # s3fs retries some errors itself (5 tries 0.1-0.8 s apart, then the error):
            # one try, so this store's policy is the only one and its deadline holds.
            self.fs.retries = 1
        self.url = url
        self.retry_seconds = float(retry_seconds)
        self._options = options
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self._run("creating", self.root, lambda: os.makedirs(self.root, exist_ok=True))

    def __reduce__(self) -> tuple[Any, ...]:
        # Stores travel to worker processes by URL and options, never as live clients.
        return (_reopen, (self.url, self._options, self.retry_seconds))

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"expected a relative key without '..', got {key[:120]!r}")
        return f"{self.root}/{key}"

    # --- the retry policy ------------------------------------------------------------

    def _run(self, action: str, key: str, operation: Callable[[], T]) -> T:
        """operation(), retried while it fails transiently for up to retry_seconds.

        FileNotFoundError passes through untouched (each caller knows what "missing"
        means for it); other permanent failures become StorageError at once.
        """
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_delay(self.retry_seconds),
            wait=self._wait,
            retry=retry_if_exception(_is_transient),
            before_sleep=_log_retry(action, key),
        )
        try:
            return retrying(operation)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            tries = exc.last_attempt.attempt_number
            elapsed = time.monotonic() - started
            raise StoreUnavailable(
                f"store unreachable ({action} {key}: {_describe(cause)};"
                f" {tries} {'try' if tries == 1 else 'tries'} in {elapsed:.1f} s)"
            ) from cause
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(f"store error {action} {key}: {_describe(exc)}") from exc

    def _read(self, key: str, operation: Callable[[], T]) -> T:
        """A read of key, retried like every operation; a miss is ObjectNotFound."""
        try:
            return self._run("reading", key, operation)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object under key {key}") from exc

    def _wait(self, state: RetryCallState) -> float:
        # Backoff, but never sleep past the deadline: the last try starts at
        # retry_seconds at the latest, so an outage shorter than that is ridden out.
        remaining = self.retry_seconds - (state.seconds_since_start or 0.0)
        return max(0.0, min(_BACKOFF(state), remaining))

    # --- reads -----------------------------------------------------------------------

    def info(self, key: str) -> ObjectInfo:
        """Size and last-modified time of the object under key (one HEAD or stat).

        Raises:
            ObjectNotFound: nothing is stored under key.
            StoreUnavailable: the store kept failing for retry_seconds.
            StorageError: the store refused the request.
        """
        path = self._path(key)
        return self._read(key, lambda: self._stat(path))

    def _stat(self, path: str) -> ObjectInfo:
        if self._local:
            found = os.stat(path)
            if not stat.S_ISREG(found.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not an object", path)
            return ObjectInfo(found.st_size, found.st_mtime)
        if self._s3:
            # One HEAD: fs.info() follows a 404 with a listing (to find "folders").
            bucket, name, _ = self.fs.split_path(path)
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=name)
            return ObjectInfo(int(head["ContentLength"]), _epoch(head.get("LastModified")))
        details = self.fs.info(path)
        if details.get("type") != "file":
            raise FileNotFoundError(errno.ENOENT, "not an object", path)
        modified = next(
            (details[name] for name in ("mtime", "LastModified", "created") if name in details),
            None,
        )
        return ObjectInfo(int(details["size"]), _epoch(modified))

    def exists(self, key: str) -> bool:
        """True when an object is stored under key.

        Raises:
            StoreUnavailable, StorageError: as info().
        """
        try:
            self.info(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """Size in bytes of the object under key.

        Raises:
            ObjectNotFound, StoreUnavailable, StorageError: as info().
        """
        return self.info(key).size

    def get_bytes(self, key: str) -> bytes:
        """The object under key.

        Raises:
            ObjectNotFound: nothing is stored under key.
            StoreUnavailable: the store kept failing for retry_seconds.
            StorageError: the store refused the request.
        """
        path = self._path(key)
        return self._read(key, lambda: bytes(self.fs.cat_file(path)))

    def open(self, key: str, *, block_size: int = STREAM_CHUNK) -> IO[bytes]:
        """A readable binary file over the object under key, for objects too big to
        hold in memory twice; close it (use `with`). Opening is retried like every
        operation; reads after that are not (a fault mid-read raises from read()).

        Raises:
            ObjectNotFound: nothing is stored under key.
            StoreUnavailable: the store kept failing for retry_seconds.
            StorageError: the store refused the request.
        """
        path = self._path(key)

        def open_object() -> IO[bytes]:
            if self._local:
                try:
                    return open(path, "rb", buffering=block_size)
                except IsADirectoryError:
                    raise FileNotFoundError(errno.ENOENT, "not an object", path) from None
            # One HEAD (or stat) decides "is an object": s3fs would open a folder.
            size = self._stat(path).size
            extra = {"size": size} if self._s3 else {}
            return cast(IO[bytes], self.fs.open(path, "rb", block_size=block_size, **extra))

        return self._read(key, open_object)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under prefix, sorted; temporary objects are not listed.

        Raises:
            StoreUnavailable, StorageError: as get_bytes().
        """
        base = self.root if not prefix else self._path(prefix.rstrip("/"))
        try:
            found = self._run("listing", prefix or "/", lambda: self.fs.find(base))
        except FileNotFoundError:
            return iter(())
        keys = sorted(path[len(self.root) + 1 :] for path in found)
        return iter(key for key in keys if not key.startswith(TMP_PREFIX + "/"))

    def digest(self, key: str, chunk_size: int = 4 << 20) -> tuple[str, int]:
        """sha256 (hex) and size of the object under key, read in chunk_size pieces
        (bounded memory whatever the object's size); the whole read is retried.

        Raises:
            ObjectNotFound: nothing is stored under key.
            StoreUnavailable, StorageError: the store failed.
        """
        path = self._path(key)

        def read() -> tuple[str, int]:
            digest, size = hashlib.sha256(), 0
            with self.fs.open(path, "rb", block_size=chunk_size) as handle:
                while chunk := handle.read(chunk_size):
                    digest.update(chunk)
                    size += len(chunk)
            return digest.hexdigest(), size

        return self._read(key, read)

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Keys under prefix, one at a time in no particular order, never the whole
        listing at once: local folders are walked with os.scandir, S3 is read a page
        (1,000 keys) at a time, each page retried; other stores use list().

        Raises:
            StoreUnavailable, StorageError: the store failed.
        """
        base = self._path(prefix)
        if self._local:
            try:
                yield from _walk_local(base, prefix)
            except OSError as exc:
                raise StorageError(f"store error listing {prefix}/: {_describe(exc)}") from exc
        elif self._s3:
            yield from self._page_s3(base, prefix)
        else:
            yield from self.list(prefix)

    def _page_s3(self, base: str, prefix: str) -> Iterator[str]:
        bucket, path, _ = self.fs.split_path(base)
        request = {"Bucket": bucket, "Prefix": f"{path}/"}
        while True:
            page = self._run(
                "listing", prefix, lambda: self.fs.call_s3("list_objects_v2", **request)
            )
            for item in page.get("Contents", ()):
                if not item["Key"].endswith("/"):
                    yield f"{bucket}/{item['Key']}"[len(self.root) + 1 :]
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    # --- writes ----------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, sync: bool = True) -> None:
        """Store data under key atomically (replacing any object there); on a local
        folder the bytes and the rename are on disk (fsync) when this returns, unless
        sync=False: then a later sync() makes them durable (ingest writes hundreds of
        objects per catalog batch and syncs once before the batch commits).

        Raises:
            StoreUnavailable: the store kept failing for retry_seconds.
            StorageError: the store refused the write (disk full, no permission, ...).
        """
        target = self._path(key)

        def write() -> None:
            if self._local:
                self._put_local(target, data, sync)
            elif self._s3:
                self.fs.pipe_file(target, data, timeout=self._s3_attempt_seconds(len(data)))
            else:
                self.fs.pipe_file(target, data)

        try:
            self._run("writing", key, write)
        except FileNotFoundError as exc:  # S3: no such bucket
            raise StorageError(f"store error writing {key}: {_describe(exc)}") from exc

    def put_file(self, key: str, local_path: str | os.PathLike[str], *, sync: bool = True) -> None:
        """Store the local file's bytes under key, streamed (never whole in memory),
        atomic and durable as put_bytes(): a local folder copies into tmp/, fsyncs and
        renames; S3 uploads through s3fs, in 50 MB multipart parts beyond one part (a
        multipart object appears only when its upload completes); memory:// stores
        the whole value on close. The whole upload is retried.

        Raises:
            FileNotFoundError, OSError: local_path cannot be read (the caller's file).
            StoreUnavailable, StorageError: as put_bytes().
        """
        source = os.fspath(local_path)
        size = os.stat(source).st_size  # the caller's own fault, before the store's policy
        target = self._path(key)

        def copy(handle: IO[bytes]) -> None:
            with open(source, "rb") as reader:
                shutil.copyfileobj(reader, handle, STREAM_CHUNK)

        def write() -> None:
            if self._local:
                self._put_local_with(target, copy, sync)
            elif self._s3:
                self.fs.put_file(source, target, timeout=self._s3_attempt_seconds(size))
            else:
                self.fs.put_file(source, target)

        try:
            self._run("writing", key, write)
        except FileNotFoundError as exc:  # S3: no such bucket; local: the file went away
            raise StorageError(f"store error writing {key}: {_describe(exc)}") from exc

    def _s3_attempt_seconds(self, size: int) -> float:
        # fsspec's sync(timeout=...) cancels the attempt (see MIN_UPLOAD_BYTES_PER_SECOND).
        config = self._options["config_kwargs"]
        base = float(config.get("connect_timeout", 60)) + float(config.get("read_timeout", 60))
        return base + size / MIN_UPLOAD_BYTES_PER_SECOND

    def put_if_absent(self, key: str, data: bytes, *, sync: bool = True) -> bool:
        """Store data unless an object of exactly len(data) bytes is under key
        (content-addressed keys: same key, same bytes); True when written.

        One size lookup, no read: a missing object or one of another size (a truncated
        original) is rewritten.

        Raises:
            StoreUnavailable, StorageError: as put_bytes().
        """
        try:
            if self.info(key).size == len(data):
                return False
        except ObjectNotFound:
            pass
        self.put_bytes(key, data, sync=sync)
        return True

    def sync(self) -> None:
        """Make every write so far durable (local folders: one syncfs of the file
        system; S3 and memory: nothing to do, a PUT is durable when it returns).

        Raises:
            StorageError: the file system reported an error writing back.
        """
        if not self._local:
            return
        self._run("syncing", "/", lambda: _sync_file_system(self.root))

    def _put_local(self, target: str, data: bytes, sync: bool = True) -> None:
        self._put_local_with(target, lambda handle: handle.write(data), sync)

    def _put_local_with(
        self, target: str, write: Callable[[IO[bytes]], object], sync: bool
    ) -> None:
        # Plain os calls: on the ingest hot path fsspec's wrappers cost ~0.2 ms a write.
        temporary = f"{self.root}/{TMP_PREFIX}/{uuid.uuid4().hex}"
        created = _make_folders(os.path.dirname(target))
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(temporary), exist_ok=True)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                write(handle)
                if sync:
                    handle.flush()
                    os.fsync(handle.fileno())  # the bytes are on disk before the name
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        if not sync:
            return
        # The rename (and any folder it needed) is on disk only once its folder is.
        _fsync_folder(os.path.dirname(target))
        for folder in created:
            _fsync_folder(folder)

    def delete(self, key: str) -> None:
        """Remove the object under key (no error when absent).

        Raises:
            StoreUnavailable, StorageError: as put_bytes().
        """
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            self._run("deleting", key, lambda: self.fs.rm_file(path))

    def remove_stale_temporary(self, max_age_seconds: float = 3600.0) -> int:
        """Delete temporary files a killed writer left behind (local stores only);
        returns how many. Only old ones: a live writer's file is never touched."""
        if not self._local:
            return 0
        folder = f"{self.root}/{TMP_PREFIX}"
        removed = 0
        cutoff = time.time() - max_age_seconds
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: everything but the permanent failures above."""
    if not isinstance(exc, Exception) or isinstance(exc, _PERMANENT_TYPES):
        return False
    status = _http_status(exc) or _http_status(exc.__cause__)
    if status is not None:
        code, number = status
        return number >= 500 or number in (408, 429) or code in _THROTTLE_CODES
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    return type(exc).__name__ not in _PERMANENT_BOTOCORE


def _http_status(exc: BaseException | None) -> tuple[str, int] | None:
    """(error code, HTTP status) of a botocore ClientError, None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    number = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if not isinstance(number, int):
        return None
    return str(response.get("Error", {}).get("Code", "")), number


def _describe(exc: BaseException | None) -> str:
    """A short one-line cause: the exception's type and what it says, except that
    client-library errors give their type only (their text carries the request URL)."""
    if exc is None:
        return "unknown error"
    name = type(exc).__name__
    status = _http_status(exc) or _http_status(exc.__cause__)
    if status is not None:
        detail = f"HTTP {status[1]} {status[0]}"
    elif isinstance(exc, OSError) and exc.strerror:
        detail = str(exc.strerror)
    elif type(exc).__module__.partition(".")[0] in _CLIENT_LIBRARIES:
        return name
    else:
        detail = str(exc)
    return " ".join(f"{name}: {detail}".split())[:160] if detail.strip() else name


def _log_retry(action: str, key: str) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.info(
            "store fault %s %s (try %d): %s; retrying",
            action,
            key,
            state.attempt_number,
            _describe(error),
        )

    return log


def _make_folders(folder: str) -> list[str]:
    """Create folder and its missing parents; returns the parents whose entries changed
    (they need an fsync for the new folders to survive a crash)."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        return []
    except FileNotFoundError:
        parents = _make_folders(os.path.dirname(folder))
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        return [*parents, os.path.dirname(folder)]
    return [os.path.dirname(folder)]


def _sync_file_system(path: str) -> None:
    """syncfs(2) of the file system holding path (Linux); sync(2) elsewhere."""
    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(descriptor)


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _epoch(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def _reopen(url: str, options: dict[str, Any], retry_seconds: float) -> ObjectStore:
    return ObjectStore(url, retry_seconds=retry_seconds, **options)


def open_store(url: str, **options: Any) -> ObjectStore:
    """Open the store at url (file path or URL) with fsspec options, plus
    retry_seconds= (how long transient faults are retried, default 30 s).

    Raises:
        StorageError: the URL's protocol is unknown, or an option is invalid.
    """
    return ObjectStore(url, **options)


def _walk_local(folder: str, prefix: str) -> Iterator[str]:
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            key = f"{prefix}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_local(entry.path, key)
            else:
                yield key
