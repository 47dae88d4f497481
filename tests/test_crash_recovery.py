"""kill -9 in the middle of an ingest, then the same command again: nothing lost,
nothing duplicated (issue: foundation, part 6)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import shared

EXPECTED = 600


def radlake(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: kill -9 reaches the workers too
    )


def image_count(database: Path) -> int:
    with sqlite3.connect(database, timeout=30) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM image").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


@pytest.mark.slow
def test_kill_9_mid_ingest_then_rerun_completes_exactly(tmp_path: Path) -> None:
    source = shared("dicom_dcm_qa_nih_ge_siemens_mr", "data", "In", "20180918GE")
    inputs = tmp_path / "inputs"
    for path in source.rglob("*.dcm"):
        target = inputs / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    home = tmp_path / "home"
    with radlake(home, "init") as init:
        init.communicate(timeout=120)
    assert init.returncode == 0
    database = home / "catalog.sqlite"

    first = radlake(home, "ingest", str(inputs), "--workers", "2", "--json")
    deadline = time.monotonic() + 120
    while image_count(database) == 0 and time.monotonic() < deadline:
        assert first.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    committed = image_count(database)
    assert 0 < committed < EXPECTED, f"kill landed at {committed} of {EXPECTED} rows"

    with radlake(home, "ingest", str(inputs), "--workers", "2", "--json") as second:
        out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["inputs"] == EXPECTED
    assert summary["quarantined"] == 0
    assert summary["already_present"] == committed
    assert summary["catalogued"] == EXPECTED - committed

    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT sha256, original_key FROM image").fetchall()
        previews = connection.execute(
            "SELECT count(*) FROM rendition WHERE name = 'preview'"
        ).fetchone()[0]
        statuses = [s for (s,) in connection.execute("SELECT status FROM job ORDER BY id")]
    assert len(rows) == EXPECTED
    assert len({sha for sha, _ in rows}) == EXPECTED
    assert previews == EXPECTED
    store = home / "store"
    # No half object under a real key: every original hashes to the name it is stored
    # under. (A write cut by the kill may leave a file under tmp/, never listed.)
    for sha, key in rows:
        assert hashlib.sha256((store / key).read_bytes()).hexdigest() == sha
    # The killed job is recognised as interrupted; the re-run succeeded.
    assert statuses == ["interrupted", "succeeded"]
