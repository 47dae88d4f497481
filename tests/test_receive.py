"""`radlake receive` (issue 13, point 1): dcmtk's echoscu/storescu and pynetdicom send
real files to the C-STORE receiver on 127.0.0.1; every instance ends catalogued or
refused with a status, a poison instance among good ones is refused alone."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import Engine, func, select

from radlake.catalog.db import session_factory
from radlake.catalog.models import Image, Job, Quarantine
from radlake.errors import StoreUnavailable
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.network.receiver import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    Receiver,
    ReceiverError,
    ReceiveSummary,
)
from radlake.pipelines.ingest import IngestLimits
from radlake.storage.store import open_store
from tests.conftest import SECRET, SHARED_DATA, run_radlake

# pydicom's bundled files, by the storescu option that proposes their transfer syntax
# (storescu proposes only uncompressed syntaxes unless told).
STORESCU_GROUPS: dict[str, list[str]] = {
    "": ["CT_small.dcm", "MR_small_implicit.dcm"],
    "-xb": ["MR_small_bigendian.dcm"],
    "-xd": ["image_dfl.dcm"],
    "-xy": ["SC_rgb_jpeg_dcmtk.dcm"],
    "-xs": ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"],
    "-xt": ["emri_small_jpeg_ls_lossless.dcm"],
    "-xu": ["JPEGLSNearLossless_16.dcm"],
    "-xv": ["MR_small_jp2klossless.dcm"],
    "-xw": ["JPEG2000.dcm"],
    "-xr": ["MR_small_RLE.dcm"],
}
GOOD = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm"]
POISON = "JPEG-lossy.dcm"  # JPEG Extended whose stream no decoder accepts
HITACHI = SHARED_DATA / "dicom_dicom2nifti_hitachi_mr_only"  # used when present
needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("echoscu") is None,
    reason="dcmtk's storescu/echoscu not installed (Debian package dcmtk)",
)


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture
def receiver(lake: Lake) -> Iterator[Receiver]:
    running = Receiver(lake, port=0, allow=(), max_associations=4, batch_seconds=0.2)
    running.start()
    yield running
    running.stop()


def _scu(*files: Path, title: str = "SENDER") -> AE:
    ae = AE(ae_title=title)
    pairs = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pairs.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, syntax)
    return ae


def _associate(ae: AE, receiver: Receiver) -> Association:
    host, port = receiver.address
    return ae.associate(host, port, ae_title=receiver.ae_title)


def _send(receiver: Receiver, files: Sequence[Path], title: str = "SENDER") -> list[Dataset]:
    assoc = _associate(_scu(*files, title=title), receiver)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(path) for path in files]
    finally:
        assoc.release()


def _counts(lake: Lake) -> tuple[int, int, int]:
    with session_factory(lake.engine)() as session:
        images = session.scalar(select(func.count()).select_from(Image)) or 0
        quarantined = session.scalar(select(func.count()).select_from(Quarantine)) or 0
        jobs = session.scalar(select(func.count()).select_from(Job)) or 0
    return images, quarantined, jobs


@needs_dcmtk
def test_echoscu_and_storescu_every_instance_catalogued_in_one_job(
    lake: Lake, receiver: Receiver
) -> None:
    host, port = receiver.address
    echo = subprocess.run(
        ["echoscu", "-aec", "RADLAKE", host, str(port)], capture_output=True, timeout=30
    )
    assert echo.returncode == 0, echo.stderr
    # Debian's dcmtk keeps Nagle's algorithm on its side unless TCP_NODELAY=1: without
    # it each instance waits out a delayed ACK (~45 ms), whatever the receiver sets.
    env = os.environ | {"TCP_NODELAY": "1"}
    sent: list[Path] = []
    for option, names in STORESCU_GROUPS.items():
        files = [_file(name) for name in names]
        command = ["storescu", *([option] if option else []), "-aec", "RADLAKE", host, str(port)]
        done = subprocess.run(
            [*command, *map(str, files)], capture_output=True, timeout=60, env=env
        )
        assert done.returncode == 0, (option, done.stderr[-500:])
        sent += files
    if HITACHI.is_dir():
        hitachi = sorted(HITACHI.rglob("*.dcm"))
        command = ["storescu", "+sd", "+r", "+sp", "*.dcm", "-aec", "RADLAKE", host, str(port)]
        done = subprocess.run([*command, str(HITACHI)], capture_output=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr[-500:]
        sent += hitachi

    summary = receiver.stop()

    assert summary.received == len(sent) and summary.refused == summary.faults == 0
    assert summary.catalogued + summary.already_present == len(sent)
    with session_factory(lake.engine)() as session:
        uids = set(session.scalars(select(Image.sop_instance_uid)))
        jobs = list(session.scalars(select(Job)))
    assert uids == {_sop_uid(path) for path in sent}
    assert [(job.id, job.status) for job in jobs] == [(summary.job_id, "succeeded")]
    assert jobs[0].counts["inputs"] == len(sent)


def test_a_poison_instance_is_refused_alone_with_its_reason(
    lake: Lake, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    files = [_file(name) for name in GOOD[:2]] + [_file(POISON)] + [_file(n) for n in GOOD[2:]]
    with caplog.at_level(logging.WARNING, logger="radlake.network"):
        statuses = _send(receiver, files)

    codes = [int(status.Status) for status in statuses]
    assert codes == [0, 0, CANNOT_UNDERSTAND, 0, 0]
    assert str(statuses[2].ErrorComment).startswith("undecodable transfer syntax")
    summary = receiver.stop()
    assert (summary.received, summary.catalogued, summary.refused) == (5, 4, 1)
    with session_factory(lake.engine)() as session:
        (row,) = session.scalars(select(Quarantine))
        uids = set(session.scalars(select(Image.sop_instance_uid)))
    assert row.reason.startswith("undecodable transfer syntax") and row.job_id == summary.job_id
    assert uids == {_sop_uid(path) for path in files if path.name != POISON}
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "undecodable" in record.getMessage()
    assert _sop_uid(_file(POISON)) not in caplog.text  # UIDs stay out of the log


def test_every_backend_two_senders_at_once_and_a_poison_instance(
    catalog: Engine, tmp_path: Path
) -> None:
    """PostgreSQL and MariaDB as well as SQLite: two associations send at once, one
    with a poison instance; each instance is catalogued once or refused alone."""
    lake = Lake(catalog, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    running = Receiver(lake, port=0, max_associations=4, batch_size=2, batch_seconds=0.1)
    running.start()
    first = [_file(name) for name in GOOD[:2]] + [_file(POISON)]
    second = [_file(name) for name in GOOD[2:]] + [_file(GOOD[0])]  # one sent by both
    results: dict[str, list[int]] = {}

    def send(name: str, files: list[Path]) -> None:
        results[name] = [int(status.Status) for status in _send(running, files, title=name)]

    threads = [
        threading.Thread(target=send, args=("FIRST", first)),
        threading.Thread(target=send, args=("SECOND", second)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    summary = running.stop()
    assert results["FIRST"] == [0, 0, CANNOT_UNDERSTAND] and results["SECOND"] == [0, 0, 0]
    assert (summary.received, summary.refused) == (6, 1)
    assert summary.catalogued + summary.already_present == 5
    with session_factory(lake.engine)() as session:
        uids = list(session.scalars(select(Image.sop_instance_uid)))
        (row,) = session.scalars(select(Quarantine))
    # MR_small and MR_small_RLE: one instance in two syntaxes, two originals.
    assert sorted(uids) == sorted(_sop_uid(_file(name)) for name in GOOD)
    assert row.reason.startswith("undecodable transfer syntax")


def test_allow_list_resend_and_association_limit(
    lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver(lake, port=0, allow=["GOOD"], max_associations=2, batch_seconds=0.2)
    receiver.start()
    try:
        files = [_file(name) for name in GOOD[:2]]
        with caplog.at_level(logging.WARNING, logger="radlake.network"):
            stranger = _associate(_scu(*files, title="STRANGER"), receiver)
        assert stranger.is_rejected
        assert "refused an association from STRANGER" in caplog.text  # the operator sees it

        assert [int(s.Status) for s in _send(receiver, files, "GOOD")] == [0, 0]
        assert [int(s.Status) for s in _send(receiver, files, "GOOD")] == [0, 0]  # present

        first, second = (_associate(_scu(*files, title="GOOD"), receiver) for _ in range(2))
        assert first.is_established and second.is_established
        assert receiver._server is not None
        accepted_now = receiver._server.active_associations
        assert len(accepted_now) == 2
        for accepted in accepted_now:  # the acceptor's sockets
            wrapper = accepted.dul.socket
            assert wrapper is not None and wrapper.socket is not None
            assert wrapper.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        third = _associate(_scu(*files, title="GOOD"), receiver)
        assert third.is_rejected  # over the limit of 2
        results: dict[int, int] = {}

        def send(index: int, assoc: Association) -> None:
            results[index] = int(assoc.send_c_store(files[index]).Status)

        threads = [threading.Thread(target=send, args=a) for a in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        first.release()
        second.release()
        assert results == {0: 0, 1: 0}
    finally:
        summary = receiver.stop()
    assert (summary.received, summary.catalogued, summary.already_present) == (6, 2, 4)
    assert _counts(lake) == (2, 0, 1)


def test_a_store_fault_answers_out_of_resources_not_a_bad_input(
    lake: Lake, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("store unreachable (test)")

    monkeypatch.setattr(lake.store, "put_bytes", unavailable)
    (status,) = _send(receiver, [_file("CT_small.dcm")])
    assert int(status.Status) == OUT_OF_RESOURCES
    summary = receiver.stop()
    assert (summary.received, summary.faults, summary.refused) == (1, 1, 0)
    assert _counts(lake) == (0, 0, 1)


def test_the_command_stops_on_sigterm_with_a_summary(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_radlake(home, "init").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    # `radlake receive` as a user runs it.
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "radlake.cli.main", "receive"),
            *("--port", "0", "--allow", "GOOD", "--json"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        found = re.search(r"on 127\.0\.0\.1:(\d+)", banner)
        assert found, banner
        port = int(found.group(1))
        ae = _scu(_file("CT_small.dcm"), title="GOOD")
        assoc = ae.associate("127.0.0.1", port, ae_title="RADLAKE")
        assert assoc.is_established
        assert int(assoc.send_c_store(_file("CT_small.dcm")).Status) == 0
        assoc.release()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["received"] == summary["catalogued"] == 1
    assert set(summary) >= set(ReceiveSummary.__dataclass_fields__) | {"instances_per_second"}


def test_a_taken_port_is_one_error_and_an_oversized_instance_is_refused(lake: Lake) -> None:
    small = dataclasses.replace(lake, limits=IngestLimits(max_input_bytes=10_000))
    receiver = Receiver(small, port=0, batch_seconds=0.2)
    receiver.start()
    try:
        taken = Receiver(lake, port=receiver.address[1])
        with pytest.raises(ReceiverError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            taken.start()
        (status,) = _send(receiver, [_file("CT_small.dcm")])  # about 39 kB
        assert int(status.Status) == CANNOT_UNDERSTAND
        assert str(status.ErrorComment).startswith("too large to ingest")
    finally:
        summary = receiver.stop()
    assert (summary.received, summary.refused) == (1, 1)
    with session_factory(lake.engine)() as session:
        statuses = sorted(session.scalars(select(Job.status)))
    assert statuses == ["failed", "succeeded"]  # the receiver that could not listen
    assert _counts(lake) == (0, 1, 2)
