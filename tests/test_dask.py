"""The Dask executor keeps every guarantee of the process pool (issue 12, point 5):
on a LocalCluster and on a `dask scheduler` with two `dask worker` processes, a
real corpus with poison inputs ingests to the same catalog rows as the process
pool; a worker killed mid-job (by the test, or by an input) costs only what it was
running, which is retried; an input that kills its worker again, or outlives the
time limit, is quarantined with the pool's reason; an unreachable scheduler is one
error line."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from radlake.catalog.db import make_engine, session_factory, upgrade
from radlake.catalog.models import Image, Job, Quarantine, Rendition
from radlake.domain import CataloguedInput, RejectedInput
from radlake.errors import ConfigError
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import InputFile
from radlake.pipelines.executor import Executor, LocalProcessExecutor, dask_address
from radlake.pipelines.ingest import IngestLimits, ingest
from radlake.pipelines.worker import WorkerContext, crashed_input, process_input
from radlake.storage.store import ObjectStore, open_store
from tests.conftest import SECRET, SHARED_DATA, pydicom_file, s3_options
from tests.test_imaging_limits import _png_claiming
from tests.test_worker_death import holders

pytest.importorskip("distributed", reason="the Dask executor needs radlake[dask]")

from distributed import Client

from radlake.pipelines.dask_executor import DaskExecutor

GOOD_DICOM = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "liver_1frame.dcm"]
# Real chest X-rays of ../shared/data, when it is there (slower to decode: the jobs
# last long enough for a worker to be killed while it is busy).
SHARED_IMAGES = [
    "cxr_ieee8023_lung_boxes_subset/data/images/cavitating-pneumonia-4-day0-PA.jpg",
    "cxr_ieee8023_lung_boxes_subset/data/images/lancet-case2a.jpg",
    "cxr_ieee8023_lung_boxes_subset/data/images/85E52EB3-56E9-4D67-82DA-DEA247C82886.jpeg",
    "cxr_ieee8023_lung_boxes_subset/data/images/1-s2.0-S0929664620300449-gr2_lrg-b.jpg",
    "nifti_dipy_small_dwi/data/small_25.nii.gz",
]
ITEM_SECONDS = 3
CHUNK = 2
LIMITS = IngestLimits(max_decoded_bytes=200 << 20, file_seconds=ITEM_SECONDS)
DASK = Path(sys.executable).parent / "dask"
WORKER_OPTIONS = (
    "--nthreads",
    "1",
    "--host",
    "127.0.0.1",
    "--no-dashboard",
    "--memory-limit",
    "2GiB",
)


# -- corpus --------------------------------------------------------------------------


def _corpus(folder: Path) -> tuple[set[str], set[str]]:
    """Real images and two poison inputs in folder; (good names, poison names)."""
    folder.mkdir(parents=True)
    good = set()
    for name in GOOD_DICOM:
        shutil.copy(pydicom_file(name), folder / name)
        good.add(name)
    for relative in SHARED_IMAGES:
        source = SHARED_DATA / relative
        if source.exists():
            shutil.copy(source, folder / source.name)
            good.add(source.name)
    data = pydicom_file("CT_small.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 3])
    (folder / "bomb.png").write_bytes(_png_claiming(16384))  # 512 MiB decoded > 200 MiB
    return good, {"truncated.dcm", "bomb.png"}


def _catalog_rows(engine: Engine) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Image rows (with renditions) and quarantine rows, keyed by file name, without
    the ids, times and job that differ between two runs."""
    skip = {"id", "source_id", "series_id", "job_id", "created_at"}
    with session_factory(engine)() as session:
        images = []
        for image in session.scalars(select(Image)):
            row = {c.key: getattr(image, c.key) for c in Image.__table__.columns}
            row = {key: value for key, value in row.items() if key not in skip}
            row["source_key"] = Path(image.source_key).name
            row["renditions"] = [
                (r.name, r.key, r.width, r.height, r.window_center, r.window_width)
                for r in session.scalars(select(Rendition).where(Rendition.image_id == image.id))
            ]
            images.append(row)
        quarantined = [
            (Path(q.source_key).name, q.sha256, q.size_bytes, q.reason, q.stored_key)
            for q in session.scalars(select(Quarantine))
        ]
    return sorted(images, key=lambda r: r["source_key"]), sorted(quarantined)


def _fresh_lake(folder: Path) -> tuple[Engine, ObjectStore]:
    folder.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{folder / 'catalog.sqlite'}")
    upgrade(engine)
    return engine, open_store((folder / "store").as_uri())


def _ingest(
    corpus: Path,
    engine: Engine,
    store: ObjectStore,
    executor: Executor,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    summary = ingest(
        [corpus],
        engine=engine,
        store=store,
        pseudonymizer=Pseudonymizer(SECRET),
        executor=executor,
        limits=LIMITS,
        progress=progress,
    )
    assert summary.inputs == summary.catalogued + summary.quarantined


# -- inputs that kill or hang their worker -------------------------------------------


@contextlib.contextmanager
def _saboteur(folder: Path, flaky_bytes: bytes) -> Iterator[list[InputFile]]:
    """Three FIFOs and a thread that plays the OOM killer; yields them as inputs.

    stuck.dcm kills every worker that reads it (SIGKILL, as the OOM killer does);
    never-ends.dcm never ends (only the time limit stops it); flaky.dcm kills the
    first worker that reads it, then gives the next one real DICOM bytes: an innocent
    input on a worker killed for another reason, which must be retried and succeed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = ("stuck.dcm", "never-ends.dcm", "flaky.dcm")
    for name in names:
        os.mkfifo(folder / name)
    # Held open for writing, never written (but flaky's, once): readers block.
    writers = {name: os.open(folder / name, os.O_RDWR | os.O_NONBLOCK) for name in names}
    stop = threading.Event()
    flaky_killed: set[int] = set()

    def kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def play() -> None:
        while not stop.is_set():
            for pid in holders(folder / "stuck.dcm"):
                kill(pid)
            if "flaky.dcm" in writers:
                for pid in holders(folder / "flaky.dcm"):
                    if not flaky_killed:
                        flaky_killed.add(pid)
                        kill(pid)
                    elif pid not in flaky_killed and Path(f"/proc/{pid}").exists():
                        # A live second reader: feed it, then end the file.
                        os.set_blocking(writers["flaky.dcm"], True)
                        os.write(writers["flaky.dcm"], flaky_bytes)
                        os.close(writers.pop("flaky.dcm"))
                        break
            time.sleep(0.05)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        yield [InputFile.at(str(folder / name)) for name in names]
    finally:
        stop.set()
        thread.join()
        for fd in writers.values():
            os.close(fd)
        assert flaky_killed, "flaky.dcm was never read"


def _fifo_outcomes(
    executor: Executor, folder: Path, store: ObjectStore
) -> dict[str, CataloguedInput | RejectedInput]:
    """The good files and the three FIFOs through executor, outcomes by file name
    (source keys reduced to names, so runs in two folders compare equal)."""
    context = WorkerContext(store, Pseudonymizer(SECRET))
    good = [InputFile.at(str(pydicom_file(name))) for name in GOOD_DICOM]
    with _saboteur(folder, pydicom_file("MR_small_RLE.dcm").read_bytes()) as poison:
        outcomes = executor.map_unordered(
            functools.partial(process_input, context), poison + good, on_crash=crashed_input
        )
        return {Path(o.source_key).name: replace(o, source_key="") for o in outcomes}


# -- clusters ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> set[int]:
    """Live child processes of this one."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(os.getpid()) and not fields.get(
            "State", ""
        ).startswith("Z"):
            pids.add(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `dask scheduler` and two single-threaded `dask worker`s (each under its
    nanny) on 127.0.0.1, started with the .venv's dask CLI; stopped at the end."""
    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{_free_port()}"
    # One retry by the scheduler itself (the default is three): the retry path is
    # exercised, and an input that kills its worker costs four deaths, not eight.
    env = os.environ | {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    commands = [
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]],
        *[[str(DASK), "worker", address, *WORKER_OPTIONS, "--name", f"w{i}"] for i in range(2)],
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index, command in enumerate(commands):
            with open(logs / f"{index}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        command, env=env, stdout=log, stderr=log, start_new_session=True
                    )
                )
            if index == 0:
                _wait_for_port(address)
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the nanny's child too
                process.wait(timeout=10)


def _wait_for_port(address: str) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.5):
            return
        time.sleep(0.2)
    pytest.fail(f"dask scheduler did not listen on {address} within 60 s")


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[DaskExecutor]:
    with DaskExecutor(None, workers=2, chunk_size=CHUNK, item_seconds=ITEM_SECONDS) as executor:
        yield executor


@pytest.fixture(params=["local-cluster", "scheduler"])
def dask_executor(request: pytest.FixtureRequest) -> Iterator[DaskExecutor]:
    if request.param == "local-cluster":
        yield request.getfixturevalue("local_cluster")
        return
    address = request.getfixturevalue("scheduler")
    with DaskExecutor(address, chunk_size=CHUNK, item_seconds=ITEM_SECONDS) as executor:
        yield executor


def _pool() -> LocalProcessExecutor:
    return LocalProcessExecutor(2, chunk_size=CHUNK, item_seconds=ITEM_SECONDS)


# -- tests ---------------------------------------------------------------------------


def test_executor_specs() -> None:
    assert dask_address(None) is None
    assert dask_address("local") is None
    assert dask_address("dask-local") == ""
    assert dask_address("dask://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert dask_address("DASK://scheduler.lan:8786/") == "tcp://scheduler.lan:8786"
    for bad in ("dask", "dask://host", "dask://:8786", "dask://h:0", "tcp://h:1", "ray"):
        with pytest.raises(ConfigError, match="expected local, dask-local or dask://HOST:PORT"):
            dask_address(bad)


def test_ingest_on_dask_equals_the_process_pool_with_a_worker_killed_mid_job(
    dask_executor: DaskExecutor, tmp_path: Path
) -> None:
    good, poison = _corpus(tmp_path / "in")
    engine, store = _fresh_lake(tmp_path / "pool")
    _ingest(tmp_path / "in", engine, store, _pool())
    expected = _catalog_rows(engine)

    client = dask_executor.client
    assert client is not None
    deaths_before = _chunk_stats(client)["suspicious"]
    killed: list[int] = []

    def kill_a_busy_worker(done: int, total: int) -> None:
        # Once, early: SIGKILL a worker process that has a chunk (its nanny restarts it).
        if killed:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    engine, store = _fresh_lake(tmp_path / "dask")
    _ingest(tmp_path / "in", engine, store, dask_executor, progress=kill_a_busy_worker)
    images, quarantined = _catalog_rows(engine)

    assert killed, "no worker was busy when the job ran"
    assert (images, quarantined) == expected
    assert {row["source_key"] for row in images} == good
    reasons = {name: reason for name, _sha, _size, reason, _key in quarantined}
    assert set(reasons) == poison
    assert reasons["bomb.png"].startswith("too large to decode safely")
    with session_factory(engine)() as session:
        assert session.scalars(select(Job.status)).all() == ["succeeded"]
    # The killed worker held a chunk (the scheduler counts it "suspicious"), and every
    # input of it was catalogued all the same: retried, by the scheduler (a cluster
    # that allows failures) or item by item (the LocalCluster, which allows none).
    assert _chunk_stats(client)["suspicious"] > deaths_before


def test_inputs_that_kill_or_hang_their_worker_are_quarantined_like_the_pool(
    dask_executor: DaskExecutor, tmp_path: Path
) -> None:
    store = open_store((tmp_path / "store").as_uri())
    expected = _fifo_outcomes(_pool(), tmp_path / "pool", store)
    started = time.monotonic()

    outcomes = _fifo_outcomes(dask_executor, tmp_path / "dask", store)

    # flaky.dcm aside: in the pool, a dying worker breaks the pool, which terminates
    # its other workers too, so the flaky input may be killed twice and quarantined
    # there; on Dask only the worker that read it dies, and its retry succeeds.
    assert {k: v for k, v in outcomes.items() if k != "flaky.dcm"} == {
        k: v for k, v in expected.items() if k != "flaky.dcm"
    }
    stuck, never, flaky = outcomes["stuck.dcm"], outcomes["never-ends.dcm"], outcomes["flaky.dcm"]
    assert isinstance(stuck, RejectedInput)
    assert stuck.reason.startswith("the worker process died while reading it")
    assert isinstance(never, RejectedInput)
    assert never.reason.startswith(f"took longer than the {ITEM_SECONDS} s limit for one input")
    assert isinstance(flaky, CataloguedInput)  # killed once as a bystander, then retried
    assert all(isinstance(outcomes[name], CataloguedInput) for name in GOOD_DICOM)
    assert time.monotonic() - started < 120


def test_a_local_cluster_started_for_one_map_leaves_no_process_behind(tmp_path: Path) -> None:
    before = _children()
    executor = DaskExecutor(None, workers=2, item_seconds=ITEM_SECONDS)
    context = WorkerContext(open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    items = [InputFile.at(str(pydicom_file(name))) for name in GOOD_DICOM]

    outcomes = list(executor.map_unordered(functools.partial(process_input, context), items))

    assert len(outcomes) == len(items)
    assert all(isinstance(o, CataloguedInput) for o in outcomes)
    assert executor.client is None
    deadline = time.monotonic() + 30
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children() - before == set()


def _radlake(
    home: Path, *args: str, executor: str | None, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `radlake` command with only the given RADLAKE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env |= (settings or {}) | {"RADLAKE_HOME": str(home)}
    if executor is not None:
        env["RADLAKE_EXECUTOR"] = executor
    return subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unreachable_scheduler_is_one_error_line(tmp_path: Path) -> None:
    home = tmp_path / "home"  # no lake needed: the executor is checked first
    address = f"dask://127.0.0.1:{_free_port()}"  # nothing listens there

    result = _radlake(home, "ingest", str(pydicom_file("CT_small.dcm")), executor=address)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no Dask scheduler answered at tcp://{address.removeprefix('dask://')} "
        "within 10 s: start one (`dask scheduler`) or choose another executor "
        "(--executor, RADLAKE_EXECUTOR)"
    ]
    bad = _radlake(home, "ingest", "--executor", "ray://x:1", str(tmp_path), executor=None)
    assert bad.returncode == 1 and bad.stderr.startswith("error: unknown executor 'ray://x:1'")


def test_radlake_executor_sends_the_cli_ingest_to_the_scheduler(
    scheduler: str, tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    # Workers write the blobs: the store is S3, which every worker reaches.
    home = tmp_path / "home"
    settings = {
        "RADLAKE_STORE_URL": f"s3://{s3_bucket}/lake",
        "RADLAKE_S3_ENDPOINT_URL": s3_endpoint,
        "RADLAKE_S3_ACCESS_KEY_ID": "testing",
        "RADLAKE_S3_SECRET_ACCESS_KEY": "testing",
        "RADLAKE_S3_REGION": "us-east-1",
        "RADLAKE_MAX_DECODED_MB": "200",  # as LIMITS: the bomb is over budget
    }
    good, _poison = _corpus(tmp_path / "in")
    with Client(scheduler) as client:
        chunks_before = _chunk_stats(client)["run"]
    assert _radlake(home, "init", executor=None, settings=settings).returncode == 0
    result = _radlake(
        home,
        "ingest",
        "--json",
        str(tmp_path / "in"),
        executor=scheduler.replace("tcp://", "dask://"),
        settings=settings,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["catalogued"], summary["quarantined"]) == (len(good), 2)
    with Client(scheduler) as client:
        assert _chunk_stats(client)["run"] > chunks_before
    stored = open_store(f"s3://{s3_bucket}/lake", **s3_options(s3_endpoint))
    assert len(list(stored.list("raw/"))) == len(good)


def _chunk_stats(client: Client) -> dict[str, int]:
    """The scheduler's counts of chunk tasks: run (in any state) and suspicious (in
    the way of a worker's death)."""

    def stats(dask_scheduler: Any) -> dict[str, int]:
        prefix = dask_scheduler.task_prefixes.get("run_chunk")  # key_split drops the "_"
        if prefix is None:
            return {"run": 0, "suspicious": 0}
        return {"run": sum(prefix.state_counts.values()), "suspicious": prefix.suspicious}

    return dict(client.run_on_scheduler(stats))
