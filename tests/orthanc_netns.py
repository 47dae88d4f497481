"""A real Orthanc for tests, run inside a private network namespace (issue 13).

Orthanc 1.10 binds every interface for both its DICOM and its HTTP port, so the tests
never start it in the machine's own namespace: `in_netns()` runs this module under
`unshare --net` with only loopback up, where nothing outside can reach it and it
reaches nothing outside. Inside, `main()` starts Orthanc with a generated configuration
(index and storage in a temporary folder, radlake's AE among its modalities, the
DICOMweb plugin), uploads real files through its REST API, then runs a plan of steps
and prints one JSON document of results on stdout.

A plan (JSON on stdin):

    {"upload": [paths], "radlake_ae": "RADLAKE", "radlake_port": 11112,
     "catalogs": {"a": null, "b": "postgresql+psycopg://..."},  # name -> URL or SQLite
     "steps": [{"radlake": ["pull", ...], "home": "a"},    # `radlake` as a user runs it
               {"catalogued": "a"},                      # SOP Instance UIDs catalogued
               {"upload": [paths]},                      # more files into Orthanc
               {"anonymize": [paths], "body": {...}}]}   # /instances/{id}/anonymize

`{ORTHANC_DICOM}` and `{ORTHANC_HTTP}` in a step's arguments become Orthanc's ports,
`{DEAD_PORT}` a port nothing listens on.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AE = "ORTHANC"
START_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 120.0


def unavailable_reason() -> str | None:
    """Why Orthanc cannot run in a private namespace here, or None when it can."""
    if not Path(ORTHANC).is_file():
        return "Orthanc is not installed (Debian package orthanc)"
    if not DICOMWEB_PLUGIN.is_file():
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip not found (util-linux, iproute2)"
    if os.geteuid() != 0:
        return "a private network namespace (unshare --net) needs root"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate a server process; kill it if it has not exited in 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True, slots=True)
class Orthanc:
    """A running Orthanc: its REST URL, DICOM port and AE title."""

    url: str
    dicom_port: int
    http_port: int
    pid: int
    ae_title: str = ORTHANC_AE

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, paths: Sequence[Path]) -> list[str]:
        """POST each file to /instances; returns Orthanc's instance ids."""
        ids = []
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for path in paths:
                answer = http.post("/instances", content=path.read_bytes())
                answer.raise_for_status()
                ids.append(str(answer.json()["ID"]))
        return ids

    def anonymize(self, paths: Sequence[Path], body: dict[str, Any]) -> list[str]:
        """Upload each file, POST /instances/{id}/anonymize with `body`; the
        anonymized files, base64-encoded (Orthanc answers one DICOM file each)."""
        out = []
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for instance in self.upload(paths):
                answer = http.post(f"/instances/{instance}/anonymize", json=body)
                answer.raise_for_status()
                out.append(base64.b64encode(answer.content).decode())
        return out


@contextmanager
def orthanc(
    modalities: dict[str, tuple[str, str, int]],
    *,
    dicomweb: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Orthanc]:
    """A fresh Orthanc (temporary index and storage) knowing `modalities` (name ->
    (AE title, host, port)), `env` added to its environment. Only start it inside a
    private network namespace (benchmarks/receive.py uses it too)."""
    work = Path(tempfile.mkdtemp(prefix="radlake-orthanc-"))
    dicom_port, http_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "radlake-test",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "RemoteAccessAllowed": True,  # the namespace is the fence
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "SaveJobs": False,
        "StorageCompression": False,
        "HttpCompressionEnabled": False,
        "TcpNoDelay": True,
    }
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = (work / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [ORTHANC, str(work / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ | (env or {}),
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = (work / "orthanc.log").read_text(errors="replace")[-600:]
                raise RuntimeError(f"Orthanc exited at start ({process.returncode}): {tail}")
            try:
                if httpx.get(f"{url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer on {url} in {START_TIMEOUT_S} s")
            time.sleep(0.1)
        yield Orthanc(url, dicom_port, http_port, process.pid)
    finally:
        stop(process)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def in_netns(
    module: str, plan: dict[str, Any], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `python -m module` in a private network namespace (loopback only), the
    plan on its stdin; its stdout is its JSON answer."""
    inner = f"ip link set lo up && exec {sys.executable} -m {module}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", inner],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def radlake(home: Path, catalog_url: str | None, args: Sequence[str]) -> dict[str, Any]:
    """`radlake ARGS` as a user runs it (RADLAKE_HOME set): exit status, output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    if catalog_url:
        env["RADLAKE_CATALOG_URL"] = catalog_url
    try:
        done = subprocess.run(
            [sys.executable, "-m", "radlake.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        return {"rc": "timeout", "stdout": str(exc.stdout), "stderr": str(exc.stderr)}
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def catalogued(home: Path, catalog_url: str | None) -> list[str]:
    """The SOP Instance UIDs in a lake's catalog."""
    from sqlalchemy import select

    from radlake.catalog.db import make_engine
    from radlake.catalog.models import Image

    url = catalog_url or f"sqlite:///{home / 'catalog.sqlite'}"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(str(u) for u in connection.scalars(select(Image.sop_instance_uid)))
    finally:
        engine.dispose()


def _substitute(args: Sequence[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        out.append(arg)
    return out


def run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """Start Orthanc, upload, run the steps; the results in step order."""
    ae, port = str(plan.get("radlake_ae", "RADLAKE")), int(plan["radlake_port"])
    catalogs: dict[str, str | None] = plan.get("catalogs", {})
    homes = Path(tempfile.mkdtemp(prefix="radlake-pull-"))
    try:
        with orthanc({"radlake": (ae, "127.0.0.1", port)}) as server:
            server.upload([Path(p) for p in plan.get("upload", [])])
            values = {
                "ORTHANC_DICOM": str(server.dicom_port),
                "ORTHANC_HTTP": str(server.http_port),
                "DEAD_PORT": str(free_port()),
            }
            results: list[dict[str, Any]] = []
            for step in plan["steps"]:
                if "anonymize" in step:
                    paths = [Path(p) for p in step["anonymize"]]
                    results.append({"files": server.anonymize(paths, step["body"])})
                elif "upload" in step:
                    results.append({"ids": server.upload([Path(p) for p in step["upload"]])})
                elif "radlake" in step:
                    home = homes / step["home"]
                    args = _substitute(step["radlake"], values)
                    results.append(radlake(home, catalogs.get(step["home"]), args))
                else:
                    name = step["catalogued"]
                    results.append({"uids": catalogued(homes / name, catalogs.get(name))})
            return {"results": results}
    finally:
        shutil.rmtree(homes, ignore_errors=True)


def main() -> None:
    print(json.dumps(run_plan(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
