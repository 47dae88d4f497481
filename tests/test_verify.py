"""`radlake verify`: a damaged lake is reported exactly, repaired, and clean afterwards.

Real DICOM files from pydicom are ingested; then one original is truncated, one
deleted, one has a byte flipped, one preview is deleted and one has bytes flipped,
and an old and a young orphan appear. On SQLite, PostgreSQL and MariaDB with a local
store, and once on S3 (moto).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from radlake.catalog.db import make_engine, session_factory, upgrade
from radlake.catalog.models import Image, Job, Quarantine, Rendition
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.pipelines.verify import (
    ORPHAN_MIN_AGE,
    REINGEST_HINT,
    VerifyReport,
    verify_lake,
)
from radlake.storage.store import ObjectStore, open_store
from tests.conftest import SECRET, pydicom_file, run_radlake, s3_options

FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm")
FILES += ("MR_small_implicit.dcm",)
OLD_ORPHAN = f"raw/00/{'0' * 64}.dcm"
YOUNG_ORPHAN = f"derived/{'f' * 64}/preview.png"
Row = tuple[str, str, str, int | None, bool]  # kind, target, key, image id, repaired


@dataclass(frozen=True)
class Stored:
    """One catalogued input: its row and the bytes as ingested."""

    image_id: int
    sha256: str
    original_key: str
    preview_key: str
    source: Path
    preview: bytes


@dataclass(frozen=True)
class BuiltLake:
    engine: Engine
    store: ObjectStore
    images: dict[str, Stored]  # by file name
    quarantine_key: str


def build(engine: Engine, store: ObjectStore, folder: Path) -> BuiltLake:
    folder.mkdir()
    for name in FILES:
        shutil.copy(pydicom_file(name), folder / name)
    (folder / "noise.dcm").write_bytes(random.Random(7).randbytes(3000))
    summary = ingest(
        [folder],
        engine=engine,
        store=store,
        pseudonymizer=Pseudonymizer(SECRET),
        executor=SerialExecutor(),
    )
    assert (summary.catalogued, summary.quarantined) == (len(FILES), 1)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(Image.id, Image.sha256, Image.original_key, Image.source_key, Rendition.key)
            .join(Rendition, Rendition.image_id == Image.id)
            .order_by(Image.id)
        ).all()
        quarantine_key = session.scalars(select(Quarantine.stored_key)).one()
    images = {
        Path(source).name: Stored(
            id_, sha, original, preview, Path(source), store.get_bytes(preview)
        )
        for id_, sha, original, source, preview in rows
    }
    assert quarantine_key is not None
    return BuiltLake(engine, store, images, quarantine_key)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def damage(lake: BuiltLake) -> set[Row]:
    """Break the lake in every way verify knows; returns the findings expected."""
    store, images = lake.store, lake.images
    truncated, deleted, flipped = (
        images["CT_small.dcm"],
        images["MR_small.dcm"],
        images["MR_small_RLE.dcm"],
    )
    no_preview, bad_preview = images["MR_small_bigendian.dcm"], images["MR_small_implicit.dcm"]
    original = store.get_bytes(truncated.original_key)
    store.put_bytes(truncated.original_key, original[: len(original) // 2])
    store.delete(deleted.original_key)
    original = store.get_bytes(flipped.original_key)
    store.put_bytes(flipped.original_key, flip(original, len(original) - 10))
    store.delete(no_preview.preview_key)
    store.put_bytes(
        bad_preview.preview_key, flip(bad_preview.preview, len(bad_preview.preview) // 2)
    )
    # Not orphans: a rendering the API cached for a catalogued image; tmp/ and exports/.
    store.put_bytes(f"derived/{flipped.sha256}/render-0123456789abcdef.png", no_preview.preview)
    store.put_bytes("exports/ds/1/yolo/data.yaml", b"names: []\n")
    store.put_bytes("tmp/half-written", b"x")
    return {
        ("corrupt", "original", truncated.original_key, truncated.image_id, False),
        ("missing", "original", deleted.original_key, deleted.image_id, False),
        ("corrupt", "original", flipped.original_key, flipped.image_id, False),
        ("missing", "rendition", no_preview.preview_key, no_preview.image_id, False),
        ("corrupt", "rendition", bad_preview.preview_key, bad_preview.image_id, False),
        ("orphan", "object", OLD_ORPHAN, None, False),
        ("recent_orphan", "object", YOUNG_ORPHAN, None, False),
    }


def add_orphans(store: ObjectStore) -> float | None:
    """An orphan older than an hour and a young one; returns the `now` to verify at
    (None on a local folder, whose old orphan gets an mtime two hours back)."""
    store.put_bytes(OLD_ORPHAN, b"left by a killed ingest")
    if store.url.startswith("s3://"):
        # S3 keeps its own LastModified (whole seconds): write the young one later and
        # measure ages from a `now` that puts exactly one of them past the hour.
        time.sleep(1.1)
        store.put_bytes(YOUNG_ORPHAN, b"a live ingest's preview, its row not yet written")
        young = store.info(YOUNG_ORPHAN).modified
        assert young is not None
        return young + ORPHAN_MIN_AGE - 0.5
    two_hours_ago = time.time() - 7200
    os.utime(f"{store.root}/{OLD_ORPHAN}", (two_hours_ago, two_hours_ago))
    store.put_bytes(YOUNG_ORPHAN, b"a live ingest's preview, its row not yet written")
    return None


def rows(report: VerifyReport) -> set[Row]:
    return {(f.kind, f.target, f.key, f.image_id, f.repaired) for f in report.findings}


def rendition_rows(engine: Engine) -> set[tuple[object, ...]]:
    with session_factory(engine)() as session:
        return {
            (r.image_id, r.name, r.key, r.width, r.height, r.window_center, r.window_width)
            for r in session.scalars(select(Rendition))
        }


def job_of(engine: Engine, report: VerifyReport) -> Job:
    with session_factory(engine)() as session:
        return session.get_one(Job, report.job_id)


def check_damage_reported_repaired_and_gone(lake: BuiltLake, now: float | None) -> None:
    engine, store = lake.engine, lake.store
    before = rendition_rows(engine)
    expected = damage(lake)

    found = verify_lake(engine=engine, store=store, now=now)
    assert rows(found) == expected
    assert (found.missing, found.corrupt, found.orphans, found.recent_orphans) == (2, 3, 1, 1)
    assert (found.pointing_nowhere, found.repaired, found.unrepaired) == (0, 0, 5 + 1)
    assert not found.sound
    assert (found.images, found.renditions, found.quarantine_rows) == (5, 5, 1)
    assert found.images_hashed == 3  # the truncated and the missing ones need no hash
    assert found.bytes_hashed == sum(
        lake.images[name].source.stat().st_size
        for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm")
    )
    # 4 originals and 4 previews left, the cached rendering, the quarantined input and
    # the two orphans: tmp/ and exports/ are not listed.
    assert found.objects_listed == 12
    assert store.exists(OLD_ORPHAN)  # reporting changes nothing
    line = found.line()
    assert re.search(
        r"^5 images checked, [\d.]+ [KMG]B hashed at [\d.]+ MB/s: 2 missing, 3 corrupt, "
        r"1 orphan objects, 0 rows pointing nowhere; 0 repaired \(1 recent objects left alone\)",
        line,
    ), line
    job = job_of(engine, found)
    assert (job.kind, job.status, job.error) == ("verify", "succeeded", None)
    assert job.counts["missing"] == 2
    assert job.counts["unrepaired"] == 6
    assert job.parameters == {"repair": False, "sample": None, "seed": 0}

    repaired = verify_lake(engine=engine, store=store, repair=True, now=now)
    assert rows(repaired) == {
        (kind, target, key, image_id, kind != "recent_orphan")
        for kind, target, key, image_id, _ in expected
    }
    assert (repaired.repaired, repaired.unrepaired) == (6, 0)
    assert repaired.sound
    for name, image in lake.images.items():
        assert store.get_bytes(image.original_key) == image.source.read_bytes(), name
        # The same preview the ingest worker made, byte for byte.
        assert store.get_bytes(image.preview_key) == image.preview, name
    assert not store.exists(OLD_ORPHAN)
    assert store.exists(YOUNG_ORPHAN)
    assert store.exists(lake.quarantine_key)
    details = {f.key: f.detail for f in repaired.findings}
    assert details[lake.images["MR_small.dcm"].original_key].endswith(
        "rewritten from its source file"
    )
    assert details[YOUNG_ORPHAN].endswith("left alone")

    again = verify_lake(engine=engine, store=store, now=now)
    assert again.sound
    assert (again.problems, again.recent_orphans) == (0, 1)
    assert again.images_hashed == 5
    assert again.bytes_hashed == sum(i.source.stat().st_size for i in lake.images.values())
    assert rendition_rows(engine) == before  # the same previews: the rows stay as they were


def test_verify_reports_repairs_and_is_clean_after(catalog: Engine, tmp_path: Path) -> None:
    lake = build(catalog, open_store((tmp_path / "store").as_uri()), tmp_path / "inputs")
    now = add_orphans(lake.store)
    check_damage_reported_repaired_and_gone(lake, now)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_verify_on_s3(
    sqlite_engine: Engine, s3_bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    store = open_store(f"s3://{s3_bucket}/lake", **s3_options(s3_endpoint))
    lake = build(sqlite_engine, store, tmp_path / "inputs")
    now = add_orphans(store)
    check_damage_reported_repaired_and_gone(lake, now)


@pytest.fixture
def lake(sqlite_engine: Engine, tmp_path: Path) -> BuiltLake:
    return build(sqlite_engine, open_store((tmp_path / "store").as_uri()), tmp_path / "inputs")


def test_what_cannot_be_repaired_is_said_and_kept(lake: BuiltLake) -> None:
    store, lost = lake.store, lake.images["CT_small.dcm"]
    store.delete(lost.original_key)
    store.delete(lost.preview_key)
    lost.source.unlink()  # nothing left to rewrite it from
    changed = lake.images["MR_small.dcm"]
    store.delete(changed.original_key)
    changed.source.write_bytes(b"other bytes under the same name")
    store.delete(lake.quarantine_key)

    report = verify_lake(engine=lake.engine, store=store, repair=True)
    assert (report.missing, report.pointing_nowhere, report.repaired) == (3, 1, 0)
    assert (report.unrepaired, report.sound) == (4, False)
    details = {f.key: f.detail for f in report.findings}
    for key in (lost.original_key, lost.preview_key, changed.original_key):
        assert details[key].endswith(REINGEST_HINT), details[key]
    assert "its original is missing" in details[lost.preview_key]
    assert "quarantine row" in details[lake.quarantine_key]
    with session_factory(lake.engine)() as session:
        assert session.scalars(select(Quarantine)).one()  # reported, never deleted
    # Findings carry store keys and ids, never source paths.
    assert all(str(lost.source.parent) not in f.line() for f in report.findings)
    assert str(lost.source.parent) not in report.line()


def test_a_sample_rehashes_n_images_chosen_by_the_seed(lake: BuiltLake) -> None:
    by_id = sorted(lake.images.values(), key=lambda image: image.image_id)
    for image in by_id:  # every original corrupt at the same size: only hashing sees it
        data = lake.store.get_bytes(image.original_key)
        lake.store.put_bytes(image.original_key, flip(data, len(data) - 10))

    def corrupt_found(seed: int) -> set[int]:
        report = verify_lake(engine=lake.engine, store=lake.store, sample=2, seed=seed)
        assert (report.images, report.images_hashed) == (5, 2)
        assert "(2 re-hashed: a sample, seed" in report.line()
        return {f.image_id for f in report.findings if f.image_id is not None}

    chosen = {by_id[position].image_id for position in random.Random(3).sample(range(5), 2)}
    assert corrupt_found(3) == chosen
    assert corrupt_found(3) == chosen  # same seed, same images
    everything = verify_lake(engine=lake.engine, store=lake.store, sample=50)
    assert (everything.images_hashed, everything.corrupt) == (5, 5)
    with pytest.raises(ValueError, match="at least 1"):
        verify_lake(engine=lake.engine, store=lake.store, sample=0)


def test_rendering_a_preview_again_checks_an_original_the_sample_skipped(
    lake: BuiltLake,
) -> None:
    by_id = sorted(lake.images.values(), key=lambda image: image.image_id)
    (chosen,) = random.Random(0).sample(range(5), 1)
    skipped = by_id[(chosen + 1) % 5]
    data = lake.store.get_bytes(skipped.original_key)
    lake.store.put_bytes(skipped.original_key, flip(data, len(data) - 10))
    lake.store.delete(skipped.preview_key)

    report = verify_lake(engine=lake.engine, store=lake.store, repair=True, sample=1)
    assert rows(report) == {
        ("missing", "rendition", skipped.preview_key, skipped.image_id, True),
        ("corrupt", "original", skipped.original_key, skipped.image_id, True),
    }
    assert lake.store.get_bytes(skipped.original_key) == skipped.source.read_bytes()
    assert lake.store.get_bytes(skipped.preview_key) == skipped.preview


def test_cli_exit_codes_summary_and_repair(tmp_path: Path) -> None:
    home, inputs = tmp_path / "home", tmp_path / "inputs"
    inputs.mkdir()
    for name in FILES[:2]:
        shutil.copy(pydicom_file(name), inputs / name)
    assert run_radlake(home, "init").returncode == 0
    assert run_radlake(home, "ingest", str(inputs)).returncode == 0
    store = home / "store"
    (preview,) = list(store.glob("derived/*/preview.png"))[:1]
    preview.unlink()
    orphan = store / "quarantine" / "ab" / ("ab" + "1" * 62)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"old")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))

    found = run_radlake(home, "verify")
    assert found.returncode == 1, found.stderr
    lines = found.stdout.splitlines()
    assert re.match(
        r"2 images checked, [\d.]+ [KMG]B hashed at [\d.]+ MB/s: 1 missing, 0 corrupt, "
        r"1 orphan objects, 0 rows pointing nowhere; 0 repaired in [\d.]+ s$",
        lines[0],
    ), found.stdout
    assert sorted(line.split()[0] for line in lines[1:]) == ["missing", "orphan"]
    assert found.stderr == ""  # no progress bar in a pipe
    assert str(inputs) not in found.stdout

    report = json.loads(run_radlake(home, "verify", "--json").stdout)
    assert (report["sound"], report["missing"], report["orphans"]) == (False, 1, 1)

    fixed = run_radlake(home, "verify", "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "; 2 repaired" in fixed.stdout
    assert preview.is_file() and not orphan.exists()
    clean = run_radlake(home, "verify", "--sample", "1")
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.startswith("2 images checked (1 re-hashed: a sample, seed 0)")

    for bad in (["--sample", "0"], ["--sample", "-3"], ["--sample", "x"], ["--seed", "-1"]):
        result = run_radlake(home, "verify", *bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: {bad[0]} expects a whole number"), result.stderr

    missing = run_radlake(tmp_path / "nowhere", "verify")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1
