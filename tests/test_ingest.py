"""The ingest pipeline on the embedded default (SQLite + local folder), real files."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from radlake.catalog.db import session_factory
from radlake.catalog.models import Image, Job, Quarantine, Rendition, Series
from radlake.catalog.queries import ImageFilter, find_images
from radlake.domain import ImageFormat, Plane
from radlake.imaging.formats import reader_for
from radlake.imaging.render import render
from radlake.lake import Lake
from radlake.pipelines.discover import InputPathError
from radlake.pipelines.executor import LocalProcessExecutor, SerialExecutor
from radlake.pipelines.ingest import IngestSummary, ingest
from tests.conftest import PYDICOM_FILES, pydicom_file, shared


def run(lake: Lake, *paths: Path, workers: int = 1) -> IngestSummary:
    executor = SerialExecutor() if workers == 1 else LocalProcessExecutor(workers)
    return ingest(
        list(paths),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=executor,
    )


def quarantine_reasons(lake: Lake) -> dict[str, str]:
    with session_factory(lake.engine)() as session:
        return {Path(q.source_key).name: q.reason for q in session.scalars(select(Quarantine))}


def count(lake: Lake, model: type) -> int:
    with session_factory(lake.engine)() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_every_pydicom_file_is_accounted_for(lake: Lake) -> None:
    files = [p for p in PYDICOM_FILES.rglob("*") if p.is_file()]
    summary = run(lake, PYDICOM_FILES)
    assert summary.inputs == len(files)
    assert summary.catalogued + summary.already_present + summary.quarantined == len(files)
    assert count(lake, Image) == summary.catalogued
    assert count(lake, Quarantine) == summary.quarantined
    reasons = quarantine_reasons(lake)
    assert all(reason.strip() for reason in reasons.values())
    assert "truncated" in reasons["MR_truncated.dcm"]
    assert reasons["test-SR.dcm"].startswith("no pixel data")
    assert reasons["README.txt"].startswith("not an image")
    assert reasons["JPEG-lossy.dcm"].startswith("undecodable transfer syntax")


def test_bad_inputs_are_quarantined_and_the_batch_goes_on(lake: Lake, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), batch / "good.dcm")
    (batch / "empty.dcm").write_bytes(b"")
    (batch / "random.dcm").write_bytes(np.random.default_rng(3).bytes(5000))
    (batch / "truncated.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:20_000])
    buffer = io.BytesIO()
    PILImage.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buffer, "PNG")
    (batch / "actually_png.dcm").write_bytes(buffer.getvalue())
    volume = np.ones((6, 6, 3), np.float32)
    volume[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), batch / "nans.nii.gz")
    loop = batch / "loop"
    loop.mkdir()
    (loop / "back_up").symlink_to(batch)
    (batch / "self_link.dcm").symlink_to(batch / "self_link.dcm")
    (batch / "dangling.dcm").symlink_to(batch / "missing.dcm")

    summary = run(lake, batch)

    # 6 files + a folder link back up + 2 bad symlinks; png and NIfTI are catalogued.
    assert summary.inputs == 9
    assert (summary.catalogued, summary.quarantined) == (3, 6)
    reasons = quarantine_reasons(lake)
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert reasons["random.dcm"].startswith("not an image")
    assert "truncated" in reasons["truncated.dcm"] or "unreadable" in reasons["truncated.dcm"]
    assert reasons["back_up"].startswith("symlink loop")
    assert reasons["self_link.dcm"].startswith("symlink loop")
    assert reasons["dangling.dcm"].startswith("broken symlink")
    with session_factory(lake.engine)() as session:
        formats = Counter(session.scalars(select(Image.format)))
        stored_random = session.scalar(
            select(Quarantine.stored_key).where(Quarantine.source_key.endswith("random.dcm"))
        )
    assert formats == Counter({"dicom": 1, "png": 1, "nifti": 1})
    assert stored_random is not None
    assert lake.store.get_bytes(stored_random) == (batch / "random.dcm").read_bytes()


def test_reingest_is_a_no_op(lake: Lake, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(pydicom_file(name), folder / name)
    shutil.copy(pydicom_file("MR_small.dcm"), folder / "same_bytes_again.dcm")
    first = run(lake, folder)
    assert (first.catalogued, first.already_present, first.quarantined) == (2, 1, 1)
    second = run(lake, folder)
    assert (second.catalogued, second.already_present, second.quarantined) == (0, 3, 1)
    assert count(lake, Image) == 2
    assert count(lake, Quarantine) == 1
    assert count(lake, Rendition) == 2
    with session_factory(lake.engine)() as session:
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert jobs[1].counts["already_present"] == 3


def test_originals_and_previews_are_in_the_store(lake: Lake) -> None:
    run(lake, pydicom_file("CT_small.dcm"), pydicom_file("rtdose.dcm"))
    with session_factory(lake.engine)() as session:
        images = list(session.scalars(select(Image)))
        for image in images:
            original = lake.store.get_bytes(image.original_key)
            assert len(original) == image.size_bytes
            assert image.original_key == f"raw/{image.sha256[:2]}/{image.sha256}.dcm"
            (preview,) = image.renditions
            assert preview.key == f"derived/{image.sha256}/preview.png"
            picture = PILImage.open(io.BytesIO(lake.store.get_bytes(preview.key)))
            assert picture.mode == "L"
            assert max(picture.size) == 512
            assert picture.size == (preview.width, preview.height)


def test_missing_path_fails_before_anything_happens(lake: Lake, tmp_path: Path) -> None:
    with pytest.raises(InputPathError, match="no such file"):
        run(lake, tmp_path / "nope")
    assert count(lake, Job) == 0


def test_ge_series_grouped_in_slice_order(lake: Lake) -> None:
    folder = shared("dicom_dcm_qa_nih_ge_siemens_mr", "data", "In", "20180918GE")
    summary = run(lake, folder, workers=2)
    assert summary.catalogued == 600
    assert summary.quarantined == 5  # the README text files, each with its reason
    with session_factory(lake.engine)() as session:
        series = list(session.scalars(select(Series).where(Series.modality == "MR")))
        assert len(series) == 4
        for one in series:
            images = find_images(
                session, selection=ImageFilter(series_uid=one.series_uid), limit=None
            )
            assert len(images) == 150
            assert [image.instance_number for image in images] == list(range(1, 151))
            for volume in range(10):  # 15 slices x 10 time points
                block = [image.slice_position for image in images[volume * 15 : volume * 15 + 15]]
                steps = np.diff(np.array(block, dtype=float))
                assert np.allclose(np.abs(steps), 5.0, atol=0.01), one.description
                assert len(set(np.sign(steps))) == 1
            assert {image.series.study.study_uid for image in images} == {series[0].study.study_uid}


def test_enhanced_mr_and_objects_without_pixels(lake: Lake) -> None:
    folder = shared("dicom_heudiconv_testdata_siemens_mr", "data")
    summary = run(lake, folder)
    reasons = quarantine_reasons(lake)
    assert reasons["99+PhoenixDocument+00001.dcm"].startswith("no pixel data")
    assert reasons["LICENSE"].startswith("not an image")
    assert summary.catalogued == 11
    with session_factory(lake.engine)() as session:
        frames = sorted(
            session.scalars(select(Image.frames).where(Image.source_key.contains("xa_4d")))
        )
    assert frames == [26, 34]


def test_nifti_volumes_render_on_all_planes_from_the_store(lake: Lake) -> None:
    folder = shared("nifti_nilearn_mni152_templates", "data")
    summary = run(lake, folder)
    assert summary.catalogued == 4
    with session_factory(lake.engine)() as session:
        images = list(session.scalars(select(Image).where(Image.format == "nifti")))
    for image in images:
        assert (image.columns, image.rows, image.slices) in {(197, 233, 189), (53, 63, 46)}
        source = reader_for(ImageFormat.NIFTI).open_pixels(lake.store.get_bytes(image.original_key))
        for plane in Plane:
            picture = np.asarray(render(source, plane=plane).image)
            assert picture.std() > 10, (image.source_key, plane)


def test_private_by_default_no_identifiers_in_the_catalog(lake: Lake, tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientName = "Doe^Jane^Radlaketest"
    ds.PatientID = "PID-RADLAKE-777"
    ds.PatientBirthDate = "19650304"
    ds.PatientAddress = "12 Hidden Lane"
    path = tmp_path / "identified.dcm"
    ds.save_as(path)
    run(lake, path)
    database = Path(str(lake.engine.url.database))
    lake.engine.dispose()  # checkpoint the WAL so every row is in the file
    raw = database.read_bytes()
    for identifier in ("Doe^Jane", "PID-RADLAKE-777", "19650304", "Hidden Lane"):
        assert identifier.encode() not in raw, identifier
    assert lake.pseudonymizer("PID-RADLAKE-777").encode() in raw
    # The original is kept byte for byte, in the private store only.
    assert b"PID-RADLAKE-777" in lake.store.get_bytes(
        next(k for k in lake.store.list("raw/") if k.endswith(".dcm"))
    )
