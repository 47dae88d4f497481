"""Privacy by role (issue 8): what a viewer sees next to a curator, through the API.

Inputs sit under a folder named after a patient, as real archives name them; one is
CT_small with BurnedInAnnotation YES. Viewers must never see the folder, the
originals or the burned-in pixels; curators see paths, admins also originals (issue 13).
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from pydicom.uid import generate_uid
from sqlalchemy import select

from radlake.api.privacy import BURNED_IN_REASON, DEIDENTIFIED, shown_key
from radlake.auth import Role
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image, Rendition
from radlake.imaging.deid_check import check
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from tests.conftest import pydicom_file
from tests.test_api import Api, build

PATIENT_FOLDER = "DOE^JOHN_ZZPID00042_DOB19450317"


def _variant(sample: str, path: Path, **changes: str) -> Path:
    ds = pydicom.dcmread(pydicom_file(sample))
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    (tmp_path / "db").mkdir()
    for found in build(f"sqlite:///{tmp_path / 'db' / 'catalog.sqlite'}", tmp_path):
        folder = tmp_path / "archive" / PATIENT_FOLDER / "study1"
        folder.mkdir(parents=True)
        _variant("MR_small.dcm", folder / "plain.dcm", SeriesDescription="privacy plain")
        _variant("CT_small.dcm", folder / "burned.dcm", BurnedInAnnotation="YES")
        (folder / "junk.dcm").write_bytes(b"not an image at all")
        ingest(
            [folder],
            engine=found.lake.engine,
            store=found.lake.store,
            pseudonymizer=found.lake.pseudonymizer,
            executor=SerialExecutor(),
        )
        yield found


def ids_by_file(api: Api) -> dict[str, int]:
    with session_factory(api.lake.engine)() as session:
        return {
            Path(key).name: image_id
            for image_id, key in session.execute(select(Image.id, Image.source_key))
        }


def test_shown_key_cuts_folders_for_viewers_only() -> None:
    key = f"/data/{PATIENT_FOLDER}/study1/img.dcm"
    assert shown_key(key, Role.VIEWER) == "img.dcm"
    assert shown_key(key, Role.CURATOR) == key and shown_key(key, Role.ADMIN) == key
    assert shown_key(f'"/data/{PATIENT_FOLDER}/a\\xff.dcm"', Role.VIEWER) == '"a\\xff.dcm"'
    assert shown_key(f"C:\\{PATIENT_FOLDER}\\img.dcm", Role.VIEWER) == "img.dcm"


def test_viewers_see_file_names_curators_full_keys(api: Api) -> None:
    plain = ids_by_file(api)["plain.dcm"]
    for role, sees_folder in (("viewer", False), ("curator", True), ("admin", True)):
        headers = api.auth(role)
        listing = api.client.get("/images", params={"limit": 1000}, headers=headers).json()
        keys = {image["id"]: image["source_key"] for image in listing["images"]}
        detail = api.client.get(f"/images/{plain}", headers=headers).json()
        quarantine = api.client.get("/quarantine", headers=headers).json()
        jobs = api.client.get("/jobs", headers=headers).json()
        zipped = api.client.get("/images.zip", params={"modality": "MR"}, headers=headers)
        assert zipped.status_code == 200, zipped.text
        metadata = zipfile.ZipFile(io.BytesIO(zipped.content)).read("metadata.csv").decode()
        rows = {int(row["id"]): row for row in csv.DictReader(io.StringIO(metadata))}
        answers = json.dumps([listing, detail, quarantine, jobs]) + metadata
        assert (PATIENT_FOLDER in answers) is sees_folder, role
        if sees_folder:
            assert keys[plain].endswith(f"/{PATIENT_FOLDER}/study1/plain.dcm")
            assert detail["source_key"] == keys[plain] == rows[plain]["source_key"]
        else:
            assert keys[plain] == detail["source_key"] == rows[plain]["source_key"] == "plain.dcm"
            assert all("/" not in key for key in keys.values())
            assert [row["source_key"] for row in quarantine] == ["junk.dcm"]
            assert "/" not in json.dumps([job["parameters"] for job in jobs])


def test_originals_are_for_admins_and_everyone_gets_deidentified_objects(api: Api) -> None:
    image_id = ids_by_file(api)["plain.dcm"]
    for role in ("viewer", "curator"):
        refused = api.client.get(f"/images/{image_id}/original", headers=api.auth(role))
        assert refused.status_code == 403 and "admins" in refused.json()["detail"]
    answer = api.client.get(f"/images/{image_id}/original", headers=api.auth("admin"))
    assert answer.status_code == 200 and answer.content[128:132] == b"DICM"
    original = pydicom.dcmread(io.BytesIO(answer.content))
    for role in ("viewer", "curator"):
        got = api.client.get(f"/images/{image_id}/dicom", headers=api.auth(role))
        assert got.status_code == 200, got.text
        ds = pydicom.dcmread(io.BytesIO(got.content))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID != original.SOPInstanceUID and ds.SOPInstanceUID.startswith(
            "2.25."
        )
        assert str(original.PatientName) not in got.content.decode("latin-1")
        assert check(ds) == []
    api.client.post(
        "/cohorts", json={"name": "mr", "filter": {"modality": "MR"}}, headers=api.auth("curator")
    )
    for path in ("/images.zip", "/cohorts/mr.zip"):
        params = {"content": "original"} | ({"modality": "MR"} if path == "/images.zip" else {})
        refused = api.client.get(path, params=params, headers=api.auth("curator"))
        assert refused.status_code == 403 and "admins" in refused.json()["detail"]
        allowed = api.client.get(path, params=params, headers=api.auth("admin"))
        assert allowed.status_code == 200
        assert zipfile.ZipFile(io.BytesIO(allowed.content)).namelist()[0].endswith(".dcm")
        params["content"] = "dicom"
        shared_zip = api.client.get(path, params=params, headers=api.auth("viewer"))
        assert shared_zip.status_code == 200, shared_zip.text
        archive = zipfile.ZipFile(io.BytesIO(shared_zip.content))
        members = [name for name in archive.namelist() if name.endswith(".dcm")]
        assert members
        for name in members:
            ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
            assert ds.PatientIdentityRemoved == "YES" and check(ds) == []
        header = archive.read("metadata.csv").decode().splitlines()[0].split(",")
        assert "source_key" not in header and "sha256" not in header  # no way back
    actions = {
        event["action"] for event in api.client.get("/audit", headers=api.auth("admin")).json()
    }
    assert {"download.original", "download.deidentified"} <= actions


def test_burned_in_pixels_are_withheld_from_viewers(api: Api) -> None:
    ids = ids_by_file(api)
    burned, plain = ids["burned.dcm"], ids["plain.dcm"]
    with session_factory(api.lake.engine)() as session:
        flags = {
            name: (session.get(Image, image_id) or Image()).attributes["burned_in_annotation"]
            for name, image_id in (("burned", burned), ("plain", plain))
        }
        secondary_capture = session.scalar(select(Image.attributes).where(Image.modality == "NM"))
    assert flags == {"burned": "YES", "plain": "NO"}
    assert secondary_capture is not None and secondary_capture["burned_in_annotation"] == "YES"
    viewer, curator = api.auth("viewer"), api.auth("curator")
    for params in ({}, {"format": "jpeg", "size": 64}):
        refused = api.client.get(f"/images/{burned}/render", params=params, headers=viewer)
        assert refused.status_code == 403 and BURNED_IN_REASON in refused.json()["detail"]
        shown = api.client.get(f"/images/{burned}/render", params=params, headers=curator)
        assert shown.status_code == 200
    assert api.client.get(f"/images/{plain}/render", headers=viewer).status_code == 200
    listed = api.client.get("/images", params={"modality": "CT"}, headers=viewer).json()
    item = next(image for image in listed["images"] if image["id"] == burned)
    assert item["preview"] is None and item["withheld"] == BURNED_IN_REASON
    for content in ("preview", "rendered"):
        params = {"modality": "CT", "content": content}
        refused = api.client.get("/images.zip", params=params, headers=viewer)
        assert refused.status_code == 403 and BURNED_IN_REASON in refused.json()["detail"]
        assert str(burned) in refused.json()["detail"]
        assert api.client.get("/images.zip", params=params, headers=curator).status_code == 200
    # The web grid shows no thumbnail of it to a viewer, and a curator's does.
    page = TestClient(api.app)
    page.post("/ui/signin", data={"token": api.tokens["viewer"]})
    grid = page.get("/ui", params={"modality": "CT"}).text
    assert f'src="/images/{burned}/render"' not in grid and "withheld" in grid
    detail_page = page.get(f"/ui/images/{burned}").text
    assert f"/images/{burned}/render" not in detail_page and BURNED_IN_REASON in detail_page

    # A de-identified rendition, once it exists, is what viewers get instead.
    stand_in = io.BytesIO()
    PILImage.new("L", (32, 32), 7).save(stand_in, "PNG")
    api.lake.store.put_bytes("renditions/test/deidentified.png", stand_in.getvalue())
    with transaction(api.lake.engine) as session:
        session.add(
            Rendition(
                image_id=burned,
                name=DEIDENTIFIED,
                key="renditions/test/deidentified.png",
                width=32,
                height=32,
            )
        )
    served = api.client.get(f"/images/{burned}/render", headers=viewer)
    assert served.status_code == 200 and served.content == stand_in.getvalue()
    zipped = api.client.get("/images.zip", params={"modality": "CT"}, headers=viewer)
    assert zipped.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert archive.read(f"images/{burned}.png") == stand_in.getvalue()


def test_uploads_get_a_meaningful_key(api: Api) -> None:
    buffer = io.BytesIO()
    PILImage.new("L", (20, 10), 99).save(buffer, "PNG")
    raw = f"../../{PATIENT_FOLDER}/scan 1?.png"
    created = api.client.post(
        "/images", files={"file": (raw, buffer.getvalue())}, headers=api.auth("curator")
    )
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    curator = api.client.get(f"/images/{image_id}", headers=api.auth("curator")).json()
    assert re.fullmatch(r"upload/curator/\d{8}T\d{6}\.\d{6}Z/scan_1_\.png", curator["source_key"])
    assert curator["attributes"]["client_file_name"] == raw
    assert curator["attributes"]["uploaded_by"] == "curator"
    viewer = api.client.get(f"/images/{image_id}", headers=api.auth("viewer")).json()
    assert viewer["source_key"] == "scan_1_.png"
    assert PATIENT_FOLDER not in json.dumps(viewer)
    assert not list(Path("/").glob("scan*"))
