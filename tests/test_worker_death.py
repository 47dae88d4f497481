"""A worker that dies under an input (killed like the OOM killer does, or stopped by
the per-input time limit) costs that input a quarantine row, and the job goes on
with a fresh worker (issue 7)."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from radlake.domain import CataloguedInput, RejectedInput
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import InputFile
from radlake.pipelines.executor import LocalProcessExecutor
from radlake.pipelines.worker import WorkerContext, crashed_input, process_input
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file

GOOD = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "liver_1frame.dcm"]


def holders(fifo: Path) -> set[int]:
    """Other processes that have the FIFO open (a worker blocked reading it); never
    this one, which holds it open for writing."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if str(fifo) in links:
            pids.add(int(entry.name))
    return pids


def _run(fifo: Path, tmp_path: Path, item_seconds: float) -> dict[str, object]:
    """Ingest the good files and the FIFO through real worker processes; returns
    outcomes by file name. The test holds the FIFO open for writing and never writes,
    so a worker opens it and then blocks mid-read, as on a file that never ends."""
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        return _outcomes(fifo, tmp_path, item_seconds)
    finally:
        os.close(writer)


def _outcomes(fifo: Path, tmp_path: Path, item_seconds: float) -> dict[str, object]:
    context = WorkerContext(open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    items = [InputFile.at(str(fifo))] + [InputFile.at(str(pydicom_file(n))) for n in GOOD]
    executor = LocalProcessExecutor(2, chunk_size=2, item_seconds=item_seconds)
    outcomes = executor.map_unordered(
        functools.partial(process_input, context), items, on_crash=crashed_input
    )
    return {Path(o.source_key).name: o for o in outcomes}


def test_a_worker_killed_mid_file_quarantines_that_input_only(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.dcm"
    os.mkfifo(fifo)
    stop = threading.Event()
    kills: list[int] = []

    def oom_killer() -> None:
        # What the kernel does to a worker that allocates too much: SIGKILL.
        while not stop.is_set():
            for pid in holders(fifo):
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=oom_killer)
    killer.start()
    try:
        outcomes = _run(fifo, tmp_path, item_seconds=120)
    finally:
        stop.set()
        killer.join()

    assert len(kills) >= 2  # killed in the pool, and again when run alone
    assert set(outcomes) == {"stuck.dcm", *GOOD}
    stuck = outcomes["stuck.dcm"]
    assert isinstance(stuck, RejectedInput)
    assert stuck.reason.startswith("the worker process died while reading it")
    assert all(isinstance(outcomes[name], CataloguedInput) for name in GOOD)


def test_an_input_past_the_time_limit_is_stopped_and_quarantined(tmp_path: Path) -> None:
    fifo = tmp_path / "never-ends.dcm"
    os.mkfifo(fifo)
    started = time.monotonic()

    outcomes = _run(fifo, tmp_path, item_seconds=1)

    stuck = outcomes["never-ends.dcm"]
    assert isinstance(stuck, RejectedInput)
    assert stuck.reason.startswith("took longer than the 1 s limit for one input")
    assert all(isinstance(outcomes[name], CataloguedInput) for name in GOOD)
    assert time.monotonic() - started < 60


def test_without_on_crash_a_dead_worker_is_an_error(tmp_path: Path) -> None:
    from concurrent.futures.process import BrokenProcessPool

    executor = LocalProcessExecutor(1, item_seconds=1)
    with pytest.raises(BrokenProcessPool):
        list(executor.map_unordered(time.sleep, [5]))
