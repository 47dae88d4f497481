"""De-identified renditions (issue 13): `deidentify_images`, `radlake deid run/export`.

Real files: the Hitachi MR series (one study, one series, 4 slices) and pydicom's
CT/MR, on SQLite, PostgreSQL and MariaDB. What a user cares about: every DICOM image
gets an object that the PS3.15 check finds clean, UIDs are remapped consistently (one
study stays one study), the patient's pseudonym is the catalog's, re-running is a
no-op, and one bad original costs only itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import Engine, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.deid_models import DeidInstance
from radlake.catalog.models import Image
from radlake.catalog.queries import patient_pseudonyms
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.deid_check import check, check_path
from radlake.imaging.deid_profile import DeidOptions
from radlake.lake import Lake
from radlake.network.receiver import Receiver
from radlake.pipelines.deidentify import DeidPolicy, deidentify_images
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file, run_radlake, shared

HITACHI = ("dicom_dicom2nifti_hitachi_mr_only",)
RLE = "1.2.840.10008.1.2.5"


def _inputs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_file(name), folder / name)
    hitachi = shared(*HITACHI)
    for index, path in enumerate(sorted(p for p in hitachi.rglob("*") if p.is_file())):
        if path.read_bytes()[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
            shutil.copy(path, folder / f"hitachi_{index}.dcm")
    return folder


@pytest.fixture
def lake_on(catalog: Engine, tmp_path: Path) -> Lake:
    lake = Lake(catalog, open_store((tmp_path / "store").as_uri()), Pseudonymizer(SECRET))
    ingest(
        [_inputs(tmp_path / "in")],
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    return lake


def _original_uid(image: Image, level: str) -> str:
    series = image.series
    assert series is not None and series.study is not None
    return series.series_uid if level == "series_uid" else series.study.study_uid


def _ids(lake: Lake) -> list[int]:
    with session_factory(lake.engine)() as session:
        return list(session.scalars(select(Image.id).order_by(Image.id)))


def test_every_dicom_image_gets_a_clean_consistent_object(lake_on: Lake) -> None:
    lake = lake_on
    ids = _ids(lake)
    summary = deidentify_images(lake, ids)
    assert summary.written == len(ids) >= 6 and not summary.failed
    with session_factory(lake.engine)() as session:
        rows = {row.image_id: row for row in session.scalars(select(DeidInstance))}
        images = {image.id: image for image in session.scalars(select(Image))}
        pseudonyms = patient_pseudonyms(session, image_ids=ids)
        assert set(rows) == set(ids)
        hitachi = [i for i in ids if Path(images[i].source_key).name.startswith("hitachi")]
        assert len(hitachi) >= 4
        # The studies and series stay what they were: one original UID, one new UID.
        for level in ("study_uid", "series_uid"):
            pairs = {(_original_uid(images[i], level), getattr(rows[i], level)) for i in ids}
            originals, remapped = {a for a, _ in pairs}, {b for _, b in pairs}
            assert len(pairs) == len(originals) == len(remapped) < len(ids)
    assert len({rows[i].sop_uid for i in ids}) == len(ids)
    for image_id, row in rows.items():
        ds = pydicom.dcmread(io.BytesIO(lake.store.get_bytes(row.key)))
        original = pydicom.dcmread(io.BytesIO(lake.store.get_bytes(images[image_id].original_key)))
        assert check(ds) == [], image_id
        assert ds.SOPInstanceUID == row.sop_uid != original.SOPInstanceUID
        assert ds.StudyInstanceUID == row.study_uid != original.StudyInstanceUID
        assert ds.PatientID == row.patient_id == pseudonyms[image_id]
        assert row.header["00100020"]["Value"] == [pseudonyms[image_id]]
        assert row.header["00100010"]["Value"] == [{"Alphabetic": pseudonyms[image_id]}]
        if original.get("PatientBirthDate"):
            assert str(original.PatientBirthDate) not in json.dumps(row.header)
        assert ds.pixel_array.shape[-2:] == (images[image_id].rows, images[image_id].columns)
        assert (ds.pixel_array == original.pixel_array).all()  # no text found, none touched
        assert "7FE00010" not in row.header and row.header["00080018"]["Value"] == [row.sop_uid]

    again = deidentify_images(lake, ids)
    assert (again.written, again.skipped, again.stale) == (0, len(ids), 0)
    dates = DeidPolicy(options=DeidOptions(retain_longitudinal_modified_dates=True))
    changed = deidentify_images(lake, ids, policy=dates)  # options changed, no redo
    assert (changed.written, changed.stale) == (0, len(ids)) and "--redo" in changed.line()
    redo = deidentify_images(lake, ids, redo=True)
    assert redo.written == len(ids)
    with session_factory(lake.engine)() as session:
        after = {row.image_id: row.sop_uid for row in session.scalars(select(DeidInstance))}
    assert after == {image_id: row.sop_uid for image_id, row in rows.items()}  # keyed, stable


def test_one_bad_original_costs_only_itself(lake_on: Lake) -> None:
    lake = lake_on
    ids = _ids(lake)
    with session_factory(lake.engine)() as session:
        victim = session.get_one(Image, ids[0])
        key = victim.original_key
    lake.store.put_bytes(key, b"\0" * 200)  # the stored original went bad
    summary = deidentify_images(lake, ids)
    assert list(summary.failed) == [ids[0]]
    assert "cannot de-identify" in summary.failed[ids[0]]
    assert summary.written == len(ids) - 1


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_cli_run_and_export_give_a_clean_folder(catalog_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_radlake(home, "init").returncode == 0
    inputs = _inputs(tmp_path / "in")
    # MR_small in a second transfer syntax: one SOP Instance UID, two objects.
    shutil.copy(pydicom_file("MR_small_RLE.dcm"), inputs / "MR_small_RLE.dcm")
    assert run_radlake(home, "ingest", str(inputs)).returncode == 0
    ran = run_radlake(home, "deid", "run", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["written"] >= 6
    from radlake.config import Settings
    from radlake.lake import open_lake

    lake = open_lake(Settings(home=home))
    with transaction(lake.engine) as session:
        create_version(
            session,
            VersionRequest(
                dataset="mr", selection=ImageFilter(modality="MR"), spec=SplitSpec.parse("all=1")
            ),
        )
    lake.engine.dispose()
    out = tmp_path / "out"
    exported = run_radlake(home, "deid", "export", "mr", "--to", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    result = json.loads(exported.stdout)
    assert result["copied"] >= 5 and result["withheld"] == 0
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == result["copied"]
    assert all(path.relative_to(out).parts[:3] == ("mr", "v1", "all") for path in files)
    assert all(part.startswith("2.25.") for path in files for part in path.parts[-3:-1])
    assert check_path(out).clean
    twins = [path for path in files if pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLE]
    assert len(twins) == 1
    sop = str(pydicom.dcmread(twins[0]).SOPInstanceUID)
    assert len([path for path in files if path.stem.split("_")[0] == sop]) == 2
    verdict = run_radlake(home, "deid", "check", str(out))
    assert verdict.returncode == 0 and "clean" in verdict.stdout
    again = run_radlake(home, "deid", "export", "mr", "--to", str(out), "--json")
    assert json.loads(again.stdout)["copied"] == 0
    missing = run_radlake(home, "deid", "export", "nope", "--to", str(out))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    no_split = run_radlake(home, "deid", "export", "mr", "--split", "nosuch", "--to", str(out))
    assert no_split.returncode != 0 and "no split 'nosuch'" in no_split.stderr


def test_receiver_deidentifies_on_receipt_when_asked(lake: Lake) -> None:
    from tests.test_receive import _send

    asking = dataclasses.replace(lake, deid=DeidPolicy(on_ingest=True))
    receiver = Receiver(asking, port=0, batch_seconds=0.2)
    receiver.start()
    try:
        files = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]
        statuses = _send(receiver, files)
        assert [status.Status for status in statuses] == [0, 0]
    finally:
        summary = receiver.stop()
    assert summary.catalogued == 2
    with session_factory(lake.engine)() as session:
        rows = list(session.scalars(select(DeidInstance)))
    assert len(rows) == 2
    for row in rows:
        assert check(pydicom.dcmread(io.BytesIO(lake.store.get_bytes(row.key)))) == []


def test_cli_ingest_deidentifies_when_the_setting_asks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_radlake(home, "init").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env |= {"RADLAKE_HOME": str(home), "RADLAKE_DEID_ON_INGEST": "true"}
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), inputs)
    shutil.copy(pydicom_file("MR_small.dcm"), inputs)
    done = subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", "ingest", str(inputs), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["catalogued"] == 2 and result["deidentified"]["written"] == 2
    plain = run_radlake(home, "ingest", str(inputs), "--json")  # the setting off: no deid
    assert "deidentified" not in json.loads(plain.stdout)


def test_burned_in_ultrasound_is_blanked_and_that_is_all_a_viewer_gets(
    lake: Lake, tmp_path: Path
) -> None:
    """A real ultrasound with a name and dates burned into its pixels (deid-data): the
    de-identified object has them blanked and says so; a viewer's picture, download
    and DICOMweb retrieval all come from it."""
    deid_data = pytest.importorskip("deid_data.data", reason="deid-data is not installed")
    from fastapi.testclient import TestClient

    from radlake.api.app import create_app
    from radlake.auth import Role, create_token

    source = Path(deid_data.data_base) / "ultrasounds" / "RGB_IMAGE.dcm"
    (tmp_path / "in").mkdir()
    shutil.copy(source, tmp_path / "in" / "us.dcm")
    ingest(
        [tmp_path / "in"],
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    (image_id,) = _ids(lake)
    summary = deidentify_images(lake, [image_id])
    assert (summary.written, summary.blanked, summary.withheld) == (1, 1, 0)
    with session_factory(lake.engine)() as session:
        row = session.scalars(select(DeidInstance)).one()
    assert row.pixels == "blanked" and row.text_regions >= 2
    ds = pydicom.dcmread(io.BytesIO(lake.store.get_bytes(row.key)))
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert "113101" in codes and ds.BurnedInAnnotation == "NO" and check(ds) == []
    original = pydicom.dcmread(source).pixel_array
    assert (ds.pixel_array[:30] != original[:30]).any()  # the header band changed
    assert (ds.pixel_array[:30] == 0).mean() > (original[:30] == 0).mean()

    with transaction(lake.engine) as session:
        token = create_token(session, name="v", role=Role.VIEWER)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(lake)) as client:
        picture = client.get(f"/images/{image_id}/render", headers=headers)
        assert picture.status_code == 200
        assert picture.content == lake.store.get_bytes(
            f"derived/{row.key.split('/')[1]}/deidentified.png"
        )
        download = client.get(f"/images/{image_id}/dicom", headers=headers)
        assert download.status_code == 200 and download.content == lake.store.get_bytes(row.key)
        wado = client.get(
            f"/dicomweb/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}",
            headers=headers | {"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert wado.status_code == 200 and lake.store.get_bytes(row.key) in wado.content
        assert client.get(f"/images/{image_id}/original", headers=headers).status_code == 403


def test_file_meta_and_bare_datasets(lake: Lake, tmp_path: Path) -> None:
    """Group 0002 is rebuilt (its AE titles and Private Information can name a site or
    a patient, and Table E.1-1 has no rows for them); a bare dataset without preamble or
    meta, catalogued as DICOM, is de-identified into a proper Part 10 file."""
    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.SourceApplicationEntityTitle = "ZQSRCAE"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"ZQPRIVATE Patient John Smith 19440101"
    ds.save_as(folder / "meta.dcm")
    assert {f.path for f in check(pydicom.dcmread(folder / "meta.dcm"))} >= {
        "SourceApplicationEntityTitle",
        "PrivateInformation",
    }
    bare = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del bare.file_meta
    bare.preamble = None
    bare.save_as(folder / "bare.dcm", enforce_file_format=False, implicit_vr=True)
    assert (folder / "bare.dcm").read_bytes()[128:132] != b"DICM"
    # A real secondary capture with no Study, Series or SOP Instance UID at all.
    shutil.copy(pydicom_file("SC_rgb_jls_lossy_line.dcm"), folder / "no_uids.dcm")
    ingest(
        [folder],
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    ids = _ids(lake)
    assert len(ids) == 3
    summary = deidentify_images(lake, ids)
    assert summary.written == 3 and not summary.failed
    with session_factory(lake.engine)() as session:
        rows = list(session.scalars(select(DeidInstance)))
    for row in rows:
        data = lake.store.get_bytes(row.key)
        assert data[128:132] == b"DICM" and b"ZQ" not in data
        out = pydicom.dcmread(io.BytesIO(data))
        assert check(out) == []
        assert {elem.tag.element for elem in out.file_meta} <= {0, 1, 2, 3, 0x10, 0x12, 0x13}
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == row.sop_uid
        assert row.study_uid.startswith("2.25.") and row.series_uid.startswith("2.25.")


def test_lost_or_changed_objects_are_found_and_made_again(lake_on: Lake) -> None:
    """verify reports a de-identified object the store lost or changed, and repair
    makes it again; a download meanwhile makes it again instead of serving garbage."""
    from fastapi.testclient import TestClient

    from radlake.api.app import create_app
    from radlake.auth import Role, create_token
    from radlake.pipelines.verify import verify_lake

    lake = lake_on
    ids = _ids(lake)
    deidentify_images(lake, ids)
    with session_factory(lake.engine)() as session:
        rows = {row.image_id: row for row in session.scalars(select(DeidInstance))}
    changed, lost = rows[ids[0]], rows[ids[1]]
    lake.store.put_bytes(changed.key, b"garbage")
    lake.store.delete(lost.key)

    def remake(image_ids: list[int]) -> dict[int, str]:
        return deidentify_images(lake, image_ids, redo=True).failed

    found = verify_lake(engine=lake.engine, store=lake.store)
    problems = {(f.kind, f.target, f.image_id) for f in found.findings}
    assert problems == {("corrupt", "deidentified", ids[0]), ("missing", "deidentified", ids[1])}

    with transaction(lake.engine) as session:
        token = create_token(session, name="v", role=Role.VIEWER)
    with TestClient(create_app(lake)) as client:
        answer = client.get(f"/images/{ids[0]}/dicom", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.content != b"garbage"
    assert check(pydicom.dcmread(io.BytesIO(answer.content))) == []

    repaired = verify_lake(
        engine=lake.engine, store=lake.store, repair=True, remake_deidentified=remake
    )
    assert [(f.image_id, f.repaired) for f in repaired.findings] == [(ids[1], True)]
    assert verify_lake(engine=lake.engine, store=lake.store).sound


def test_exports_take_burned_in_pixels_from_the_de_identified_object(
    lake: Lake, tmp_path: Path
) -> None:
    """A YOLO export of a version holding a real ultrasound with burned-in text: refused
    (with the command to run) until it is de-identified, then its picture is the object
    with the text blanked, not the original."""
    deid_data = pytest.importorskip("deid_data.data", reason="deid-data is not installed")
    from PIL import Image as PILImage

    from radlake.curation.versions import DatasetError
    from radlake.formats.sink import FolderSink
    from radlake.pipelines.export import export_version

    (tmp_path / "in").mkdir()
    shutil.copy(Path(deid_data.data_base) / "ultrasounds" / "RGB_IMAGE.dcm", tmp_path / "in")
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "in")
    ingest(
        [tmp_path / "in"],
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    with transaction(lake.engine) as session:
        create_version(
            session,
            VersionRequest(dataset="us", selection=ImageFilter(), spec=SplitSpec.parse("all=1")),
        )

    def export(out: Path) -> None:
        export_version(
            engine=lake.engine, store=lake.store, dataset="us", version=None, fmt="yolo",
            sink=FolderSink(out), location=str(out), size=None,
        )  # fmt: skip

    with pytest.raises(DatasetError, match="radlake deid run --dataset us"):
        export(tmp_path / "before")
    assert deidentify_images(lake, _ids(lake)).blanked == 1
    export(tmp_path / "after")
    (picture,) = (tmp_path / "after").rglob("RGB_IMAGE*.png")
    with PILImage.open(picture) as opened:
        exported = np.asarray(opened.convert("RGB"))
    original = pydicom.dcmread(Path(deid_data.data_base) / "ultrasounds" / "RGB_IMAGE.dcm")
    band = original.pixel_array[:30]
    assert (band > 40).mean() > 0.01  # the original's header band has bright text
    assert (exported[:30] > 40).mean() < (band > 40).mean() / 4  # blanked in the export
