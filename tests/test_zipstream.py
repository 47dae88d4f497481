"""Streamed zip archives: round trips through zipfile (and Info-ZIP unzip), laziness,
flat memory over 200 MB, reproducible bytes, refused names, failing reads."""

from __future__ import annotations

import functools
import io
import random
import shutil
import stat
import subprocess
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from radlake.api.zipstream import ZipEntry, ZipNameError, stream_zip
from radlake.errors import RadlakeError
from tests.conftest import pydicom_file

MiB = 1024 * 1024
CHUNK = 64 * 1024


def random_bytes(seed: int, size: int) -> bytes:
    """Incompressible, deterministic content, made only when asked for."""
    return random.Random(seed).randbytes(size)


def tiny_jpeg() -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((32, 32)).save(out, format="JPEG")
    return out.getvalue()


def recording(events: list[str], label: str, data: bytes) -> Callable[[], bytes]:
    def read() -> bytes:
        events.append(f"read {label}")
        return data

    return read


def unzip(chunks: Iterator[bytes]) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(chunks)))


def sample_entries() -> list[ZipEntry]:
    text = b"".join(b"row %d, value %d\n" % (i, i * 7 % 256) for i in range(20_000))
    return [
        ZipEntry("study/series/CT_small.dcm", pydicom_file("CT_small.dcm").read_bytes),
        ZipEntry("study/preview.jpg", tiny_jpeg, compress=False),
        ZipEntry("study/noise.bin", functools.partial(random_bytes, 1, 200_000), compress=False),
        ZipEntry("labels.csv", lambda: text, modified=(2024, 5, 17, 13, 45, 30)),
        ZipEntry("empty.txt", lambda: b""),
        ZipEntry("études/ct scan.dcm", lambda: b"DICM" * 10),
    ]


def test_round_trip_keeps_names_contents_and_compression() -> None:
    entries = sample_entries()
    with unzip(stream_zip(entries)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [entry.name for entry in entries]
        for entry, info in zip(entries, archive.infolist(), strict=True):
            assert archive.read(info) == entry.read()
            expected = zipfile.ZIP_DEFLATED if entry.compress else zipfile.ZIP_STORED
            assert info.compress_type == expected
            assert info.date_time == entry.modified
            assert info.flag_bits & 0x08  # sizes and CRC in a data descriptor (APPNOTE 4.3.9)
            assert info.create_system == 3
            assert stat.S_ISREG(info.external_attr >> 16)
            assert stat.S_IMODE(info.external_attr >> 16) == 0o644
        labels = archive.getinfo("labels.csv")
        assert labels.compress_size < labels.file_size / 3


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip is not installed")
def test_info_zip_unzip_accepts_the_archive(tmp_path: Path) -> None:
    target = tmp_path / "images.zip"
    target.write_bytes(b"".join(stream_zip(sample_entries())))
    result = subprocess.run(["unzip", "-t", str(target)], capture_output=True, check=False)
    assert result.returncode == 0, result.stdout.decode(errors="replace")
    assert b"No errors detected" in result.stdout


def test_first_chunk_leaves_before_the_second_entry_is_read() -> None:
    events: list[str] = []
    contents = [random_bytes(seed, 200_000) for seed in range(4)]

    def entries() -> Iterator[ZipEntry]:
        for number, data in enumerate(contents):
            events.append(f"entry {number}")
            yield ZipEntry(f"{number}.bin", recording(events, str(number), data), compress=False)

    stream = stream_zip(entries())
    assert events == []  # nothing is read until the first chunk is asked for
    chunks = [next(stream)]
    assert events == ["entry 0", "read 0"]
    events.append("chunk")
    for chunk in stream:
        chunks.append(chunk)
        events.append("chunk")
    # Every entry's bytes leave before the next entry is even produced.
    for number in range(1, len(contents)):
        before = events[: events.index(f"entry {number}")]
        assert before[-1] == "chunk"
    assert max(map(len, chunks)) <= CHUNK
    with unzip(iter(chunks)) as archive:
        assert [archive.read(f"{n}.bin") for n in range(len(contents))] == contents


def test_200_mb_stream_in_flat_memory(tmp_path: Path) -> None:
    count, size = 100, 2 * MiB
    # Generated inside read(), so only what the stream itself holds is in memory;
    # every tenth entry is deflated to cover the compressor too.
    entries = (
        ZipEntry(
            f"series/{n:03d}.bin",
            functools.partial(random_bytes, n, size),
            compress=n % 10 == 0,
        )
        for n in range(count)
    )
    target = tmp_path / "images.zip"
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with target.open("wb") as out:
            stream = stream_zip(entries)
            first = next(stream)
            first_chunk_s = time.perf_counter() - started
            out.write(first)
            largest = len(first)
            for chunk in stream:
                largest = max(largest, len(chunk))
                out.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first_chunk_s < 1.0
    assert largest <= CHUNK
    assert peak < 20 * MiB, f"peak {peak / MiB:.1f} MiB"
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None  # every CRC checks out
        infos = archive.infolist()
        assert [info.file_size for info in infos] == [size] * count
        assert [info.compress_type for info in infos[:11:10]] == [zipfile.ZIP_DEFLATED] * 2
        assert infos[1].compress_type == zipfile.ZIP_STORED
        for n in (0, 37, 99):
            assert archive.read(f"series/{n:03d}.bin") == random_bytes(n, size)


def test_the_same_entries_give_the_same_bytes_however_chunked() -> None:
    first = b"".join(stream_zip(sample_entries()))
    again = b"".join(stream_zip(sample_entries()))
    small_chunks = list(stream_zip(sample_entries(), chunk_size=1000))
    assert first == again == b"".join(small_chunks)
    assert max(map(len, small_chunks)) <= 1000


def test_empty_entry_list_gives_a_valid_empty_zip() -> None:
    data = b"".join(stream_zip([]))
    assert data.startswith(b"PK\x05\x06")  # only the end of central directory record
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == []
        assert archive.testzip() is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../Doe^Jane/ct.dcm",
        "study/../../Doe^Jane.dcm",
        "study/..",
        "./study/ct.dcm",
        "study//ct.dcm",
        "study/",
        "study\\ct.dcm",
        "C:/study/ct.dcm",
        "study/ct\x00.dcm",
        "\udcff.dcm",
        "x" * 70_000,
    ],
)
def test_unsafe_names_are_refused_without_echoing_them(name: str) -> None:
    with pytest.raises(ZipNameError) as info:
        ZipEntry(name, lambda: b"")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RadlakeError)
    assert "Doe" not in str(info.value)  # archive paths may carry patient names


@pytest.mark.parametrize("name", ["scan..v2.dcm", "a/b/c.d", "études/ct scan.dcm", ".hidden"])
def test_ordinary_names_are_accepted(name: str) -> None:
    with unzip(stream_zip([ZipEntry(name, lambda: b"x")])) as archive:
        assert archive.namelist() == [name]


def test_a_duplicate_name_is_refused_before_its_read() -> None:
    events: list[str] = []
    entries = [
        ZipEntry("a.bin", recording(events, "a", b"a" * 1000)),
        ZipEntry("b.bin", recording(events, "b", b"b" * 1000)),
        ZipEntry("a.bin", recording(events, "a again", b"c" * 1000)),
    ]
    chunks: list[bytes] = []
    with pytest.raises(ZipNameError, match="entry #3"):
        chunks.extend(stream_zip(entries, chunk_size=16))  # a and b went out
    assert events == ["read a", "read b"]
    assert chunks  # what came before went out; the archive is truncated
    with pytest.raises(zipfile.BadZipFile):
        unzip(iter(chunks))


def test_a_failing_read_propagates_and_truncates_the_archive() -> None:
    def unreachable() -> bytes:
        raise OSError("object store unreachable")

    entries = [ZipEntry("a.bin", lambda: b"a" * 1000), ZipEntry("b.bin", unreachable)]
    chunks: list[bytes] = []
    with pytest.raises(OSError, match="object store unreachable") as info:
        chunks.extend(stream_zip(entries, chunk_size=16))
    assert any("zip entry #2" in note for note in info.value.__notes__)
    assert chunks
    with pytest.raises(zipfile.BadZipFile):
        unzip(iter(chunks))


def test_closing_the_stream_early_reads_nothing_more() -> None:
    events: list[str] = []
    entries = (
        ZipEntry(f"{n}.bin", recording(events, str(n), random_bytes(n, 200_000)), compress=False)
        for n in range(5)
    )
    stream = stream_zip(entries)
    next(stream)
    stream.close()  # the client went away
    assert events == ["read 0"]


def test_chunk_size_is_checked_at_the_call() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        stream_zip([], chunk_size=0)
