"""Where a lake's parts live when its home's name has spaces or non-ASCII letters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydicom.data import get_testdata_file

from radlake.config import Settings
from radlake.lake import init_lake
from radlake.storage.keys import raw_key


def test_a_home_named_with_spaces_keeps_its_store_under_that_name(tmp_path: Path) -> None:
    home = tmp_path / "my lake ünï"
    lake, _ = init_lake(Settings(home=home))
    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    key = raw_key("ab" * 32, "dcm")
    lake.store.put_bytes(key, data)
    assert (home / "store" / key).read_bytes() == data
    # fsspec does not unquote file URLs: a percent-encoded URL would make a sibling.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my lake ünï"]


def test_ctrl_c_while_the_cli_starts_is_one_line(tmp_path: Path) -> None:
    # The console script imports the whole CLI first (seconds on a busy machine):
    # Ctrl-C then must not print Python's traceback.
    script = Path(sys.executable).with_name("radlake")
    env = {**os.environ, "RADLAKE_HOME": str(tmp_path / "lake")}
    process = subprocess.Popen(
        [str(script), "query"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(0.4)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"Traceback" not in stderr
    assert len(stderr.decode().strip().splitlines()) <= 1
