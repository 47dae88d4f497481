"""C-STORE receive throughput (issue 13): dcmtk's `storescu` sends the real-size
archive corpus (benchmarks/corpus.py: real MR, CT and CR originals with fresh UIDs,
uncompressed) over one association to each receiver in turn, on this machine:

- dcmtk `storescp` writing files to a temporary folder: the upper bound;
- a bare pynetdicom SCP writing each instance's bytes to a file: the toolkit's floor;
- `radlake receive` (embedded lake: SQLite catalog, local store; every instance read,
  rendered, stored and catalogued);
- Orthanc 1.10's C-STORE SCP (SQLite index, storage in a temporary folder, no
  plugins, no compression).

Orthanc binds every interface, so as root the whole benchmark re-runs itself inside a
private network namespace with only loopback up (`unshare --net`); without root the
Orthanc row is left out. TCP_NODELAY=1 is set for every dcmtk process (storescu,
storescp, Orthanc): dcmtk keeps Nagle's algorithm on otherwise, and each instance
would wait out a delayed ACK. The files are read once first so every row starts from
a warm page cache. Prints instances/s and MB/s, the receiver's CPU seconds and the
radlake/Orthanc ratio. Usage:
    .venv/bin/python benchmarks/receive.py [--files 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from tests.orthanc_netns import ORTHANC_AE, free_port, orthanc, stop, unavailable_reason

from corpus import CACHE, FILES_DIR, BenchmarkError, build_archive, describe
from orthanc import _process_cpu

INSIDE = "RADLAKE_BENCH_NETNS"
DCMTK_ENV = {"TCP_NODELAY": "1"}
START_TIMEOUT_S = 60.0
BARE_SCP = """
import sys
from pynetdicom import AE, AllStoragePresentationContexts, evt
from radlake.network.receiver import TRANSFER_SYNTAXES, _set_nodelay
port, out = int(sys.argv[1]), sys.argv[2]
count = [0]
def on_store(event):
    count[0] += 1
    with open(f"{out}/{count[0]}.dcm", "wb") as f:
        f.write(event.encoded_dataset())
    return 0x0000
ae = AE("BARE")
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", port), evt_handlers=[
    (evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, _set_nodelay)])
"""


@dataclass(frozen=True, slots=True)
class Row:
    receiver: str
    files: int
    stored: int
    megabytes: float
    seconds: float
    receiver_cpu_seconds: float | None

    @property
    def per_second(self) -> float:
        return self.files / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds


def _wait_port(port: int, process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"a receiver exited at start ({process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchmarkError(f"nothing listened on port {port} within {START_TIMEOUT_S} s")


def _storescu(folder: Path, ae_title: str, port: int) -> float:
    """Send every file under `folder` on one association; the wall seconds."""
    command = ["storescu", "-R", "+sd", "+r", "-aec", ae_title, "127.0.0.1", str(port)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, env=os.environ | DCMTK_ENV
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkError(f"storescu failed ({done.returncode}): {done.stderr[-400:]}")
    return seconds


@contextmanager
def _process(command: list[str], port: int, env: dict[str, str]) -> Iterator[int]:
    process = subprocess.Popen(
        command, env=os.environ | env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, process)
        yield process.pid
    finally:
        stop(process)


def run_storescp(folder: Path, work: Path) -> tuple[float, int, float | None]:
    out, port = work / "storescp", free_port()
    out.mkdir()
    with _process(
        ["storescp", "-od", str(out), "-aet", "STORESCP", str(port)], port, DCMTK_ENV
    ) as pid:
        seconds = _storescu(folder, "STORESCP", port)
        cpu = _process_cpu(pid)
    return seconds, sum(1 for _ in out.iterdir()), cpu


def run_bare(folder: Path, work: Path) -> tuple[float, int, float | None]:
    out, port = work / "bare", free_port()
    out.mkdir()
    with _process([sys.executable, "-c", BARE_SCP, str(port), str(out)], port, {}) as pid:
        seconds = _storescu(folder, "BARE", port)
        cpu = _process_cpu(pid)
    return seconds, sum(1 for _ in out.iterdir()), cpu


def run_radlake(folder: Path, work: Path) -> tuple[float, int, float | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(work / "radlake")
    radlake = [sys.executable, "-m", "radlake.cli.main"]
    subprocess.run([*radlake, "init"], env=env, check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen(
        [*radlake, "receive", "--port", str(port), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        _wait_port(port, process)
        seconds = _storescu(folder, "RADLAKE", port)
        cpu = _process_cpu(process.pid)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    summary = json.loads(out)
    return seconds, int(summary["catalogued"]) + int(summary["already_present"]), cpu


def run_orthanc(folder: Path, work: Path) -> tuple[float, int, float | None]:
    with orthanc({}, dicomweb=False, env=DCMTK_ENV) as server:
        seconds = _storescu(folder, ORTHANC_AE, server.dicom_port)
        cpu = _process_cpu(server.pid)
        stats = httpx.get(f"{server.url}/statistics", timeout=30).json()
    return seconds, int(stats["CountInstances"]), cpu


RECEIVERS: dict[str, Callable[[Path, Path], tuple[float, int, float | None]]] = {
    "dcmtk storescp (files)": run_storescp,
    "bare pynetdicom (bytes to files)": run_bare,
    "radlake receive": run_radlake,
    "Orthanc 1.10 C-STORE": run_orthanc,
}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def measure(files: list[Path], skip: set[str]) -> tuple[list[Row], list[str]]:
    folder = files[0].parents[1]  # corpus/files: storescu walks it
    assert folder.name == FILES_DIR
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    for path in files:  # a warm page cache for every row
        path.read_bytes()
    rows, notes = [], [f"before: {_load()}"]
    for name, run in RECEIVERS.items():
        if name in skip:
            continue
        with tempfile.TemporaryDirectory(prefix="radlake-bench-receive-") as work:
            seconds, stored, cpu = run(folder, Path(work))
        rows.append(Row(name, len(files), stored, megabytes, seconds, cpu))
    notes.append(f"after:  {_load()}")
    return rows, notes


def report(rows: list[Row], notes: list[str], as_json: bool) -> None:
    by_name = {row.receiver: row for row in rows}
    radlake, peer = by_name.get("radlake receive"), by_name.get("Orthanc 1.10 C-STORE")
    ratio = radlake.per_second / peer.per_second if radlake and peer else None
    if as_json:
        values = [asdict(r) | {"per_second": r.per_second} for r in rows]
        print(json.dumps({"rows": values, "radlake_over_orthanc": ratio, "notes": notes}))
        return
    print(
        f"{'receiver':34} {'files':>6} {'stored':>6} {'MB':>7} {'s':>7} "
        f"{'inst/s':>8} {'MB/s':>7} {'rcv CPU s':>9}"
    )
    for r in rows:
        cpu = (
            f"{r.receiver_cpu_seconds:9.1f}" if r.receiver_cpu_seconds is not None else "        ?"
        )
        print(
            f"{r.receiver:34} {r.files:6d} {r.stored:6d} {r.megabytes:7.1f} {r.seconds:7.2f} "
            f"{r.per_second:8.1f} {r.megabytes_per_second:7.1f} {cpu}"
        )
    if ratio is not None:
        print(f"radlake / Orthanc: {ratio:.2f}x instances/s")
    for note in notes:
        print(note)


def _reexec_in_netns(argv: list[str]) -> int:
    inner = f"ip link set lo up && exec env {INSIDE}=1 {sys.executable} {' '.join(argv)}"
    return subprocess.run(["unshare", "--net", "sh", "-c", inner]).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="archive corpus size (300)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        print("dcmtk's storescu/storescp are not installed (Debian package dcmtk)", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason is None and os.environ.get(INSIDE) != "1":
        return _reexec_in_netns([str(Path(__file__).resolve()), *sys.argv[1:]])
    skip = {"Orthanc 1.10 C-STORE"} if reason else set()
    try:
        files, _plan, _built = build_archive(CACHE / f"archive-{args.files}", args.files)
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.json:
        print("\n".join(describe(files).lines()))
        if reason:
            print(f"Orthanc row left out: {reason}")
    rows, notes = measure(files, skip)
    report(rows, notes, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
