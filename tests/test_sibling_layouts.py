"""The COVID-19 chest X-ray collection's siblings as they are downloaded (issue 9):
Figure1 (no file column, Windows-1252, images named by patient id), Actualmed (an
`imagename` column), conflicting rows, the `--column` map, and the real ieee8023 subset
ingested with `radlake source covid`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from radlake.catalog.db import session_factory
from radlake.catalog.models import Image, Label, Patient, Quarantine, Series, Source, Study
from radlake.config import Settings
from radlake.lake import Lake, open_lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.source_load import SourceSummary, load_source
from radlake.sources.base import SourceLoad
from radlake.sources.covid_cxr import read_covid_cxr
from radlake.sources.csvfile import SourceFormatError, decode_text, parse_column_map
from radlake.sources.vinbigdata import read_vinbigdata
from tests.conftest import run_radlake, shared

# The headers exactly as the collections publish them (agchung/Figure1-COVID-chestxray-dataset
# and agchung/Actualmed-COVID-chestxray-dataset, metadata.csv).
FIGURE1_HEADER = (
    "patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,"
    "originalfile,artifacts/distortion,notes"
)
ACTUALMED_HEADER = (
    "patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,"
    "imagename,artifacts/distortion,notes"
)
IEEE_HEADER = "patientid,sex,age,finding,view,modality,folder,filename,license,clinical_notes,"
ACTUALMED_NAME = "CR.1.2.840.113564.1722810170.20200318082923328940.1003000225002.png"


def write_image(path: Path, width: int = 48, height: int = 40) -> None:
    """A distinct small greyscale image per file name, in the format its extension says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    kind = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    PILImage.fromarray(pixels).save(path, format=kind)


def write_csv(root: Path, header: str, rows: list[str], encoding: str = "utf-8") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode(encoding))


def load(lake: Lake, parsed: SourceLoad) -> SourceSummary:
    return load_source(
        parsed,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )


def images_by_key(lake: Lake) -> dict[str, Image]:
    with session_factory(lake.engine)() as session:
        return {i.attributes["source_key"]: i for i in session.scalars(select(Image))}


def quarantine(lake: Lake) -> dict[str, str]:
    with session_factory(lake.engine)() as session:
        found = session.execute(select(Quarantine.source_key, Quarantine.reason))
        return {key: reason for key, reason in found}


def listed(root: Path, name: str, folder: str = "images") -> str:
    """The key the quarantine knows a listed file by: where the CSV says it is."""
    return str((root / folder / name).absolute())


def open_quarantine(lake: Lake) -> dict[str, str]:
    """Quarantine rows that still need a person (not resolved)."""
    with session_factory(lake.engine)() as session:
        found = session.execute(
            select(Quarantine.source_key, Quarantine.reason).where(Quarantine.resolved_at.is_(None))
        )
        return {key: reason for key, reason in found}


def patient_of(lake: Lake, image: Image) -> int | None:
    with session_factory(lake.engine)() as session:
        return session.scalar(
            select(Study.patient_id).join(Series).where(Series.id == image.series_id)
        )


class TestFigure1:
    """No file column; images/<patientid>.jpg|.png; Windows-1252."""

    ROWS = [
        "COVID-00001,13,M,33,COVID-19,,38.5°C,58,AP erect,X-ray,COVID-0001.jpeg,,"
        '"O2 saturation 58% … on room air"',
        "COVID-00002,,M,50+,,,,,AP erect,X-ray,COVID-0006.jpeg,,",
        "COVID-00003a,8,M,28,Pneumonia,,39.1,90,PA,X-ray,COVID-0024.jpeg,,",
        "COVID-00005,,,,,,,,,X-ray,,,",
    ]

    def write(self, root: Path) -> None:
        write_csv(root, FIGURE1_HEADER, self.ROWS, encoding="cp1252")
        write_image(root / "images" / "COVID-00001.jpg")
        write_image(root / "images" / "COVID-00002.png")
        write_image(root / "images" / "COVID-00003a.JPG")  # extension case differs
        # COVID-00005 is listed but has no image: quarantined as absent

    def test_read_without_options(self, lake: Lake, tmp_path: Path) -> None:
        root = tmp_path / "Figure1-COVID-chestxray-dataset"
        self.write(root)
        parsed = read_covid_cxr(root)
        assert parsed.name == "figure1-covid-chestxray"
        assert parsed.layout is not None and parsed.layout.startswith("figure1 layout")
        assert parsed.layout.endswith("cp1252")
        summary = load(lake, parsed)
        assert (summary.records, summary.linked, summary.missing) == (4, 3, ["COVID-00005"])
        assert summary.rejected_rows == [] and summary.conflicts == []
        images = images_by_key(lake)
        assert set(images) == {"COVID-00001", "COVID-00002", "COVID-00003a"}
        first = images["COVID-00001"]
        # Windows-1252 bytes came out as the characters they are, not U+FFFD or 'Â°'.
        assert first.attributes["temperature"] == "38.5°C"
        assert first.attributes["pO2_saturation"] == 58  # 'pO2 saturation' is that column
        assert first.attributes["dataset"] == "figure1-covid-chestxray"
        assert "notes" not in first.attributes  # free text stays out
        assert first.view_position == "AP Erect"
        assert first.modality == "DX"
        assert images["COVID-00002"].attributes["age"] == "50+"
        assert images["COVID-00003a"].format == "jpeg"
        assert quarantine(lake) == {
            listed(root, "COVID-00005"): "file listed in metadata.csv is absent: images/COVID-00005"
        }
        with session_factory(lake.engine)() as session:
            classes = session.scalars(
                select(Label.class_name).where(Label.source_image_key == "COVID-00001")
            ).all()
        assert classes == ["COVID-19"]
        # A re-run finds every present file catalogued and says so, not that none is there.
        again = load(lake, read_covid_cxr(root))
        assert again.ingest is None and again.linked == 3
        assert again.line().endswith("images: all 3 present files already catalogued")

    def test_two_files_for_one_name_are_reported(self, lake: Lake, tmp_path: Path) -> None:
        root = tmp_path / "figure1"
        self.write(root)
        write_image(root / "images" / "COVID-00002.jpg")  # now .png and .jpg
        summary = load(lake, read_covid_cxr(root))
        assert summary.linked == 2
        assert sorted(summary.missing) == ["COVID-00002", "COVID-00005"]
        reason = quarantine(lake)[listed(root, "COVID-00002")]
        assert reason.startswith("2 files match images/COVID-00002 in metadata.csv")
        assert "COVID-00002.png" in reason and "COVID-00002.jpg" in reason
        assert "COVID-00002" not in images_by_key(lake)


class TestActualmed:
    def test_imagename_column_without_options(self, lake: Lake, tmp_path: Path) -> None:
        root = tmp_path / "Actualmed-COVID-chestxray-dataset"
        other = ACTUALMED_NAME.replace("0318", "0319")
        absent = ACTUALMED_NAME.replace("0318", "0320")
        rows = [
            f'ANON196,,,,COVID-19,,,,PA,X-ray,{ACTUALMED_NAME},,", date taken: 20200318"',
            f'ANON196,,,,,,,,AP,X-ray,{other},,"Inconclusive, date taken: 20200319"',
            f'ANON56,,,,No finding,,,,PA,X-ray,{absent},,"Negative"',
        ]
        write_csv(root, ACTUALMED_HEADER, rows)
        write_image(root / "images" / ACTUALMED_NAME)
        write_image(root / "images" / other)
        write_image(root / "images" / "SAMPLE.png")  # in the folder, listed by no row
        parsed = read_covid_cxr(root)
        assert parsed.name == "actualmed-covid-chestxray"
        summary = load(lake, parsed)
        assert (summary.records, summary.linked, summary.missing) == (3, 2, [absent])
        images = images_by_key(lake)
        assert set(images) == {ACTUALMED_NAME, other}
        assert images[ACTUALMED_NAME].view_position == "PA"
        assert images[other].view_position == "AP"
        # One patient: both images under one pseudonymous patient.
        assert patient_of(lake, images[ACTUALMED_NAME]) == patient_of(lake, images[other])
        assert quarantine(lake) == {
            listed(root, absent): f"file listed in metadata.csv is absent: images/{absent}"
        }
        with session_factory(lake.engine)() as session:
            assert session.scalar(select(Source.name)) == "actualmed-covid-chestxray"


class TestEncodings:
    @pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
    def test_non_ascii_file_names_come_out_right(
        self, lake: Lake, tmp_path: Path, encoding: str
    ) -> None:
        """A file named in the CSV with an accent is found on disk whatever the CSV's
        encoding: decoding UTF-8 as Windows-1252 would look for 'radiografÃ­a'."""
        root = tmp_path / "covid"
        name = "radiografía-São Paulo.png"
        rows = [f"7,F,40,COVID-19,PA,X-ray,images,{name},CC BY 4.0,Città,"]
        write_csv(root, IEEE_HEADER, rows, encoding=encoding)
        write_image(root / "images" / name)
        parsed = read_covid_cxr(root)
        assert parsed.layout is not None and parsed.layout.endswith(encoding)
        summary = load(lake, parsed)
        assert (summary.linked, summary.missing) == (1, [])
        assert set(images_by_key(lake)) == {name}

    def test_decode_text(self) -> None:
        assert decode_text("Ã©".encode()) == ("Ã©", "utf-8")
        assert decode_text("é".encode()) == ("é", "utf-8")
        assert decode_text("é".encode("cp1252")) == ("é", "cp1252")
        assert decode_text(b"\xef\xbb\xbfpatientid") == ("patientid", "utf-8-sig")
        # A byte Windows-1252 leaves undefined does not stop the load.
        assert decode_text(b"caf\xe9 \x81") == ("café \ufffd", "cp1252")


class TestConflicts:
    def test_same_file_under_two_patients_is_reported(self, lake: Lake, tmp_path: Path) -> None:
        root = tmp_path / "covid"
        rows = [
            "1,M,65,COVID-19,PA,X-ray,images,shared.png,,,",
            "2,F,30,No Finding,AP,X-ray,images,shared.png,,,",  # another patient: conflict
            "1,M,65,COVID-19,PA,X-ray,images,shared.png,,,",  # same patient: a repeat
            "3,F,50,COVID-19,PA,X-ray,images,,,,",  # names no file
            "3,F,50,COVID-19,PA,X-ray,images,own.png,,,",
        ]
        write_csv(root, IEEE_HEADER, rows)
        write_image(root / "images" / "shared.png")
        write_image(root / "images" / "own.png")
        summary = load(lake, read_covid_cxr(root))
        csv_path = (root / "metadata.csv").absolute()
        assert summary.conflicts == [f"{csv_path} line 3"]
        assert summary.rejected_rows == [f"{csv_path} line {n}" for n in (3, 4, 5)]
        assert (summary.records, summary.linked) == (2, 2)
        assert summary.as_dict()["conflicts"] == 1
        assert any("another patient" in warning for warning in summary.warnings())
        reasons = quarantine(lake)
        assert reasons[f"{csv_path} line 3"] == (
            "lists images/shared.png under another patient than line 2 does; "
            "line 2 is kept: correct the patient of one of them"
        )
        assert reasons[f"{csv_path} line 4"] == "lists images/shared.png again; line 2 is kept"
        assert "empty" in reasons[f"{csv_path} line 5"]
        # Every data row is catalogued or quarantined with a reason.
        assert summary.linked + len(summary.missing) + len(summary.rejected_rows) == len(rows)
        # The image stays with the first row's patient and the first row's labels.
        images = images_by_key(lake)
        with session_factory(lake.engine)() as session:
            pseudonym = session.scalar(
                select(Patient.pseudonym)
                .join(Study)
                .join(Series)
                .where(Series.id == images["shared.png"].series_id)
            )
            classes = session.scalars(
                select(Label.class_name).where(Label.source_image_key == "shared.png")
            ).all()
        assert pseudonym == lake.pseudonymizer("1")
        assert classes == ["COVID-19"]
        # A re-run reports the same rows again and quarantines nothing twice.
        again = load(lake, read_covid_cxr(root))
        assert again.conflicts == summary.conflicts
        assert len(quarantine(lake)) == 3

    def test_fixed_rows_leave_the_quarantine(self, lake: Lake, tmp_path: Path) -> None:
        """What a person fixed (the missing file added, the conflict corrected) stops
        being listed; a problem that comes back is listed again."""
        root = tmp_path / "covid"
        conflict = [
            "1,M,65,COVID-19,PA,X-ray,images,x.png,,,",
            "2,F,30,COVID-19,PA,X-ray,images,x.png,,,",
            "3,F,30,COVID-19,PA,X-ray,images,late.png,,,",
        ]
        write_csv(root, IEEE_HEADER, conflict)
        write_image(root / "images" / "x.png")
        load(lake, read_covid_cxr(root))
        line_3 = f"{(root / 'metadata.csv').absolute()} line 3"
        assert set(open_quarantine(lake)) == {line_3, listed(root, "late.png")}

        write_csv(root, IEEE_HEADER, [conflict[0], conflict[2]])
        write_image(root / "images" / "late.png")
        fixed = load(lake, read_covid_cxr(root))
        assert (fixed.conflicts, fixed.missing, fixed.linked) == ([], [], 2)
        assert open_quarantine(lake) == {}
        assert len(quarantine(lake)) == 2  # the history stays

        write_csv(root, IEEE_HEADER, conflict)
        (root / "images" / "late.png").unlink()
        load(lake, read_covid_cxr(root))
        reopened = open_quarantine(lake)
        assert set(reopened) == {line_3, listed(root, "late.png")}
        assert "another patient" in reopened[line_3]

    def test_same_missing_name_in_two_datasets(self, lake: Lake, tmp_path: Path) -> None:
        """Each dataset's absent file has its own quarantine row (a bare name would
        make the second one look recorded already)."""
        for folder in ("one", "two"):
            write_csv(tmp_path / folder, IEEE_HEADER, ["1,M,65,COVID-19,PA,X-ray,images,x.png,,,"])
            summary = load(lake, read_covid_cxr(tmp_path / folder, name=folder))
            assert summary.missing == ["x.png"]
        assert set(quarantine(lake)) == {listed(tmp_path / f, "x.png") for f in ("one", "two")}


class TestHostileRows:
    def test_rows_cannot_reach_outside_the_dataset(self, lake: Lake, tmp_path: Path) -> None:
        root = tmp_path / "covid"
        write_image(tmp_path / "secret.png")
        write_image(tmp_path / "outside" / "x.png")
        rows = [
            "1,M,65,COVID-19,PA,X-ray,images,../../secret.png,,,",
            "2,M,65,COVID-19,PA,X-ray,../outside,x.png,,,",
            "3,M,65,COVID-19,PA,X-ray,images,..,,,",
        ]
        write_csv(root, IEEE_HEADER, rows)
        (root / "images").mkdir()
        summary = load(lake, read_covid_cxr(root))
        assert summary.linked == 0 and summary.ingest is None
        reasons = quarantine(lake)
        assert "not a plain file name" in reasons[listed(root, "../../secret.png")]
        assert reasons[listed(root, "x.png", folder="../outside")] == (
            "folder named in metadata.csv is outside the dataset: ../outside"
        )
        assert "not a plain file name" in reasons[listed(root, "..")]

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (b"", "metadata.csv is empty"),
            (b"\x00\x01\x02\xff\xfe garbage\n\x89PNG\r\n", "expected a column 'patientid'"),
            (b"filename,finding\nx.png,COVID-19\n", "expected a column 'patientid'"),
            (b"patientid,filename\n1,x.png\n", "expected a column 'finding'"),
        ],
    )
    def test_bad_csv_is_one_clear_error(self, tmp_path: Path, content: bytes, message: str) -> None:
        tmp_path.joinpath("metadata.csv").write_bytes(content)
        with pytest.raises(SourceFormatError, match=message):
            read_covid_cxr(tmp_path)

    def test_truncated_row_is_reported(self, tmp_path: Path) -> None:
        # csv reads an unterminated quote to the end of the file: a row of two cells.
        tmp_path.joinpath("metadata.csv").write_text('patientid,finding,filename\n1,"cut off')
        parsed = read_covid_cxr(tmp_path)
        assert parsed.records == []
        (row,) = parsed.rejected_rows
        assert row.reason == "names no file: its 'filename' cell is empty"

    def test_unlistable_images_folder_is_one_clear_error(self, tmp_path: Path) -> None:
        if os.geteuid() == 0:
            pytest.skip("root lists any folder")
        write_csv(tmp_path, IEEE_HEADER, ["1,M,65,COVID-19,PA,X-ray,images,x.png,,,"])
        write_image(tmp_path / "images" / "x.png")
        (tmp_path / "images").chmod(0)
        try:
            with pytest.raises(SourceFormatError, match="cannot list images/"):
                read_covid_cxr(tmp_path)
        finally:
            (tmp_path / "images").chmod(0o755)

    def test_column_map_values(self) -> None:
        known = ("filename", "patientid")
        assert parse_column_map(["filename=imagename", " patientid = id "], known) == {
            "filename": "imagename",
            "patientid": "id",
        }
        for bad in ("filename", "=x", "filename=", "nope=x"):
            with pytest.raises(SourceFormatError):
                parse_column_map([bad], known)
        with pytest.raises(SourceFormatError, match="twice"):
            parse_column_map(["filename=a", "filename=b"], known)


def test_vinbigdata_column_map(tmp_path: Path) -> None:
    """The other named-column CSV source takes the same map."""
    (tmp_path / "train.csv").write_text(
        "image,label,label_id,reader,x1,y1,x2,y2\naaa,Nodule/Mass,8,R11,10,20,30,40\n"
    )
    renamed = {"image_id": "image", "class_name": "label", "class_id": "label_id"}
    renamed |= {"rad_id": "reader", "x_min": "x1", "y_min": "y1", "x_max": "x2", "y_max": "y2"}
    parsed = read_vinbigdata(tmp_path, columns=renamed)
    (record,) = parsed.records
    (finding,) = record.findings
    assert (record.key, finding.class_name, finding.reader) == ("aaa", "Nodule/Mass", "R11")
    assert finding.box is not None and finding.box.x_max == 30
    with pytest.raises(SourceFormatError, match="--column image_id=COLUMN"):
        read_vinbigdata(tmp_path)  # unmapped: says which column and how to map it


# --- the command line, as a user runs it -------------------------------------------


def radlake_ok(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_radlake(home, *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    radlake_ok(tmp_path / "home", "init")
    return tmp_path / "home"


def test_cli_column_map(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "renamed"
    header = "pid,finding,view,image_file"
    write_csv(root, header, ["A1,COVID-19,PA,a.png", "A2,No Finding,AP,b.jpg", "A3,,PA,gone.png"])
    write_image(root / "images" / "a.png")
    write_image(root / "images" / "b.jpg")
    # Without the map the command says which column it needs and how to name it.
    error = one_error_line(run_radlake(home, "source", "covid", str(root)))
    assert "expected a column 'patientid'" in error and "--column patientid=" in error
    result = radlake_ok(
        home,
        *("source", "covid", str(root), "--json"),
        *("--column", "filename=image_file", "--column", "patientid=pid"),
    )
    summary = json.loads(result.stdout)
    assert (summary["records"], summary["linked"], summary["missing"]) == (3, 2, 1)
    assert summary["ingest"]["catalogued"] == 2
    assert "files named by 'image_file'" in summary["layout"]
    # File names derived from another column: the extension is found on disk.
    derived = tmp_path / "derived"
    write_csv(derived, "pid,finding", ["a,COVID-19", "b,No Finding"])
    write_image(derived / "images" / "a.png")
    write_image(derived / "images" / "b.jpg")
    result = radlake_ok(
        home,
        *("source", "covid", str(derived), "--json", "--name", "derived"),
        *("--column", "patientid=pid", "--column", "filename=pid"),
    )
    assert json.loads(result.stdout)["linked"] == 2
    # A bad map is one error line (parse_column_map's cases are tested above).
    error = one_error_line(
        run_radlake(home, "source", "covid", str(root), "--column", "filename=nope")
    )
    assert "has no column 'nope'" in error


def test_cli_warns_of_conflicts(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "covid"
    rows = ["1,M,65,COVID-19,PA,X-ray,images,x.png,,,", "2,F,30,COVID-19,PA,X-ray,images,x.png,,,"]
    write_csv(root, IEEE_HEADER, rows)
    write_image(root / "images" / "x.png")
    result = radlake_ok(home, "source", "covid", str(root))
    assert "1 rows rejected (1 conflicts)" in result.stdout
    assert "read as: ieee8023 layout" in result.stdout
    assert result.stderr.startswith("warning: 1 rows list a file that an earlier row lists")
    listed = json.loads(radlake_ok(home, "quarantine", "--json").stdout)
    assert "under another patient" in json.dumps(listed)


def test_real_ieee8023_subset(home: Path) -> None:
    """98 images of 64 patients as published: every row catalogued or quarantined with
    a reason, counts and views as an independent read of the CSV says."""
    subset = shared("cxr_ieee8023_lung_boxes_subset")
    root = subset / "data"
    with (root / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (subset / "MANIFEST.csv").open(encoding="utf-8", newline="") as handle:
        manifest = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    assert len(rows) == 98 and len({r["patientid"] for r in rows}) == 64

    summary = json.loads(radlake_ok(home, "source", "covid", str(root), "--json").stdout)
    assert summary["records"] == len(rows)
    assert summary["rejected_rows"] == 0 and summary["conflicts"] == 0
    ingest: dict[str, Any] = summary["ingest"]
    assert ingest["inputs"] == summary["linked"] == len(rows) - summary["missing"]
    assert ingest["catalogued"] + ingest["quarantined"] == ingest["inputs"]

    lake = open_lake(Settings(home=home))
    try:
        with session_factory(lake.engine)() as session:
            images = {
                i.attributes["source_key"]: i
                for i in session.scalars(
                    select(Image).join(Source).where(Source.kind == "covid_cxr")
                )
            }
            reasons = dict(session.execute(select(Quarantine.source_key, Quarantine.reason)).all())
            series = [i.series_id for i in images.values()]
            patients = session.scalars(
                select(Study.patient_id).join(Series).where(Series.id.in_(series)).distinct()
            ).all()
    finally:
        lake.engine.dispose()
    # Every row: its image catalogued (the very bytes the manifest lists) or a reason.
    for row in rows:
        name = row["filename"]
        if name in images:
            assert images[name].sha256 == manifest[name]["sha256"]
            assert images[name].view_position == manifest[name]["view"]
        else:
            assert any(name in key or name in reason for key, reason in reasons.items()), name
    assert len(images) + len(reasons) >= len(rows)
    # Views as counted straight from the CSV with the csv module.
    assert Counter(i.view_position for i in images.values()) == Counter(r["view"] for r in rows)
    assert Counter(i.attributes.get("license", "") for i in images.values()) == Counter(
        r["license"] for r in rows
    )
    # One pseudonymous patient per patient id of the catalogued rows.
    assert len(patients) == len({r["patientid"] for r in rows if r["filename"] in images})
