"""DICOMweb's catalog reads (catalog/dicomweb_queries.py) on SQLite, PostgreSQL and
MariaDB: real pydicom files ingested and de-identified by the lake's own pipeline,
then searched with every kind of key the QIDO-RS routes pass down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select, update

from radlake.catalog.db import transaction
from radlake.catalog.deid_models import PIXELS_WITHHELD, DeidInstance
from radlake.catalog.dicomweb_queries import (
    DateRange,
    QidoMatch,
    headers,
    locations,
    search_instances,
    search_series,
    search_studies,
    stored_instances,
)
from radlake.catalog.models import Image
from radlake.imaging.deid import Pseudonymizer
from radlake.imaging.deid_profile import DeidOptions
from radlake.lake import Lake
from radlake.pipelines.deidentify import DeidPolicy, deidentify_images
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.storage.store import open_store
from tests.conftest import SECRET, pydicom_file

# CT (patient 1CT1), MR (4MR1), a 10-frame MR without a patient ID, NM in JPEG 2000.
FILES = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "JPEG2000.dcm")
REPLICAS = 3  # CT_small copies: a second series of the CT study
# Dates shifted per patient (kept comparable) and descriptions kept, so both can be
# searched; no pixel check: these modalities are not text-prone anyway.
POLICY = DeidPolicy(
    DeidOptions(retain_longitudinal_modified_dates=True, clean_descriptors=True), "off"
)


def sample_file(name: str) -> Path:
    """A file of pydicom's test data or of pydicom-data (installed, never fetched)."""
    found = get_testdata_file(name, download=False)
    if not isinstance(found, str):
        pytest.skip(f"pydicom test file {name} is not installed (pydicom-data)")
    return Path(found)


def replicas(folder: Path) -> list[Path]:
    """CT_small copies in one new series of CT_small's study, numbered 3, 1, 2."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid(entropy_srcs=["dicomweb", "series"])
    made = []
    for copy, number in enumerate((3, 1, 2)):
        ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["dicomweb", str(copy)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.SeriesNumber = 99
        target = folder / f"ct-copy-{copy}.dcm"
        ds.save_as(target)
        made.append(target)
    return made


def build_deid_lake(engine: Engine, root: Path, paths: list[Path] | None = None) -> Lake:
    """A lake with paths (FILES and REPLICAS unless given) catalogued and de-identified."""
    lake = Lake(engine, open_store((root / "store").as_uri()), Pseudonymizer(SECRET), deid=POLICY)
    if paths is None:
        paths = [sample_file(name) for name in FILES] + replicas(root / "replicas")
    summary = ingest(
        paths,
        engine=engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    assert summary.catalogued == len(paths), summary.line()
    with transaction(engine) as session:
        ids = list(session.scalars(select(Image.id)))
    made = deidentify_images(lake, ids)
    assert made.written == len(paths) and not made.failed, made.line()
    return lake


@pytest.fixture
def lake(catalog: Engine, tmp_path: Path) -> Iterator[Lake]:
    yield build_deid_lake(catalog, tmp_path)


def _rows(lake: Lake) -> list[DeidInstance]:
    with transaction(lake.engine) as session:
        return list(session.scalars(select(DeidInstance)))


def test_studies_count_series_and_instances_and_list_modalities(lake: Lake) -> None:
    with transaction(lake.engine) as session:
        page = search_studies(session, match=QidoMatch(), limit=100, offset=0)
    assert not page.more and len(page.groups) == 4
    uids = [g.sample.study_uid for g in page.groups]
    assert uids == sorted(uids)
    ct = next(g for g in page.groups if g.modalities == ("CT",))
    assert (ct.series, ct.instances) == (2, 1 + REPLICAS)
    assert ct.sample.patient_id == lake.pseudonymizer("1CT1")
    originals = {pydicom.dcmread(sample_file(n)).StudyInstanceUID for n in FILES}
    assert not originals & set(uids), "an original StudyInstanceUID was answered"
    assert all(uid.startswith("2.25.") for uid in uids)


def test_keys_match_as_ps3_4_says(lake: Lake) -> None:
    def studies(**keys: object) -> list[str]:
        with transaction(lake.engine) as session:
            page = search_studies(session, match=QidoMatch(**keys), limit=100, offset=0)  # type: ignore[arg-type]
        return [g.sample.study_description or "" for g in page.groups]

    assert len(studies(modalities=("MR",))) == 2
    assert studies(modalities=("mr", "NM")) == studies(modalities=("MR", "NM"))
    assert len(studies(modalities=("MR", "NM"))) == 3
    assert studies(study_description="*BODY*") == ["Whole Body Bone"]
    assert studies(study_description="whole?body?bone") == ["Whole Body Bone"]
    assert studies(study_description="whole body bone") == ["Whole Body Bone"]
    # LIKE's own wildcards are literal characters in DICOM matching.
    assert studies(study_description="%") == []
    assert studies(study_description="whole_body_bone") == []
    assert studies(patient_id=lake.pseudonymizer("1CT1")) == ["e+1"]
    assert studies(patient_id=lake.pseudonymizer("1CT1")[:8] + "*") == ["e+1"]
    assert studies(patient_id="1CT1") == []  # the original ID is not there to match


def test_date_ranges_agree_with_the_rows_on_every_backend(lake: Lake) -> None:
    dates = sorted({row.study_date for row in _rows(lake) if row.study_date})
    assert len(dates) >= 3, dates
    middle = dates[1]
    ranges = [
        DateRange(middle, middle),
        DateRange(None, middle),
        DateRange(middle, None),
        DateRange(dates[0], dates[-1]),
        DateRange("19000101", "19000102"),
    ]
    for wanted in ranges:
        with transaction(lake.engine) as session:
            page = search_studies(session, match=QidoMatch(study_date=wanted), limit=100, offset=0)
        found = sorted(g.sample.study_uid for g in page.groups)
        expected = sorted(
            {
                row.study_uid
                for row in _rows(lake)
                if row.study_date
                and (wanted.first is None or row.study_date >= wanted.first)
                and (wanted.last is None or row.study_date <= wanted.last)
            }
        )
        assert found == expected, wanted


def test_pages_cover_every_answer_once(lake: Lake) -> None:
    with transaction(lake.engine) as session:
        whole = search_instances(session, match=QidoMatch(), limit=100, offset=0)[0]
        pieces, offset = [], 0
        while True:
            page, more = search_instances(session, match=QidoMatch(), limit=2, offset=offset)
            pieces += [row.sop_uid for row in page]
            offset += 2
            if not more:
                break
        series_pages = [
            search_series(session, match=QidoMatch(), limit=1, offset=n) for n in range(6)
        ]
    assert pieces == [row.sop_uid for row in whole] and len(pieces) == len(FILES) + REPLICAS
    assert [p.more for p in series_pages] == [True, True, True, True, False, False]
    assert [len(p.groups) for p in series_pages] == [1, 1, 1, 1, 1, 0]


def test_series_and_instances_of_a_study_in_instance_order(lake: Lake) -> None:
    with transaction(lake.engine) as session:
        ct = search_studies(session, match=QidoMatch(modalities=("CT",)), limit=9, offset=0)
        study = ct.groups[0].sample.study_uid
        series = search_series(session, match=QidoMatch(study_uids=(study,)), limit=9, offset=0)
        copies = next(g for g in series.groups if g.instances == REPLICAS).sample.series_uid
        found, _ = search_instances(
            session, match=QidoMatch(series_uids=(copies,)), limit=9, offset=0
        )
        numbered = search_series(session, match=QidoMatch(series_number=99), limit=9, offset=0)
        # Relational: an instance key finds its series and study, counted whole.
        by_sop = QidoMatch(sop_uids=(found[0].sop_uid,))
        its_series = search_series(session, match=by_sop, limit=9, offset=0)
        its_study = search_studies(session, match=by_sop, limit=9, offset=0)
    assert [(g.sample.series_uid, g.instances) for g in its_series.groups] == [(copies, REPLICAS)]
    assert [(g.series, g.instances) for g in its_study.groups] == [(2, 1 + REPLICAS)]
    assert sorted(g.instances for g in series.groups) == [1, REPLICAS]
    assert [row.instance_number for row in found] == [1, 2, 3]
    assert [g.sample.series_uid for g in numbered.groups] == [copies]


def test_withheld_instances_are_never_listed_nor_served(lake: Lake) -> None:
    with transaction(lake.engine) as session:
        copies, _ = search_instances(session, match=QidoMatch(instance_number=2), limit=9, offset=0)
        (hidden,) = [row for row in copies if row.series_number == 99]
        session.execute(
            update(DeidInstance).where(DeidInstance.id == hidden.id).values(pixels=PIXELS_WITHHELD)
        )
    with transaction(lake.engine) as session:
        study = hidden.study_uid
        page = search_studies(session, match=QidoMatch(study_uids=(study,)), limit=9, offset=0)
        by_sop = search_instances(
            session, match=QidoMatch(sop_uids=(hidden.sop_uid,)), limit=9, offset=0
        )
        stored = stored_instances(session, study_uid=study, series_uid=hidden.series_uid)
        found_headers = headers(session, study_uid=study)
        where = locations(session, image_ids=[hidden.image_id])
    assert (page.groups[0].series, page.groups[0].instances) == (2, REPLICAS)
    assert by_sop == ([], False)
    # Retrieval sees it (to answer 403 with the reason) with its verdict.
    assert [s.pixels for s in stored].count(PIXELS_WITHHELD) == 1 and len(stored) == REPLICAS
    assert len(found_headers) == REPLICAS
    assert hidden.sop_uid not in str(found_headers)
    assert where == {hidden.image_id: (study, hidden.series_uid, hidden.sop_uid)}
