"""Source adapters on datasets written in each exact layout, and on the real NIH files."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, event, select

from radlake.catalog.db import session_factory
from radlake.catalog.models import (
    Image,
    Label,
    LabelClass,
    Patient,
    Quarantine,
    Series,
    Source,
    Study,
)
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.ingest import ingest
from radlake.pipelines.source_load import SourceSummary, load_source
from radlake.sources.base import SourceLoad
from radlake.sources.covid_cxr import finding_levels, normalise_view, read_covid_cxr
from radlake.sources.csvfile import SourceFormatError
from radlake.sources.nih_cxr14 import read_nih_cxr14
from radlake.sources.vinbigdata import read_vinbigdata
from tests.conftest import pydicom_file, shared

VIN_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


def load(lake: Lake, parsed: SourceLoad) -> SourceSummary:
    return load_source(
        parsed,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )


def labels_of(lake: Lake, key: str) -> list[Label]:
    with session_factory(lake.engine)() as session:
        return list(
            session.scalars(select(Label).where(Label.source_image_key == key).order_by(Label.id))
        )


@contextmanager
def image_updates(engine: Engine) -> Iterator[list[str]]:
    """The UPDATE statements on the image table run while the block runs."""
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE IMAGE "):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def write_png(path: Path, width: int, height: int) -> None:
    """A distinct small greyscale image per file name (equal bytes would be one image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    PILImage.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(path)


class TestVinBigData:
    def write(self, root: Path, *, png: bool, meta: bool = True) -> None:
        rows = [
            "aaa,Aortic enlargement,0,R8,1000,500,1400,900",
            "aaa,Cardiomegaly,3,R9,800,1200,2000,1800",
            "aaa,Aortic enlargement,0,R10,1010,490,1390,910",
            "bbb,No finding,14,R1,,,,",
            "bbb,No finding,14,R2,,,,",
            "bbb,No finding,14,R3,,,,",
            "ccc,Nodule/Mass,8,R11,10,20,30,40",
        ]
        root.mkdir(parents=True, exist_ok=True)
        (root / "train.csv").write_text(VIN_HEADER + "\n".join(rows) + "\n")
        if png:
            write_png(root / "train" / "aaa.png", 1024, 1024)
            write_png(root / "train" / "bbb.png", 1024, 1024)
            if meta:
                (root / "train_meta.csv").write_text(
                    "image_id,dim0,dim1\naaa,2048,2560\nbbb,3000,2400\n"
                )
        else:
            (root / "train").mkdir(exist_ok=True)
            (root / "train" / "aaa.dicom").write_bytes(pydicom_file("CT_small.dcm").read_bytes())

    def test_resized_png_boxes_are_rescaled_exactly(self, lake: Lake, tmp_path: Path) -> None:
        self.write(tmp_path / "vin", png=True)
        summary = load(lake, read_vinbigdata(tmp_path / "vin"))
        assert (summary.records, summary.linked, summary.missing) == (3, 2, ["ccc"])
        aaa = labels_of(lake, "aaa")
        assert [(label.class_name, label.reader) for label in aaa][:2] == [
            ("Aortic enlargement", "R8"),
            ("Cardiomegaly", "R9"),
        ]
        first = aaa[0]  # original 2560 x 2048 (cols x rows) -> stored 1024 x 1024
        assert first.x_min == pytest.approx(1000 * 1024 / 2560)
        assert first.y_min == pytest.approx(500 * 1024 / 2048)
        assert first.x_max == pytest.approx(1400 * 1024 / 2560)
        assert first.y_max == pytest.approx(900 * 1024 / 2048)
        no_finding = labels_of(lake, "bbb")
        assert {(label.class_name, label.x_min) for label in no_finding} == {("No finding", None)}
        assert {label.reader for label in no_finding} == {"R1", "R2", "R3"}
        # Labels-only image: kept, in the CSV's own coordinates, waiting for its image.
        (ccc,) = labels_of(lake, "ccc")
        assert (ccc.image_id, ccc.x_min, ccc.y_max) == (None, 10, 40)
        with session_factory(lake.engine)() as session:
            image = session.scalar(select(Image).where(Image.id == aaa[0].image_id))
            assert image is not None
            assert image.attributes["original_columns"] == 2560
            assert image.modality == "DX"
            taxonomy = {
                name: class_id
                for name, class_id in session.execute(select(LabelClass.name, LabelClass.class_id))
            }
        assert taxonomy["No finding"] == 14
        assert taxonomy["Nodule/Mass"] == 8

    def test_rerun_replaces_labels_and_links_late_images(self, lake: Lake, tmp_path: Path) -> None:
        root = tmp_path / "vin"
        self.write(root, png=True)
        load(lake, read_vinbigdata(root))
        write_png(root / "train" / "ccc.png", 512, 512)
        with (root / "train_meta.csv").open("a") as meta:
            meta.write("ccc,1024,1024\n")
        summary = load(lake, read_vinbigdata(root))
        assert summary.missing == []
        # Only the new file is read; the two known ones pass the path + size check.
        assert summary.ingest is not None
        assert (summary.ingest.inputs, summary.ingest.catalogued) == (1, 1)
        (ccc,) = labels_of(lake, "ccc")
        assert ccc.image_id is not None
        assert (ccc.x_min, ccc.y_max) == (5, 20)  # rescaled by 512/1024 now
        assert len(labels_of(lake, "aaa")) == 3  # replaced, not duplicated

    def test_dicom_variant_keeps_original_coordinates(self, lake: Lake, tmp_path: Path) -> None:
        self.write(tmp_path / "vin", png=False)
        summary = load(lake, read_vinbigdata(tmp_path / "vin"))
        assert summary.linked == 1
        assert labels_of(lake, "aaa")[0].x_min == 1000

    def test_resized_png_without_meta_is_refused(self, tmp_path: Path) -> None:
        self.write(tmp_path / "vin", png=True, meta=False)
        with pytest.raises(SourceFormatError, match=r"train_meta\.csv"):
            read_vinbigdata(tmp_path / "vin")

    def test_missing_columns_are_named(self, tmp_path: Path) -> None:
        (tmp_path / "train.csv").write_text("image_id,class_name\nx,y\n")
        with pytest.raises(SourceFormatError, match="class_id"):
            read_vinbigdata(tmp_path)


class TestCovid:
    HEADER = (
        "patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,"
        "intubation_present,went_icu,in_icu,needed_supplemental_O2,extubated,temperature,"
        "pO2_saturation,leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,date,"
        "location,folder,filename,doi,url,license,clinical_notes,other_notes,\n"
    )

    def row(self, patient: str, finding: str, view: str, filename: str, lic: str) -> str:
        return (
            f"{patient},3,M,65,{finding},Y,Y,N,N,N,N,Y,N,38.5,91,,,,{view},X-ray,2020,"
            f"Città,images,{filename},10.1/x,https://example.org/{filename},{lic},"
            "Patient narrative with details,,\n"
        )

    def write(self, root: Path, encoding: str) -> None:
        (root / "images").mkdir(parents=True)
        write_png(root / "images" / "p1a.png", 64, 48)
        write_png(root / "images" / "p1b.png", 64, 48)
        text = (
            self.HEADER
            + self.row("1", "Pneumonia/Viral/COVID-19", "AP Supine", "p1a.png", "CC BY 4.0")
            + self.row("1", "Pneumonia/Viral/COVID-19", "ap_erect", "p1b.png", "CC BY-NC-SA")
            + self.row("2", "No Finding", "Lateral", "gone.png", "CC BY 4.0")
        )
        (root / "metadata.csv").write_bytes(text.encode(encoding))

    @pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
    def test_layout_quirks(self, lake: Lake, tmp_path: Path, encoding: str) -> None:
        root = tmp_path / "covid"
        self.write(root, encoding)
        summary = load(lake, read_covid_cxr(root))
        assert (summary.records, summary.linked) == (3, 2)
        assert [label.class_name for label in labels_of(lake, "p1a.png")] == [
            "Pneumonia",
            "Pneumonia/Viral",
            "Pneumonia/Viral/COVID-19",
        ]
        with session_factory(lake.engine)() as session:
            (reason,) = session.scalars(select(Quarantine.reason))
            images = {i.attributes["source_key"]: i for i in session.scalars(select(Image))}
            patients = session.scalar(select(Patient.id).join(Study).join(Series).distinct())
        assert reason == "file listed in metadata.csv is absent: images/gone.png"
        first = images["p1a.png"]
        assert first.view_position == "AP Supine"
        assert images["p1b.png"].view_position == "AP Erect"
        assert first.modality == "DX"
        assert first.attributes["license"] == "CC BY 4.0"
        assert first.attributes["doi"] == "10.1/x"
        assert first.attributes["temperature"] == 38.5
        assert first.attributes["RT_PCR_positive"] == "Y"
        assert "clinical_notes" not in first.attributes  # free text stays out
        assert patients is not None
        # Both images of patient 1 are under one pseudonymous patient.
        with session_factory(lake.engine)() as session:
            owners = {
                session.scalar(
                    select(Study.patient_id).join(Series).where(Series.id == image.series_id)
                )
                for image in images.values()
            }
        assert len(owners) == 1

    def test_new_images_are_written_once(self, lake: Lake, tmp_path: Path) -> None:
        """A first load writes each new image's row with the source's metadata, and a
        re-run of an unchanged source writes no image at all (issue 8)."""
        root = tmp_path / "covid"
        self.write(root, "utf-8")
        with image_updates(lake.engine) as updates:
            first = load(lake, read_covid_cxr(root))
            again = load(lake, read_covid_cxr(root))
        assert updates == []
        assert first.ingest is not None and first.ingest.catalogued == 2
        assert again.ingest is None  # both pass the path + size check
        assert len(labels_of(lake, "p1a.png")) == 3  # replaced, not duplicated
        with session_factory(lake.engine)() as session:
            rows = session.execute(
                select(Image.view_position, Image.series_id, Source.name).join(Source)
            ).all()
        assert sorted(view for view, _, _ in rows) == ["AP Erect", "AP Supine"]
        assert all(series is not None and name == "covid-chestxray" for _, series, name in rows)

    def test_dataset_claims_images_first_ingested_as_a_folder(
        self, lake: Lake, tmp_path: Path
    ) -> None:
        root = tmp_path / "covid"
        self.write(root, "utf-8")
        ingest(
            [root / "images"],
            engine=lake.engine,
            store=lake.store,
            pseudonymizer=lake.pseudonymizer,
            executor=SerialExecutor(),
        )
        with image_updates(lake.engine) as updates:
            summary = load(lake, read_covid_cxr(root))
        assert summary.ingest is None and summary.linked == 2  # not read again
        assert len(updates) == 1  # one bulk update of the two known rows
        with session_factory(lake.engine)() as session:
            rows = session.execute(
                select(Image.attributes, Image.modality, Image.series_id, Source.name).join(Source)
            ).all()
        assert {attributes["source_key"] for attributes, *_ in rows} == {"p1a.png", "p1b.png"}
        assert {(modality, name) for _, modality, _, name in rows} == {("DX", "covid-chestxray")}
        assert all(series is not None for _, _, series, _ in rows)

    def test_helpers(self) -> None:
        assert finding_levels("Pneumonia/Viral/COVID-19")[-1] == "Pneumonia/Viral/COVID-19"
        assert finding_levels("todo") == ["todo"]
        assert normalise_view("ap supine") == "AP Supine"
        assert normalise_view("Coronal") == "Coronal"
        assert normalise_view("L") == "L"


def test_real_nih_files_labels_only_and_present_images(lake: Lake) -> None:
    root = shared("cxr_nih_chestxray14_bbox_subset", "data")
    summary = load(lake, read_nih_cxr14(root))
    assert summary.records == 112_120
    assert summary.linked == 6
    assert len(summary.missing) == 112_114
    assert summary.boxes == 984
    (box,) = [label for label in labels_of(lake, "00000032_037.png") if label.x_min is not None]
    # BBox_List: 00000032_037.png Infiltrate x=339.166 y=119.196 w=172.292 h=351.086 (1024 px)
    assert box.class_name == "Infiltrate"
    assert box.x_min == pytest.approx(339.166137566138)
    assert box.x_max == pytest.approx(339.166137566138 + 172.292063492064)
    image_level = {label.class_name for label in labels_of(lake, "00000001_000.png")}
    assert image_level == {"Cardiomegaly"}
    with session_factory(lake.engine)() as session:
        image = session.scalar(
            select(Image).where(Image.id == labels_of(lake, "00000001_000.png")[0].image_id)
        )
    assert image is not None
    assert image.view_position == "PA"
    assert image.attributes["patient_age"] == 57
    assert (image.columns, image.rows) == (512, 512)
