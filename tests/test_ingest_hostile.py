"""Poison inputs through the whole ingest, on SQLite, PostgreSQL and MariaDB: each
gets its stated outcome and the rest of the folder is catalogued (issue 7)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, func, select

from radlake.catalog.db import session_factory
from radlake.catalog.models import Image, Quarantine, Series
from radlake.catalog.queries import list_quarantine
from radlake.imaging.deid import Pseudonymizer
from radlake.pipelines.discover import key_of_path, path_of_key
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import IngestLimits, IngestSummary, ingest
from radlake.storage.keys import raw_key
from radlake.storage.store import ObjectStore, open_store
from tests.conftest import SECRET, pydicom_file
from tests.test_imaging_limits import _jpeg_claiming, _png_claiming

LONG_MANUFACTURER = "M" * 150


def _dicom(path: Path, **values: object) -> Path:
    """CT_small with fresh UIDs (a distinct sha256) and the given attributes."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the hostile values we want
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


def _ingest(folder: Path, engine: Engine, store: ObjectStore, **limits: int) -> IngestSummary:
    return ingest(
        [folder],
        engine=engine,
        store=store,
        pseudonymizer=Pseudonymizer(SECRET),
        executor=SerialExecutor(),
        limits=IngestLimits(**limits) if limits else None,
    )


def _reasons(engine: Engine) -> dict[str, str]:
    with session_factory(engine)() as session:
        return {row.source_key: row.reason for row in list_quarantine(session)}


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    return open_store((tmp_path / "store").as_uri())


def test_names_that_are_not_utf8_are_kept_losslessly(
    catalog: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    latin1 = os.fsdecode(os.fsencode(str(folder)) + b"/M\xfcller.dcm")
    weird_folder = os.fsdecode(os.fsencode(str(folder)) + b"/\xff\xfe")
    _dicom(Path(latin1))
    _dicom(Path(weird_folder) / "a.dcm")
    (Path(weird_folder) / "notes.txt").write_bytes(b"not an image")
    for index in range(8):
        _dicom(folder / f"plain{index}.dcm")

    summary = _ingest(folder, catalog, local_store)

    assert (summary.inputs, summary.catalogued, summary.quarantined) == (11, 10, 1)
    with session_factory(catalog)() as session:
        keys = set(session.scalars(select(Image.source_key)))
    assert key_of_path(latin1) in keys
    assert key_of_path(latin1).endswith('M\\xfcller.dcm"')  # readable: the byte is shown
    assert os.fsencode(path_of_key(key_of_path(latin1))) == os.fsencode(latin1)  # lossless
    (junk_key,) = _reasons(catalog)
    assert os.fsencode(path_of_key(junk_key)).endswith(b"/\xff\xfe/notes.txt")
    assert _ingest(folder, catalog, local_store).already_present == 10  # re-run is a no-op


def test_overlong_and_nul_strings_fit_the_same_way_on_every_backend(
    catalog: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    _dicom(folder / "manufacturer.dcm", Manufacturer=LONG_MANUFACTURER)
    _dicom(folder / "modality.dcm", Modality="X" * 20)
    _dicom(folder / "body.dcm", BodyPartExamined="B" * 70)
    _dicom(folder / "view.dcm", ViewPosition="V" * 33)
    _dicom(folder / "nul.dcm", Manufacturer="GE\x00MEDICAL", SeriesDescription="T1\x00axial")
    _dicom(folder / "description.dcm", SeriesDescription="D" * 300)
    _dicom(folder / "long-uid.dcm", SeriesInstanceUID="1.2." + "3" * 72)
    for index in range(5):
        _dicom(folder / f"plain{index}.dcm")

    summary = _ingest(folder, catalog, local_store)

    assert (summary.catalogued, summary.quarantined) == (11, 1)
    reason = next(iter(_reasons(catalog).values()))
    assert "SeriesInstanceUID" in reason and "76" in reason and "64" in reason
    with session_factory(catalog)() as session:
        images = {Path(i.source_key).name: i for i in session.scalars(select(Image))}
        long = images["manufacturer.dcm"]
        assert long.manufacturer == "M" * 100
        assert long.attributes["full_values"]["manufacturer"] == LONG_MANUFACTURER
        assert images["modality.dcm"].attributes["full_values"]["modality"] == "X" * 20
        assert images["body.dcm"].body_part == "B" * 64
        assert images["view.dcm"].attributes["full_values"]["view_position"] == "V" * 33
        assert images["nul.dcm"].manufacturer == "GEMEDICAL"
        described = images["description.dcm"]
        assert described.attributes["full_values"]["series_description"] == "D" * 300
        assert described.series is not None and described.series.description == "D" * 200
        nul_series = images["nul.dcm"].series
        assert nul_series is not None and nul_series.description == "T1axial"


def test_size_bombs_and_oversized_inputs_are_quarantined_with_figures(
    catalog: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.jpg").write_bytes(_jpeg_claiming(16000, 16000))
    (folder / "bomb.png").write_bytes(_png_claiming(16384))
    _dicom(folder / "big.dcm")
    for index in range(4):
        _dicom(folder / f"plain{index}.dcm")

    # Both bombs claim less than the default budget (1 GiB decoded, sized for real
    # tomosynthesis and CT stacks) and catalogue under it; a lake set lower refuses them.
    summary = _ingest(folder, catalog, local_store, max_decoded_bytes=200 << 20)
    assert (summary.catalogued, summary.quarantined) == (5, 2)
    reasons = {Path(key).name: reason for key, reason in _reasons(catalog).items()}
    assert reasons["bomb.jpg"].startswith("too large to decode safely: 16000\u00d716000")
    assert reasons["bomb.png"].startswith("too large to decode safely: 16384\u00d716384")
    assert "> budget" in reasons["bomb.png"]

    other = tmp_path / "other"
    oversized = _dicom(other / "x.dcm")  # fresh UIDs: its size is its own, not big.dcm's
    summary = _ingest(other, catalog, local_store, max_input_bytes=oversized.stat().st_size - 1)
    assert summary.quarantined == 1
    reason = _reasons(catalog)[str(other / "x.dcm")]
    assert reason.startswith("too large to ingest") and "RADLAKE_MAX_INPUT_MB" in reason
    with session_factory(catalog)() as session:
        row = session.scalars(select(Quarantine).where(Quarantine.source_key.contains("x.dcm")))
        assert row.one().stored_key is None  # refused unread: nothing copied


def test_quarantine_shows_the_current_state(
    catalog: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    good = _dicom(folder / "scan.dcm")
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])  # truncated on arrival
    _dicom(folder / "other.dcm")
    assert _ingest(folder, catalog, local_store).quarantined == 1
    assert len(_reasons(catalog)) == 1

    good.write_bytes(data)  # the sender fixed it
    summary = _ingest(folder, catalog, local_store)
    assert (summary.catalogued, summary.already_present) == (1, 1)
    assert _reasons(catalog) == {}
    with session_factory(catalog)() as session:
        history = list_quarantine(session, include_resolved=True)
        assert len(history) == 1 and history[0].resolved_at is not None


def test_a_truncated_stored_original_is_rewritten_on_reingest(
    catalog: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    path = _dicom(folder / "scan.dcm")
    _ingest(folder, catalog, local_store)
    with session_factory(catalog)() as session:
        image = session.scalars(select(Image)).one()
    stored = Path(local_store.root) / image.original_key
    stored.write_bytes(path.read_bytes()[:100])

    assert _ingest(folder, catalog, local_store).already_present == 1

    assert local_store.get_bytes(raw_key(image.sha256, "dcm")) == path.read_bytes()
    with session_factory(catalog)() as session:
        assert session.scalar(select(func.count(Series.id))) == 1


def test_long_paths_and_absurd_spacing(
    catalog: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    deep = tmp_path / "in" / "/".join(["d" * 250] * 6)  # a path of ~1.6 kB
    broken = _dicom(deep / "scan.dcm")
    data = broken.read_bytes()
    broken.write_bytes(data[:500])
    spacing = _dicom(tmp_path / "in" / "spacing.dcm")
    raw = spacing.read_bytes()
    pixel_spacing = pydicom.dcmread(spacing).PixelSpacing
    old = "\\".join(str(value) for value in pixel_spacing).encode()
    spacing.write_bytes(raw.replace(old, b"nan\\inf" + b" " * (len(old) - 7)))

    first = _ingest(tmp_path / "in", catalog, local_store)
    assert (first.catalogued, first.quarantined) == (1, 1)
    (key,) = _reasons(catalog)
    assert key == str(deep / "scan.dcm")  # whole, not cut at 1,024 characters
    with session_factory(catalog)() as session:
        image = session.scalars(select(Image)).one()
    assert image.pixel_spacing_row is None and image.pixel_spacing_col is None

    broken.write_bytes(data)
    assert _ingest(tmp_path / "in", catalog, local_store).catalogued == 1
    assert _reasons(catalog) == {}  # the long path's row is resolved
