"""The object store: one suite run against file://, memory:// and s3:// (a real moto
server), plus the local backend's atomic writes and the store's key layout."""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid
from pathlib import Path

import pytest

from radlake.errors import ObjectNotFound, StorageError
from radlake.storage.keys import derived_key, preview_key, quarantine_key, raw_key
from radlake.storage.store import ObjectStore, open_store
from tests.conftest import pydicom_file

CT_BYTES = pydicom_file("CT_small.dcm").read_bytes()
MR_BYTES = pydicom_file("MR_small.dcm").read_bytes()
CT_SHA = hashlib.sha256(CT_BYTES).hexdigest()
MR_SHA = hashlib.sha256(MR_BYTES).hexdigest()

BAD_KEYS = [
    "",
    "/raw/ab/x.dcm",
    "../escape",
    "raw/../../escape",
    "raw/..",
    "raw//x.dcm",
    "raw/x.dcm/",
    "raw/./x.dcm",
    ".",
]


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    # Short retries: the failure tests below inject faults that never heal.
    return open_store((tmp_path / "store").as_uri(), retry_seconds=0.5)


def _temporary_files(store: ObjectStore) -> list[Path]:
    folder = Path(store.root) / "tmp"
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


# --- the shared suite: every backend behaves the same --------------------------------


def test_put_then_get_returns_the_same_bytes(store: ObjectStore) -> None:
    key = raw_key(CT_SHA, "dcm")
    assert not store.exists(key)
    store.put_bytes(key, CT_BYTES)
    assert store.exists(key)
    assert store.get_bytes(key) == CT_BYTES
    assert store.size(key) == len(CT_BYTES)


def test_an_empty_object_round_trips(store: ObjectStore) -> None:
    store.put_bytes("empty/object", b"")
    assert store.exists("empty/object")
    assert store.get_bytes("empty/object") == b""
    assert store.size("empty/object") == 0


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    key = derived_key(CT_SHA, "preview", "png")
    store.put_bytes(key, CT_BYTES)
    store.put_bytes(key, MR_BYTES)
    assert store.get_bytes(key) == MR_BYTES
    assert store.size(key) == len(MR_BYTES)
    assert list(store.list()) == [key]


def test_put_if_absent_writes_once_and_keeps_the_first_content(store: ObjectStore) -> None:
    key = raw_key(CT_SHA, "dcm")
    assert store.put_if_absent(key, CT_BYTES) is True
    assert store.put_if_absent(key, CT_BYTES) is False
    # One size lookup, no read: an object of the same size counts as already there.
    assert store.put_if_absent(key, CT_BYTES[::-1]) is False
    assert store.get_bytes(key) == CT_BYTES
    # Another size is a damaged object (keys are content-addressed): it is rewritten.
    assert store.put_if_absent(key, MR_BYTES) is True
    assert store.get_bytes(key) == MR_BYTES


def test_delete_removes_the_object_and_tolerates_absent_keys(store: ObjectStore) -> None:
    key = raw_key(CT_SHA, "dcm")
    other = raw_key(MR_SHA, "dcm")
    store.put_bytes(key, CT_BYTES)
    store.put_bytes(other, MR_BYTES)
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound):
        store.get_bytes(key)
    assert store.get_bytes(other) == MR_BYTES  # a neighbour is untouched
    store.delete(key)  # already gone
    store.delete("never/written")


def test_a_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    key = raw_key(CT_SHA, "dcm")
    with pytest.raises(ObjectNotFound, match="no object under key"):
        store.get_bytes(key)
    # Callers may catch it as the built-in too (or as any store failure).
    with pytest.raises(FileNotFoundError):
        store.get_bytes(key)
    with pytest.raises(StorageError):
        store.get_bytes(key)
    with pytest.raises(ObjectNotFound):
        store.size(key)
    assert not store.exists(key)


def test_list_is_sorted_scoped_to_a_prefix_and_hides_temporary_objects(
    store: ObjectStore,
) -> None:
    keys = [
        raw_key(MR_SHA, "dcm"),
        quarantine_key(MR_SHA),
        derived_key(CT_SHA, "preview", "png"),
        raw_key(CT_SHA, "dcm"),
        "rawish/not-under-raw",
    ]
    for key in keys:
        store.put_bytes(key, b"x")
    # What a crashed writer leaves behind: an object under tmp/.
    store.fs.pipe_file(f"{store.root}/tmp/{uuid.uuid4().hex}", b"half")
    store.put_bytes("tmp/also-hidden", b"x")

    assert list(store.list()) == sorted(keys)
    raw = sorted([raw_key(MR_SHA, "dcm"), raw_key(CT_SHA, "dcm")])
    assert list(store.list("raw")) == raw
    assert list(store.list("raw/")) == raw
    assert list(store.list(f"derived/{CT_SHA}")) == [derived_key(CT_SHA, "preview", "png")]
    assert list(store.list("tmp")) == []
    assert list(store.list("nothing/here")) == []

    store.delete(raw_key(CT_SHA, "dcm"))
    assert list(store.list("raw")) == [raw_key(MR_SHA, "dcm")]


def test_an_empty_store_lists_nothing(store: ObjectStore) -> None:
    assert list(store.list()) == []


def test_unsafe_keys_are_refused_before_touching_the_store(
    store: ObjectStore, tmp_path: Path
) -> None:
    for key in BAD_KEYS:
        with pytest.raises(StorageError, match="expected a relative key"):
            store.put_bytes(key, b"x")
        with pytest.raises(StorageError):
            store.put_if_absent(key, b"x")
        with pytest.raises(StorageError):
            store.get_bytes(key)
        with pytest.raises(StorageError):
            store.exists(key)
        with pytest.raises(StorageError):
            store.size(key)
        with pytest.raises(StorageError):
            store.delete(key)
    for prefix in ("../", "/raw", "raw//x", "raw/../.."):
        with pytest.raises(StorageError):
            store.list(prefix)
    assert list(store.list()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) in ([], ["store"])


def test_a_pickled_store_reaches_the_same_objects(store: ObjectStore) -> None:
    # Worker processes receive the store pickled: by URL and options, not a live client.
    store.put_bytes(raw_key(CT_SHA, "dcm"), CT_BYTES)
    copy = pickle.loads(pickle.dumps(store))  # noqa: S301 (our own bytes)
    assert isinstance(copy, ObjectStore)
    assert copy.url == store.url
    assert copy.get_bytes(raw_key(CT_SHA, "dcm")) == CT_BYTES
    copy.put_bytes(raw_key(MR_SHA, "dcm"), MR_BYTES)
    assert store.get_bytes(raw_key(MR_SHA, "dcm")) == MR_BYTES


def test_objects_written_and_deleted_by_another_client_are_seen_after_a_listing(
    store: ObjectStore,
) -> None:
    # A second client on the same store, as worker processes and the API have; on S3 a
    # listing must not leave a cache that answers exists/size/get with stale results.
    other = open_store(store.url, skip_instance_cache=True, **store._options)
    store.put_bytes("raw/aa/first", b"1")
    assert list(store.list()) == ["raw/aa/first"]
    other.put_bytes("raw/aa/second", b"22")
    other.delete("raw/aa/first")

    assert store.get_bytes("raw/aa/second") == b"22"
    assert store.size("raw/aa/second") == 2
    assert store.exists("raw/aa/second")
    assert not store.exists("raw/aa/first")
    # put_if_absent must not skip a key that is gone: nothing would ever rewrite it.
    assert store.put_if_absent("raw/aa/first", b"1") is True
    assert other.get_bytes("raw/aa/first") == b"1"


def test_an_unknown_protocol_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot open store"):
        open_store("nosuchprotocol://bucket/lake")


# --- atomic writes on a local folder ---------------------------------------------------


def test_a_local_put_leaves_no_temporary_file(local_store: ObjectStore) -> None:
    local_store.put_bytes(raw_key(CT_SHA, "dcm"), CT_BYTES)
    local_store.put_bytes(raw_key(CT_SHA, "dcm"), MR_BYTES)
    assert local_store.put_if_absent(raw_key(MR_SHA, "dcm"), MR_BYTES)
    assert _temporary_files(local_store) == []
    stored = Path(local_store.root, raw_key(CT_SHA, "dcm"))
    assert stored.read_bytes() == MR_BYTES


def test_a_failed_rename_leaves_neither_the_key_nor_a_temporary_file(
    local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_move(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("radlake.storage.store.os.replace", fail_move)
    key = raw_key(CT_SHA, "dcm")
    with pytest.raises(StorageError, match="store error writing"):
        local_store.put_bytes(key, CT_BYTES)
    with pytest.raises(StorageError):
        local_store.put_if_absent(key, CT_BYTES)
    assert not local_store.exists(key)
    assert not Path(local_store.root, key).exists()
    assert _temporary_files(local_store) == []
    assert list(local_store.list()) == []


def test_a_write_that_fails_midway_keeps_the_previous_object(
    local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = derived_key(CT_SHA, "preview", "png")
    local_store.put_bytes(key, CT_BYTES)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, descriptor: int, mode: str) -> None:
            self.handle = real_fdopen(descriptor, mode)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, value: bytes) -> None:
            self.handle.write(value[: len(value) // 2])
            raise OSError(5, "Input/output error")

    monkeypatch.setattr("radlake.storage.store.os.fdopen", HalfWriter)
    with pytest.raises(StorageError):
        local_store.put_bytes(key, MR_BYTES)
    monkeypatch.undo()
    assert local_store.get_bytes(key) == CT_BYTES
    assert _temporary_files(local_store) == []


# --- streaming reads and writes: open() and put_file() -------------------------------

BIG = os.urandom(5 << 20) + CT_BYTES  # more than one 4 MB chunk, not a multiple of it


def test_put_file_then_open_streams_the_same_bytes(store: ObjectStore, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(BIG)
    key = raw_key(CT_SHA, "dcm")
    store.put_file(key, local)
    assert store.size(key) == len(BIG)
    with store.open(key) as handle:
        head = handle.read(1000)
        rest = handle.read()
    assert head + rest == BIG
    assert store.digest(key) == (hashlib.sha256(BIG).hexdigest(), len(BIG))


def test_put_file_replaces_an_object_and_handles_empty_files(
    store: ObjectStore, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_bytes(b"")
    store.put_bytes("a/b", CT_BYTES)
    store.put_file("a/b", tmp_path / "empty")
    with store.open("a/b") as handle:
        assert handle.read() == b""
    assert list(store.list()) == ["a/b"]


def test_open_of_a_missing_key_or_a_folder_is_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="no object under key"):
        store.open("raw/missing")
    store.put_bytes("folder/inside", b"x")
    with pytest.raises(ObjectNotFound):
        store.open("folder")


def test_put_file_of_a_missing_local_file_is_the_callers_error(
    store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("a/b", tmp_path / "absent")
    assert not store.exists("a/b")


def test_streaming_refuses_unsafe_keys(store: ObjectStore, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match="relative key"):
        store.open("../escape")
    with pytest.raises(StorageError, match="relative key"):
        store.put_file("raw/../../escape", tmp_path / "f")


def test_a_local_put_file_leaves_no_temporary_file(
    local_store: ObjectStore, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(BIG)
    local_store.put_file("raw/x", tmp_path / "f")
    assert _temporary_files(local_store) == []
    assert (Path(local_store.root) / "raw" / "x").read_bytes() == BIG


def test_a_put_file_that_fails_midway_keeps_the_previous_object(
    local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(BIG)
    local_store.put_bytes("raw/x", CT_BYTES)

    def broken_copy(source: object, target: object, length: int = 0) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("radlake.storage.store.shutil.copyfileobj", broken_copy)
    with pytest.raises(StorageError, match="No space left"):
        local_store.put_file("raw/x", tmp_path / "f")
    assert local_store.get_bytes("raw/x") == CT_BYTES
    assert _temporary_files(local_store) == []


# --- key layout ----------------------------------------------------------------------


def test_key_layout() -> None:
    assert raw_key(CT_SHA, "dcm") == f"raw/{CT_SHA[:2]}/{CT_SHA}.dcm"
    assert raw_key(MR_SHA, "nii.gz") == f"raw/{MR_SHA[:2]}/{MR_SHA}.nii.gz"
    assert derived_key(CT_SHA, "preview", "png") == f"derived/{CT_SHA}/preview.png"
    assert derived_key(CT_SHA, "slice_0.axial-3", "jpg") == (
        f"derived/{CT_SHA}/slice_0.axial-3.jpg"
    )
    assert quarantine_key(CT_SHA) == f"quarantine/{CT_SHA[:2]}/{CT_SHA}"
    assert preview_key(CT_SHA) == f"derived/{CT_SHA}/preview.png"
    assert preview_key(CT_SHA, "jpeg") == f"derived/{CT_SHA}/preview.jpg"
    with pytest.raises(ValueError, match="png or jpeg"):
        preview_key(CT_SHA, "gif")


def test_keys_refuse_anything_but_a_lowercase_hex_sha256() -> None:
    bad = ["", CT_SHA.upper(), CT_SHA[:-1], CT_SHA + "0", "g" * 64, f"../{CT_SHA[3:]}"]
    for sha in bad:
        with pytest.raises(ValueError, match="sha256"):
            raw_key(sha, "dcm")
        with pytest.raises(ValueError, match="sha256"):
            derived_key(sha, "preview", "png")
        with pytest.raises(ValueError, match="sha256"):
            quarantine_key(sha)


def test_derived_keys_refuse_bad_rendition_names() -> None:
    for rendition in ["", "Preview", "../preview", "a/b", "-preview", ".hidden", "x" * 65]:
        with pytest.raises(ValueError, match="rendition"):
            derived_key(CT_SHA, rendition, "png")
    assert derived_key(CT_SHA, "x" * 64, "png").endswith("/" + "x" * 64 + ".png")


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(local_store: ObjectStore) -> None:
    folder = Path(local_store.root) / "tmp"
    folder.mkdir(exist_ok=True)
    stale, fresh = folder / "killed-writer", folder / "live-writer"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert local_store.remove_stale_temporary(max_age_seconds=3600) == 1
    assert not stale.exists()
    assert fresh.exists()


def test_unsynced_writes_skip_fsync_until_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest writes a batch with sync=False and makes it durable with one sync()
    before the catalog commits; a plain put_bytes is durable on its own."""
    store = open_store((tmp_path / "store").as_uri())
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    store.put_bytes("raw/aa/one", b"x" * 10, sync=False)
    store.put_if_absent("raw/aa/two", b"y" * 10, sync=False)
    assert fsyncs == []
    store.sync()  # syncfs(2): no per-file fsync needed
    assert store.get_bytes("raw/aa/two") == b"y" * 10
    store.put_bytes("raw/aa/three", b"z")
    assert len(fsyncs) >= 2  # the file and its folder
