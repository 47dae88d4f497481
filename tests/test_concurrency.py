"""Several ingests, uploads and first uses of a lake at once, on SQLite, PostgreSQL
and MariaDB: no error, no duplicate (issue 7)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from radlake.api.app import create_app
from radlake.auth import Role, create_token
from radlake.catalog.db import session_factory
from radlake.catalog.models import Image, Job, Label, LabelClass, Quarantine, Series, Source, Study
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.ingest import ingest_bytes
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file

REAL = [
    "CT_small.dcm",
    "MR_small.dcm",
    "SC_rgb_rle.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
]
UPLOADS = ["MR_small_RLE.dcm", "CT_small.dcm"]  # new bytes of a known series; bytes ingested too


def _folder(root: Path, copies: int) -> Path:
    """Real files plus CT copies with fresh UIDs sharing two series (hierarchy races)."""
    root.mkdir(parents=True)
    for name in REAL:
        shutil.copy(pydicom_file(name), root / name)
    series = [generate_uid(), generate_uid()]
    study = generate_uid()
    for index in range(copies):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series[index % 2]
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index
        ds.save_as(root / f"copy{index:03d}.dcm")
    return root


def _counts(engine: Engine) -> dict[str, int]:
    with session_factory(engine)() as session:
        return {
            name: session.scalar(select(func.count()).select_from(model)) or 0
            for name, model in (
                ("images", Image),
                ("series", Series),
                ("studies", Study),
                ("sources", Source),
                ("quarantined", Quarantine),
            )
        }


def test_concurrent_ingests_and_uploads_end_without_error_or_duplicate(
    catalog: Engine, catalog_url: str, tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "in", copies=40)
    store_url = (tmp_path / "store").as_uri()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env |= {
        "RADLAKE_HOME": str(tmp_path / "home"),
        "RADLAKE_CATALOG_URL": catalog_url,
        "RADLAKE_STORE_URL": store_url,
        "RADLAKE_SECRET_KEY": SECRET.decode(),
    }
    command = [sys.executable, "-m", "radlake.cli.main", "ingest", str(folder), "--workers", "1"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    uploads = [pydicom_file(name).read_bytes() for name in UPLOADS] * 2
    store = open_store(store_url)

    def upload(data: bytes) -> str:
        outcome = ingest_bytes(
            data,
            engine=catalog,
            store=store,
            pseudonymizer=Pseudonymizer(SECRET),
            source="upload",
            source_kind="upload",
            source_key="upload",
        ).outcome
        return type(outcome).__name__

    with ThreadPoolExecutor(4) as pool:
        kinds = list(pool.map(upload, uploads))
    errors = [run.communicate(timeout=300)[1].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0] and not "".join(errors).strip(), errors

    assert set(kinds) == {"CataloguedInput"}
    headers = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    assert _counts(catalog) == {
        "images": len(headers) + 1,  # + MR_small_RLE (CT_small's bytes are in the folder)
        "series": len({ds.SeriesInstanceUID for ds in headers}),
        "studies": len({ds.StudyInstanceUID for ds in headers}),
        "sources": 2,
        "quarantined": 0,
    }
    with session_factory(catalog)() as session:
        assert set(session.scalars(select(Job.status))) == {"succeeded"}


def test_first_uploads_to_a_fresh_lake_all_succeed(catalog: Engine, tmp_path: Path) -> None:
    lake = Lake(catalog, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    with session_factory(catalog).begin() as session:
        token = create_token(session, name="curator", role=Role.CURATOR)
    client = TestClient(create_app(lake))
    names = ["CT_small.dcm", "MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm"] * 2

    def send(name: str) -> int:
        response = client.post(
            "/images",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": ("x.dcm", pydicom_file(name).read_bytes())},
        )
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, names))
    assert codes == [201] * len(names)
    assert _counts(catalog)["images"] == 3


def test_concurrent_loads_of_one_source_keep_one_copy_of_its_labels(
    catalog: Engine, catalog_url: str, tmp_path: Path
) -> None:
    from tests.test_sources import TestCovid

    root = tmp_path / "covid"
    TestCovid().write(root, "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env |= {
        "RADLAKE_HOME": str(tmp_path / "home"),
        "RADLAKE_CATALOG_URL": catalog_url,
        "RADLAKE_STORE_URL": (tmp_path / "store").as_uri(),
        "RADLAKE_SECRET_KEY": SECRET.decode(),
    }
    command = [sys.executable, "-m", "radlake.cli.main", "source", "covid", str(root)]
    runs = [
        subprocess.Popen(
            [*command, "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    errors = [run.communicate(timeout=300)[1].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors

    with session_factory(catalog)() as session:
        labels = list(session.execute(select(Label.source_image_key, Label.class_name)))
        classes = session.scalar(select(func.count(LabelClass.id)))
    assert len(labels) == len(set(labels)) == 7  # 3 finding levels x 2 images + the absent one
    assert classes == 4  # Pneumonia, Pneumonia/Viral, .../COVID-19, No Finding
    assert _counts(catalog)["images"] == 2
    assert _counts(catalog)["quarantined"] == 1  # the row whose file is absent, once
