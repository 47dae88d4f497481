"""`radlake pull --dicomweb` from another radlake's /dicomweb (issue 13): a research lake
pulls a clinical lake's de-identified objects with a bearer token from the environment.

No Orthanc needed: the clinical lake is radlake's own server (uvicorn in a thread). What
a user cares about: the research lake holds the de-identified objects (no original UID
or name), a second pull fetches nothing, and a missing or wrong token is one clear line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from radlake.api.app import create_app
from radlake.auth import Role, create_token
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image
from radlake.config import Settings
from radlake.imaging.deid_check import check
from radlake.lake import init_lake, open_lake
from radlake.pipelines.deidentify import deidentify_images
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from tests.conftest import pydicom_file, run_radlake
from tests.test_api_live import serve

FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")


def _pull(home: Path, url: str, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    if token is not None:
        env["RADLAKE_PULL_DICOMWEB_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", "pull", "--dicomweb", url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_research_lake_pulls_de_identified_objects_with_a_token(tmp_path: Path) -> None:
    clinical, _ = init_lake(Settings(home=tmp_path / "clinical"))
    (tmp_path / "in").mkdir()
    for name in FILES:
        shutil.copy(pydicom_file(name), tmp_path / "in" / name)
    ingest(
        [tmp_path / "in"],
        engine=clinical.engine,
        store=clinical.store,
        pseudonymizer=clinical.pseudonymizer,
        executor=SerialExecutor(),
    )
    with session_factory(clinical.engine)() as session:
        ids = list(session.scalars(select(Image.id)))
    assert deidentify_images(clinical, ids).written == len(FILES)
    with transaction(clinical.engine) as session:
        token = create_token(session, name="research", role=Role.VIEWER)
    originals = {
        str(value)
        for name in FILES
        for ds in [pydicom.dcmread(pydicom_file(name), stop_before_pixels=True)]
        for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientName, ds.PatientID)
        if str(value).strip()
    }
    research = tmp_path / "research"
    assert run_radlake(research, "init").returncode == 0
    with serve(create_app(clinical)) as url:
        base = f"{url}/dicomweb"
        refused = _pull(research, base, None, "--query", "Modality=CT")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "RADLAKE_PULL_DICOMWEB_TOKEN" in refused.stderr
        wrong = _pull(research, base, "rl_" + "x" * 43, "--query", "Modality=CT")
        assert wrong.returncode == 1 and "Traceback" not in wrong.stderr

        first = _pull(research, base, token, "--query", "Modality=*", "--json")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["catalogued"] == len(FILES)
        again = _pull(research, base, token, "--query", "Modality=*", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["catalogued"] == 0
    lake = open_lake(Settings(home=research))
    with session_factory(lake.engine)() as session:
        keys = list(session.scalars(select(Image.original_key)))
    assert len(keys) == len(FILES)
    for key in keys:
        ds = pydicom.dcmread(io.BytesIO(lake.store.get_bytes(key)))
        assert ds.PatientIdentityRemoved == "YES" and check(ds) == []
        values = {str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.PatientName)}
        assert not values & originals
    lake.engine.dispose()
    clinical.engine.dispose()


@pytest.mark.parametrize("query", ["Modality=", "NoSuchKeyword=1", "StudyDate=2020-13-45"])
def test_a_bad_query_is_one_line(tmp_path: Path, query: str) -> None:
    assert run_radlake(tmp_path / "home", "init").returncode == 0
    done = _pull(tmp_path / "home", "http://127.0.0.1:9/dicomweb", None, "--query", query)
    assert done.returncode == 2 and "Traceback" not in done.stderr
