"""Prefect flows (issue 12, orchestration) against a real Prefect server: one
`prefect server start` per module (SQLite in a temporary PREFECT_HOME), the flows
run in this process and recorded there, the records read back through its API.

Covered: a folder of real files with a poison file (catalogued and quarantined, the
flow completes); a store outage longer than the store's own retry deadline (the I/O
task fails once, Prefect's task retry succeeds: two attempts on the server); bad
input (fails at once, one attempt); schedules from settings (deployments with their
cron, registered by `radlake flows serve`); every flow (ingest, source load, batch
predict, retrain set) once; the CLI's one-line errors without a server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.states import State
from sqlalchemy import func, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image, Label, Quarantine
from radlake.config import Settings
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version, members
from radlake.errors import ConfigError
from radlake.flows import launch
from radlake.flows.cron import check_cron
from radlake.flows.flows import (
    FLOWS,
    backup_flow,
    batch_predict,
    ingest_folder,
    load_source_flow,
    mart_push,
    retrain_set_flow,
    warehouse_build,
)
from radlake.flows.schedules import deployments
from radlake.inference.errors import ModelNotFound
from radlake.inference.registry import register_version
from radlake.lake import Lake, init_lake, load_settings
from radlake.pipelines.discover import InputPathError
from tests.conftest import ROOT, pydicom_file, s3_options, shared
from tests.faultproxy import FaultProxy, fault_proxy_fixture  # noqa: F401 (fixture)
from tests.test_predict_batch import model_file, write_source

SERVER_START_SECONDS = 180  # 10-20 s on a quiet machine; the 2 shared CPUs are not quiet
# Server services the tests do not need, off to spare the CPUs (the scheduler too:
# schedules are checked on the deployments, nobody waits for a cron).
QUIET_SERVER = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (the server's children too), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on a free port; PREFECT_API_URL points at it meanwhile."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RADLAKE_"))}
    env |= QUIET_SERVER | {"PREFECT_HOME": str(home)}
    log = (home / "server.log").open("wb")
    command = ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", *command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one process group: teardown kills what it started
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).json() is True:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server did not answer within {SERVER_START_SECONDS} s")
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_HOME: home / "client"}):
            yield api
            # Logs and events still queued go out before the server goes away (else the
            # workers complain on stderr at exit).
            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def lake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Lake]:
    """Makes a lake from RADLAKE_* settings (as `radlake init`), flows see the same."""
    for name in list(os.environ):
        if name.startswith("RADLAKE_"):
            monkeypatch.delenv(name)

    def make(**settings: str) -> Lake:
        monkeypatch.setenv("RADLAKE_HOME", str(tmp_path / "home"))
        for name, value in settings.items():
            monkeypatch.setenv(f"RADLAKE_{name.upper()}", value)
        lake, _ = init_lake(load_settings())
        return lake

    return make


def recorded(state: State[Any], tasks: int) -> tuple[FlowRun, dict[str, TaskRun]]:
    """The server's flow run of `state` and its task runs by name (without the run
    suffix), once `tasks` of them reached a final state: task run states reach the
    server as events, recorded a moment after the flow returns."""
    flow_run_id = state.state_details.flow_run_id
    assert isinstance(flow_run_id, UUID)
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = [t for t in task_runs if t.state is not None and t.state.is_final()]
            if len(final) >= tasks or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    by_name = {t.name.rsplit("-", 1)[0]: t for t in final}
    assert len(by_name) == tasks, sorted(t.name for t in task_runs)
    return flow_run, by_name


def state_name(run: FlowRun | TaskRun) -> str:
    assert run.state is not None
    return run.state.type.value


# --- settings: schedules are checked at load --------------------------------------------


def test_schedule_settings_are_checked_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RADLAKE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RADLAKE_SCHEDULE_INGEST", "0 2 * *")
    with pytest.raises(ConfigError, match=r"^bad setting RADLAKE_SCHEDULE_INGEST: expected 5"):
        load_settings()
    monkeypatch.setenv("RADLAKE_SCHEDULE_INGEST", "0 2 * * *")
    with pytest.raises(ConfigError, match="RADLAKE_SCHEDULE_INGEST_FOLDER is not"):
        load_settings()
    monkeypatch.setenv("RADLAKE_SCHEDULE_INGEST_FOLDER", "/data/incoming")
    monkeypatch.setenv("RADLAKE_SCHEDULE_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="RADLAKE_SCHEDULE_TIMEZONE: expected an IANA zone"):
        load_settings()
    monkeypatch.delenv("RADLAKE_SCHEDULE_TIMEZONE")
    assert load_settings().schedule_ingest == "0 2 * * *"
    for bad, why in [
        ("61 * * * *", "minute 61 is outside 0-59"),
        ("* * * * 8", "day of week 8 is outside 0-7"),
        ("5/15 * * * *", "a step needs"),
        ("5-1 * * * *", "runs backwards"),
        ("@often", "unknown macro"),
        ("0 0 L * *", "not a number or a name"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_cron(bad)
    # What this module accepts, Prefect's scheduler (croniter) accepts.
    from prefect._internal.schemas.validators import validate_cron_string

    for good in ["0 2 * * *", "*/15 1-5/2 1,15 jan-mar mon-fri", "0 0 * * 7", "@daily", "@hourly"]:
        assert validate_cron_string(check_cron(good))


# --- the flows on a real server ---------------------------------------------------------


def test_ingest_flow_catalogues_real_files_and_quarantines_a_poison_file(
    prefect_server: str, lake_home: Callable[..., Lake], tmp_path: Path
) -> None:
    lake = lake_home()
    folder = tmp_path / "incoming"
    folder.mkdir()
    hitachi = shared("dicom_dicom2nifti_hitachi_mr_only", "data", "tests", "data", "hitachi")
    for slice_file in sorted((hitachi / "anatomical" / "001").glob("*.dcm")):
        shutil.copy(slice_file, folder / f"hitachi-{slice_file.name}")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_file(name), folder / name)
    # A DICOM cut after its preamble and part of its header: quarantined, never fatal.
    (folder / "poison.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:400])

    state = ingest_folder(folder=folder, workers=1, return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary["inputs"], summary["catalogued"], summary["quarantined"]) == (7, 6, 1)
    with session_factory(lake.engine)() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 6
        reasons = list(session.scalars(select(Quarantine.reason)))
    assert len(reasons) == 1 and reasons[0]
    flow_run, task_runs = recorded(state, tasks=1)
    assert (flow_run.flow_id is not None, state_name(flow_run)) == (True, "COMPLETED")
    assert state_name(task_runs["ingest"]) == "COMPLETED"
    assert task_runs["ingest"].run_count == 1


def _pass_after_first_refusal(proxy: FaultProxy, seconds: float) -> None:
    deadline = time.monotonic() + 120
    while proxy.counts["refuse"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(seconds)
    proxy.set_mode("pass")


def test_a_store_outage_past_the_stores_deadline_is_retried_by_prefect(
    prefect_server: str,
    lake_home: Callable[..., Lake],
    s3_endpoint: str,
    s3_bucket: str,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> None:
    address = urlsplit(s3_endpoint)
    assert address.hostname is not None and address.port is not None
    proxy = fault_proxy((address.hostname, address.port))
    options: dict[str, Any] = s3_options(proxy.url)
    lake_home(
        store_url=f"s3://{s3_bucket}/lake",
        s3_endpoint_url=proxy.url,
        s3_access_key_id=options["key"],
        s3_secret_access_key=options["secret"],
        s3_region="us-east-1",
        retry_seconds="1",
        flow_retries="2",
        flow_retry_delay_seconds="6",
    )
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), folder / "ct.dcm")

    # The outage starts now and ends 4 s after the flow first meets it, far past the
    # store's 1 s; Prefect's retry comes 6 s after the task failed.
    proxy.set_mode("refuse")
    mended = threading.Thread(target=_pass_after_first_refusal, args=(proxy, 4.0))
    mended.start()
    try:
        state = ingest_folder(folder=folder, workers=1, return_state=True)
    finally:
        mended.join()

    assert state.is_completed(), state.message
    assert state.result()["catalogued"] == 1
    assert proxy.counts["refuse"] > 0  # the outage really met the flow
    flow_run, task_runs = recorded(state, tasks=1)
    assert state_name(flow_run) == "COMPLETED"
    assert state_name(task_runs["ingest"]) == "COMPLETED"
    assert task_runs["ingest"].run_count == 2  # failed once on the fault, then succeeded


def test_bad_input_fails_the_flow_at_once_without_retries(
    prefect_server: str, lake_home: Callable[..., Lake], tmp_path: Path
) -> None:
    # Retries an hour apart: a retried bad input would hold the test for an hour.
    lake_home(flow_retries="3", flow_retry_delay_seconds="3600")

    state = ingest_folder(folder=tmp_path / "absent", return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputPathError)
    assert "no such file or folder" in str(error)
    flow_run, task_runs = recorded(state, tasks=1)
    assert state_name(flow_run) == "FAILED"
    assert (state_name(task_runs["ingest"]), task_runs["ingest"].run_count) == ("FAILED", 1)
    # A bad executor spec fails the flow before any task.
    spec = ingest_folder(folder=tmp_path, executor="spark://somewhere", return_state=True)
    assert isinstance(spec.result(raise_on_failure=False), ConfigError)
    flow_run, task_runs = recorded(spec, tasks=0)
    assert state_name(flow_run) == "FAILED" and not task_runs
    # Called plainly (as `radlake flows run` does), the flow raises the input's error.
    with pytest.raises(InputPathError, match="no such file or folder"):
        ingest_folder(folder=tmp_path / "absent")


def test_source_predict_retrain_backup_warehouse_and_mart_flows(
    prefect_server: str, lake_home: Callable[..., Lake], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="predictions need the [inference] extra")
    from tests.test_retrain_set import ACCEPT, review

    lake = lake_home(flow_retry_delay_seconds="3600")
    write_source(tmp_path / "src", count=12)

    loaded = load_source_flow(layout="vinbigdata", root=tmp_path / "src", workers=1)

    assert (loaded["records"], loaded["linked"], loaded["boxes"]) == (12, 12, 24)
    with transaction(lake.engine) as session:
        version, _ = create_version(
            session,
            VersionRequest(
                dataset="lungs",
                selection=ImageFilter(source="vinbigdata"),
                spec=SplitSpec.parse("training=0.3,production=0.4,test=0.3"),
            ),
        )
        register_version(
            session,
            lake.store,
            name="lungs",
            onnx_bytes_or_path=model_file(),
            trained_on_version_id=version.id,
        )
        production = sorted(i for i, s in members(session, version.id).items() if s == "production")
    assert production

    predicted = batch_predict(model="lungs", dataset="lungs", split="production")

    assert (predicted["selected"], predicted["predicted"]) == (len(production), len(production))
    assert predicted["boxes"] == 2 * len(production)
    for image_id in production:
        review(lake, image_id, {"Left Lung": ACCEPT, "Right Lung": ACCEPT})

    state = retrain_set_flow(model="lungs", size=64, return_state=True)

    assert state.is_completed(), state.message
    built = state.result()
    assert built["created"] and set(built["exports"]) == {"yolo", "coco"}
    assert built["counts"]["images"] == len(production)
    with session_factory(lake.engine)() as session:
        feedback_labels = session.scalar(
            select(func.count()).select_from(Label).where(Label.origin == "feedback")
        )
    assert feedback_labels == 2 * len(production)
    _, task_runs = recorded(state, tasks=1)
    assert state_name(task_runs["build-retrain-set"]) == "COMPLETED"

    backed_up = backup_flow(keep=2)
    assert backed_up["tables"] > 10 and backed_up["rows"] > 0
    assert lake.store.exists(f"backups/{backed_up['name']}/manifest.json")

    built_warehouse = warehouse_build()
    assert built_warehouse["images"] == 12 and built_warehouse["format"] == "parquet"
    pushed = mart_push(dataset="lungs", to=str(tmp_path / "mart"), format="yolo", size=64)
    assert pushed["copied"] == pushed["files"] > 12
    assert (tmp_path / "mart" / ".radlake-mart.json").is_file()

    # A model that does not exist is bad input: the predict task fails once, unretried.
    failed = batch_predict(model="nope", dataset="lungs", return_state=True)
    assert isinstance(failed.result(raise_on_failure=False), ModelNotFound)
    _, task_runs = recorded(failed, tasks=2)
    assert (state_name(task_runs["select-images"]), task_runs["select-images"].run_count) == (
        "COMPLETED",
        1,
    )
    assert (state_name(task_runs["predict"]), task_runs["predict"].run_count) == ("FAILED", 1)


# --- schedules and the CLI --------------------------------------------------------------

SCHEDULES = {
    "RADLAKE_SCHEDULE_INGEST": "0 2 * * *",
    "RADLAKE_SCHEDULE_INGEST_FOLDER": "/data/incoming",
    "RADLAKE_SCHEDULE_RETRAIN_SET": "30 3 * * sun",
    "RADLAKE_SCHEDULE_RETRAIN_SET_MODEL": "lungs@production",
    "RADLAKE_SCHEDULE_BACKUP": "0 2 * * *",
    "RADLAKE_SCHEDULE_BACKUP_KEEP": "7",
    "RADLAKE_SCHEDULE_WAREHOUSE": "15 1 * * *",
    "RADLAKE_SCHEDULE_MART": "0 4 1 * *",
    "RADLAKE_SCHEDULE_MART_DATASET": "lungs",
    "RADLAKE_SCHEDULE_MART_TO": "s3://mart/lungs",
    "RADLAKE_SCHEDULE_MART_FORMAT": "coco",
    "RADLAKE_SCHEDULE_TIMEZONE": "Europe/Paris",
}


def test_schedules_from_settings_make_deployments_with_their_cron(
    prefect_server: str, tmp_path: Path
) -> None:
    settings = Settings(**{k[8:].lower(): v for k, v in SCHEDULES.items()})  # type: ignore[arg-type]
    built = {d.flow_name: d for d in deployments(settings)}
    assert set(built) == set(FLOWS)
    ingest = built["ingest-folder"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in ingest.schedules] == [  # type: ignore[union-attr]
        ("0 2 * * *", "Europe/Paris")
    ]
    assert ingest.parameters == {"folder": "/data/incoming", "source": "folder"}
    assert not built["batch-predict"].schedules

    # `radlake flows serve` registers them on the server (and keeps serving: stopped here).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RADLAKE_"))}
    env |= SCHEDULES | {
        "RADLAKE_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        serving = subprocess.Popen(
            [sys.executable, "-m", "radlake.cli.main", "flows", "serve"],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        found: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while len(found) < len(FLOWS) and time.monotonic() < deadline:
                assert serving.poll() is None, log.read_text()[-2000:]
                time.sleep(1)
                found = {client.read_flow(d.flow_id).name: d for d in client.read_deployments()}
    finally:
        _stop(serving)
    assert set(found) == set(FLOWS), log.read_text()[-2000:]
    assert f"serving {len(FLOWS)} flows on http" in log.read_text()
    assert {name: d.name for name, d in found.items()} == dict.fromkeys(FLOWS, "radlake")
    scheduled = {
        name: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules]
        for name, d in found.items()
        if d.schedules
    }
    assert scheduled == {
        "ingest-folder": [("0 2 * * *", "Europe/Paris")],
        "retrain-set": [("30 3 * * sun", "Europe/Paris")],
        "backup": [("0 2 * * *", "Europe/Paris")],
        "warehouse-build": [("15 1 * * *", "Europe/Paris")],
        "mart-push": [("0 4 1 * *", "Europe/Paris")],
    }
    assert found["mart-push"].parameters == {
        "dataset": "lungs",
        "to": "s3://mart/lungs",
        "format": "coco",
    }
    assert found["retrain-set"].parameters == {"model": "lungs@production"}
    assert found["backup"].parameters == {"to": None, "keep": 7}
    assert found["ingest-folder"].entrypoint == "radlake.flows.flows.ingest_folder"


def test_cli_errors_are_one_line(prefect_server: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RADLAKE_"))}
    env |= {"RADLAKE_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}

    def radlake(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "radlake.cli.main", *args],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=180,
        )

    assert radlake("init").returncode == 0
    # Bad input against the server: Prefect's log lines, then the error; no traceback
    # (that is in the flow run's log on the server).
    absent = tmp_path / "absent"
    failed = radlake(
        "flows", "run", "ingest-folder", f"folder={absent}", PREFECT_API_URL=prefect_server
    )
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == f"error: no such file or folder: {absent}"
    assert "Traceback" not in failed.stderr and "Finished in state Failed" in failed.stderr
    unset = radlake("flows", "serve")
    assert unset.returncode == 1
    assert unset.stderr.startswith("error: PREFECT_API_URL is not set: start one with `prefect")
    assert unset.stderr.count("\n") == 1 and "Traceback" not in unset.stderr
    # Unreachable: nothing listens on a port just freed.
    nowhere = f"http://127.0.0.1:{_free_port()}/api"
    with (
        temporary_settings(updates={PREFECT_API_URL: nowhere}),
        pytest.raises(launch.FlowServerError, match="no Prefect server answers at http"),
    ):
        launch.require_server()
    assert launch.require_server() == prefect_server
    with pytest.raises(launch.FlowInputError, match="takes no parameter 'colour'"):
        launch.flow_parameters(ingest_folder, ["folder=/x", "colour=red"])
    given = launch.flow_parameters(batch_predict, ["model=m", "select=a=1", "select=b=2", "iou=.5"])
    assert (given["model"], given["select"], given["iou"]) == ("m", ["a=1", "b=2"], 0.5)
