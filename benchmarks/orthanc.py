"""The peer row: Orthanc's REST ingest (POST /instances) of the same corpus files.

Optional (`benchmarks/ingest.py --orthanc`): Debian's `orthanc` package (1.10 on
bookworm) started on 127.0.0.1 with a throwaway configuration (SQLite index and
storage in a temporary folder, no DICOM port, no plugins, no compression), then the
corpus posted by concurrent HTTP clients (keep-alive, one httpx.Client each). Orthanc
parses, indexes and stores each file; it renders no preview, so this is a peer for
speed, not the same work.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc", "/usr/bin/Orthanc")
START_TIMEOUT_S = 60.0


def binary() -> str | None:
    """The Orthanc executable, or None when it is not installed."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def unavailable_reason() -> str | None:
    """Why the peer row cannot run here, or None when it can."""
    if binary() is None:
        return (
            "Orthanc is not installed (Debian: `apt-get install orthanc`; "
            "`apt-cache policy orthanc` shows the candidate)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _process_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class OrthancRun:
    files: int
    failures: int
    seconds: float
    megabytes: float
    server_cpu_seconds: float | None
    client_cpu_seconds: float
    version: str

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def server() -> Iterator[tuple[str, int]]:
    """A fresh Orthanc on 127.0.0.1 (temporary index and storage); yields (url, pid)."""
    executable = binary()
    if executable is None:
        raise RuntimeError(unavailable_reason())
    work = Path(tempfile.mkdtemp(prefix="radlake-bench-orthanc-"))
    port = _free_port()
    config = {
        "Name": "radlake-bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,  # loopback clients only
        "AuthenticationEnabled": False,
        "Plugins": [],
        "StorageCompression": False,
        "HttpCompressionEnabled": False,
        "SaveJobs": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpTimeout": 120,
    }
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = (work / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [executable, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = (work / "orthanc.log").read_text(errors="replace")[-400:]
                raise RuntimeError(f"Orthanc exited at start (status {process.returncode}): {tail}")
            try:
                if httpx.get(f"{url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer on {url} within {START_TIMEOUT_S} s")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def post_corpus(files: Sequence[Path], clients: int = 4) -> OrthancRun:
    """Start a fresh Orthanc and POST every file to /instances from `clients` threads."""
    with server() as (url, pid):
        version = str(httpx.get(f"{url}/system", timeout=5).json().get("Version", "?"))
        queue = list(reversed(files))
        lock = threading.Lock()
        failures: list[str] = []
        sent = [0]

        def client() -> None:
            with httpx.Client(base_url=url, timeout=120) as http:
                while True:
                    with lock:
                        if not queue:
                            return
                        path = queue.pop()
                    data = path.read_bytes()
                    response = http.post(
                        "/instances", content=data, headers={"Content-Type": "application/dicom"}
                    )
                    with lock:
                        sent[0] += len(data)
                        if response.status_code != 200:
                            failures.append(f"{path.name}: HTTP {response.status_code}")

        server_cpu = _process_cpu(pid)
        client_cpu = time.process_time()
        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        after = _process_cpu(pid)
        stored = int(httpx.get(f"{url}/statistics", timeout=30).json().get("CountInstances", 0))
    server_seconds = None if server_cpu is None or after is None else after - server_cpu
    if stored + len(failures) != len(files):
        failures.append(f"Orthanc holds {stored} instances, expected {len(files)}")
    return OrthancRun(
        len(files), len(failures), seconds, sent[0] / 1e6, server_seconds, client_cpu, version
    )
