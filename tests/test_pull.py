"""`radlake pull` (issue 13, point 2) from a real Orthanc holding real studies: C-MOVE
into the pull's receiver, C-GET, and DICOMweb (QIDO-RS + WADO-RS); only what the query
matches arrives, a second pull fetches nothing, a partly present study fetches only
its missing instances, a quarantined instance is counted and the pull goes on.

Orthanc 1.10 binds every interface, so it runs with radlake's commands inside a
private network namespace (tests/orthanc_netns.py): one Orthanc per plan, the plan's
steps run in order, each test asserts on its steps' results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import pydicom_file, run_radlake, server_database, shared
from tests.orthanc_netns import in_netns, unavailable_reason

QUERY = "Modality=MR StudyDate=20170101-"  # the Hitachi and the Siemens MR studies
POISON = "JPEG-lossy.dcm"  # JPEG Extended whose stream no decoder accepts
PG_SOCKET = "postgresql://postgres@/test?host=/var/run/postgresql"
MARIADB_SOCKET = "mysql://root@localhost/test?unix_socket=/run/mysqld/mysqld.sock"
needs_orthanc = pytest.mark.skipif(
    unavailable_reason() is not None, reason=str(unavailable_reason())
)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _matching() -> tuple[list[Path], list[Path]]:
    """Files the query matches (MR from 2017 on), and files it must not (CT, MR 2004)."""
    hitachi = shared("dicom_dicom2nifti_hitachi_mr_only")
    siemens = shared("dicom_dcm_qa_nih_ge_siemens_mr")
    matching = sorted(p for p in hitachi.rglob("*.dcm") if "implicit" not in str(p))
    matching += sorted(siemens.rglob("20180918Si/**/*.dcm"))
    assert len(matching) == 12
    return matching, [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]


def _poison_in(series_of: Path, folder: Path) -> Path:
    """The real undecodable JPEG file, filed into a matching series: Orthanc stops a
    C-MOVE at the first sub-operation the receiver refuses, so the pull must ask for
    the rest of the series again."""
    ds = pydicom.dcmread(pydicom_file(POISON))
    host = pydicom.dcmread(series_of, stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = host.StudyInstanceUID, host.SeriesInstanceUID
    ds.StudyDate, ds.Modality = host.StudyDate, host.Modality
    path = folder / "poison.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


class Plan:
    """Named steps for tests/orthanc_netns.py."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.names: list[str] = []

    def add(self, name: str, **step: Any) -> None:
        self.names.append(name)
        self.steps.append(step)

    def run(self, upload: list[Path], catalogs: dict[str, str] | None = None) -> dict[str, Any]:
        plan = {
            "upload": [str(p) for p in upload],
            "radlake_port": 11112,
            "catalogs": catalogs or {},
            "steps": self.steps,
        }
        done = in_netns("tests.orthanc_netns", plan)
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads(done.stdout)["results"]
        return dict(zip(self.names, results, strict=True))


def _move(query: str = QUERY, *extra: str) -> list[str]:
    pacs = "ORTHANC@127.0.0.1:{ORTHANC_DICOM}"
    return ["pull", "--from", pacs, "--query", query, "--port", "11112", "--json", *extra]


def _web(query: str = QUERY) -> list[str]:
    return ["pull", "--dicomweb", "http://127.0.0.1:{ORTHANC_HTTP}/dicom-web", "--query", query]


def _pulls(plan: Plan, home: str, prefix: str, pull: list[str], partial: list[Path]) -> None:
    """A pull, the same pull again, and a pull into a lake that has part of a study."""
    plan.add(f"{prefix}-init", radlake=["init"], home=home)
    plan.add(prefix, radlake=pull, home=home)
    plan.add(f"{prefix}-again", radlake=pull, home=home)
    plan.add(f"{prefix}-uids", catalogued=home)
    plan.add(f"{prefix}-partial-init", radlake=["init"], home=f"{home}-partial")
    plan.add(f"{prefix}-ingest", radlake=["ingest", *map(str, partial)], home=f"{home}-partial")
    plan.add(f"{prefix}-partial", radlake=pull, home=f"{home}-partial")
    plan.add(f"{prefix}-partial-uids", catalogued=f"{home}-partial")


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One Orthanc holding matching and other studies; every pull the tests look at."""
    if unavailable_reason():
        pytest.skip(str(unavailable_reason()))
    matching, others = _matching()
    poison = _poison_in(matching[0], tmp_path_factory.mktemp("poison"))
    plan = Plan()
    _pulls(plan, "move", "move", _move(), matching[:2])
    _pulls(plan, "web", "web", [*_web(QUERY), "--json"], matching[:2])
    # A wildcard reaches Orthanc as `*`, not `%2A` (which it takes literally).
    plan.add("wild-init", radlake=["init"], home="wild")
    plan.add("wild", radlake=[*_web(f"{QUERY} PatientID=*"), "--json"], home="wild")
    plan.add("get-init", radlake=["init"], home="get")
    plan.add("get", radlake=_move(QUERY, "--via", "get"), home="get")
    plan.add("get-uids", catalogued="get")
    dead = "ORTHANC@127.0.0.1:{DEAD_PORT}"
    plan.add("dead-move", radlake=["pull", "--from", dead, "--query", QUERY], home="move")
    dead_web = "http://127.0.0.1:{DEAD_PORT}/dicom-web"
    plan.add("dead-web", radlake=["pull", "--dicomweb", dead_web, "--query", QUERY], home="move")
    plan.add("stranger", radlake=[*_move(), "--ae", "STRANGER"], home="move")
    plan.add("upload-poison", upload=[str(poison)])
    for kind, pull in (("move", _move()), ("web", [*_web(), "--json"])):
        plan.add(f"poison-{kind}-init", radlake=["init"], home=f"poison-{kind}")
        plan.add(f"poison-{kind}", radlake=pull, home=f"poison-{kind}")
        plan.add(f"poison-{kind}-uids", catalogued=f"poison-{kind}")
    plan.add("poison-move-again", radlake=_move(), home="poison-move")
    return {"results": plan.run([*matching, *others]), "matching": matching, "poison": poison}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    assert result["rc"] == 0, result["stderr"][-1500:]
    summary: dict[str, Any] = json.loads(result["stdout"])
    return summary


@needs_orthanc
@pytest.mark.parametrize("kind", ["move", "web"])
def test_a_pull_fetches_what_the_query_matches_then_nothing(
    pulled: dict[str, Any], kind: str
) -> None:
    results, expected = pulled["results"], sorted(_uid(p) for p in pulled["matching"])
    first = _summary(results[kind])
    assert (first["studies"], first["series"], first["found"]) == (2, 5, 12)
    assert (first["requested"], first["catalogued"], first["quarantined"]) == (12, 12, 0)
    assert first["not_retrieved"] == 0 and first["job_id"] == 1
    assert results[f"{kind}-uids"]["uids"] == expected  # the CT and the 2004 MR stayed out

    again = _summary(results[f"{kind}-again"])
    assert (again["found"], again["skipped"], again["requested"]) == (12, 12, 0)
    assert again["job_id"] is None  # nothing to fetch: no job, no association for moves


@needs_orthanc
def test_a_dicomweb_wildcard_matches_on_orthanc(pulled: dict[str, Any]) -> None:
    wild = _summary(pulled["results"]["wild"])
    assert (wild["found"], wild["catalogued"]) == (12, 12)


@needs_orthanc
@pytest.mark.parametrize("kind", ["move", "web"])
def test_a_partly_present_study_fetches_only_its_missing_instances(
    pulled: dict[str, Any], kind: str
) -> None:
    results, expected = pulled["results"], sorted(_uid(p) for p in pulled["matching"])
    assert results[f"{kind}-ingest"]["rc"] == 0, results[f"{kind}-ingest"]["stderr"]
    partial = _summary(results[f"{kind}-partial"])
    assert (partial["found"], partial["skipped"], partial["requested"]) == (12, 2, 10)
    assert (partial["catalogued"], partial["already_present"]) == (10, 0)
    assert results[f"{kind}-partial-uids"]["uids"] == expected


@needs_orthanc
def test_c_get_pulls_on_its_own_association(pulled: dict[str, Any]) -> None:
    results = pulled["results"]
    summary = _summary(results["get"])
    assert (summary["requested"], summary["catalogued"], summary["not_retrieved"]) == (12, 12, 0)
    assert results["get-uids"]["uids"] == sorted(_uid(p) for p in pulled["matching"])


@needs_orthanc
@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("dead-move", r"error: cannot reach the PACS ORTHANC@127\.0\.0\.1:\d+: Connection refused"),
        (
            "dead-web",
            r"error: cannot reach the DICOMweb server at 127\.0\.0\.1: connection refused",
        ),
        ("stranger", r"error: the PACS ORTHANC@127\.0\.0\.1:\d+ .*STRANGER"),
    ],
)
def test_an_unreachable_or_refusing_pacs_is_one_error_line(
    pulled: dict[str, Any], step: str, message: str
) -> None:
    result = pulled["results"][step]
    assert result["rc"] == 1 and result["stdout"] == ""
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1, result["stderr"]
    assert re.match(message, lines[0]), lines[0]


@needs_orthanc
@pytest.mark.parametrize("kind", ["move", "web"])
def test_a_quarantined_instance_is_counted_and_the_pull_goes_on(
    pulled: dict[str, Any], kind: str
) -> None:
    results = pulled["results"]
    summary = _summary(results[f"poison-{kind}"])
    assert (summary["found"], summary["requested"]) == (13, 13)
    assert (summary["catalogued"], summary["quarantined"], summary["not_retrieved"]) == (12, 1, 0)
    assert "undecodable transfer syntax" in results[f"poison-{kind}"]["stderr"]
    assert results[f"poison-{kind}-uids"]["uids"] == sorted(_uid(p) for p in pulled["matching"])
    assert _uid(pulled["poison"]) not in results[f"poison-{kind}"]["stderr"]


@needs_orthanc
def test_a_quarantined_instance_is_tried_again_by_the_next_pull(pulled: dict[str, Any]) -> None:
    # Not catalogued, so not skipped: a later radlake that decodes it catalogues it.
    again = _summary(pulled["results"]["poison-move-again"])
    assert (again["skipped"], again["requested"], again["quarantined"]) == (12, 1, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "PACS@host:104", "--query", "Colour=red"], "attribute 'Colour' is not a"),
        (["--from", "PACS@host:104", "--query", "Rows=512"], "attribute 'Rows' cannot be queried"),
        (["--from", "PACS@host:104", "--query", "StudyDate=20200201-20200101"], "starts after"),
        (["--from", "PACS@host:104", "--query", "StudyDate=2020-01-01"], "expected YYYYMMDD"),
        (["--from", "PACS@host:104", "--query", "StudyDate=20201332"], "not a calendar date"),
        (["--from", "PACS@host:104", "--query", "Modality"], "expected KEY=VALUE"),
        (["--from", "PACS:104", "--query", "Modality=CR"], "expected AE@host:port"),
        (["--query", "Modality=CR"], "exactly one of --from"),
    ],
)
def test_a_bad_query_or_peer_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    # Checked before anything is reached: no lake, no PACS needed.
    done = run_radlake(tmp_path / "home", "pull", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.fixture(params=["postgresql", "mariadb"])
def server_catalog(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database reached over its unix socket: inside the namespace the
    servers' TCP ports on 127.0.0.1 are not reachable, their sockets are."""
    yield from server_database(PG_SOCKET if request.param == "postgresql" else MARIADB_SOCKET)


@needs_orthanc
def test_a_c_move_pull_resumes_on_server_catalogs(server_catalog: str) -> None:
    matching, others = _matching()
    plan = Plan()
    plan.add("init", radlake=["init"], home="lake")
    plan.add("ingest", radlake=["ingest", *map(str, matching[:3])], home="lake")
    plan.add("pull", radlake=_move(), home="lake")
    plan.add("again", radlake=_move(), home="lake")
    plan.add("uids", catalogued="lake")
    results = plan.run([*matching, *others], catalogs={"lake": server_catalog})
    assert results["ingest"]["rc"] == 0, results["ingest"]["stderr"]
    pull, again = _summary(results["pull"]), _summary(results["again"])
    assert (pull["skipped"], pull["requested"], pull["catalogued"]) == (3, 9, 9)
    assert (again["skipped"], again["requested"]) == (12, 0)
    assert results["uids"]["uids"] == sorted(_uid(p) for p in matching)
