"""Issue 9: classification exports (labels.csv, ImageFolder), detection exports that
say when there is no box, and data.yaml files Ultralytics accepts."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image as ImageRow
from radlake.catalog.models import Patient, Series, Study
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import DatasetError, VersionRequest, create_version
from radlake.domain import Box, Finding
from radlake.formats.classification import (
    class_folder,
    export_classification,
    export_imagefolder,
    single_class,
)
from radlake.formats.coco import export_coco
from radlake.formats.label_readers import read_label_file
from radlake.formats.manifest import MANIFEST_NAME, read_manifest
from radlake.formats.model import ExportImage, FormatError
from radlake.formats.sink import FolderSink
from radlake.formats.yolo import data_yaml, export_yolo
from radlake.lake import Lake
from radlake.pipelines.export import export_version
from radlake.pipelines.label_import import ImportRequest, import_labels
from radlake.sources.covid_cxr import finding_levels, normalise_view, read_covid_cxr
from tests.conftest import run_radlake
from tests.test_splits_reproducible import IEEE8023, load, write_covid

CLASSES = ["COVID-19", "Pneumonia", "Pneumonia/Viral"]


def image(
    image_id: int, stem: str, split: str, *classes: str, box: bool = False, **attributes: str
) -> ExportImage:
    findings = tuple(
        Finding(image_id, name, Box(1, 1, 5, 5) if box else None, reader="R1") for name in classes
    )
    return ExportImage(
        image_id, stem, split, 8, 6, findings, patient=f"p{image_id % 2}", attributes=attributes
    )


def render(item: ExportImage) -> Image.Image:
    return Image.fromarray(np.full((item.height, item.width), item.image_id, dtype=np.uint8))


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- labels.csv ---------------------------------------------------------------------


def test_labels_csv_has_one_exact_row_per_image(tmp_path: Path) -> None:
    images = [
        image(3, "b", "training", "Pneumonia", "Pneumonia/Viral", licence="CC BY 4.0", view="PA"),
        image(1, "a", "training", "COVID-19", box=True, licence='odd, "quoted"', view="AP"),
        image(2, "c", "test", view="L"),  # no finding: all zeros, no licence: empty
    ]
    summary = export_classification(
        images,
        CLASSES,
        FolderSink(tmp_path),
        attributes=("licence", "view"),
        render=render,
        size=None,
    )
    written = files(tmp_path)
    assert sorted(written) == [
        MANIFEST_NAME,
        "test/images/c.png",
        "test/labels.csv",
        "training/images/a.png",
        "training/images/b.png",
        "training/labels.csv",
    ]
    header = "file,patient,split,COVID-19,Pneumonia,Pneumonia/Viral,licence,view\n"
    assert written["training/labels.csv"].decode() == (
        header + 'training/images/a.png,p1,training,1,0,0,"odd, ""quoted""",AP\n'
        "training/images/b.png,p1,training,0,1,1,CC BY 4.0,PA\n"
    )
    assert written["test/labels.csv"].decode() == header + "test/images/c.png,p0,test,0,0,0,,L\n"
    assert summary.images_per_split == {"training": 2, "test": 1}
    # A box counts as the class being present; the box itself is not clipped away.
    rows = list(csv.DictReader(io.StringIO(written["training/labels.csv"].decode())))
    assert rows[0]["COVID-19"] == "1"
    with Image.open(tmp_path / "training/images/a.png") as png:
        assert png.size == (8, 6)


def test_labels_csv_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    one = [image(1, "a", "training", "COVID-19")]
    with pytest.raises(FormatError, match="column 'split' would appear twice"):
        export_classification(one, CLASSES, FolderSink(tmp_path), attributes=("split",))
    with pytest.raises(FormatError, match="column 'COVID-19' would appear twice"):
        export_classification(one, CLASSES, FolderSink(tmp_path), attributes=("COVID-19",))
    with pytest.raises(FormatError, match="class 'ARDS' is not in the export's class list"):
        export_classification([image(1, "a", "training", "ARDS")], CLASSES, FolderSink(tmp_path))
    with pytest.raises(FormatError, match="stem"):
        export_classification([image(1, "../x", "training")], CLASSES, FolderSink(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing written before the refusal


# --- ImageFolder --------------------------------------------------------------------


def test_single_class_takes_the_deepest_of_one_hierarchy_path() -> None:
    assert single_class({"Pneumonia", "Pneumonia/Viral", "Pneumonia/Viral/COVID-19"}) == (
        "Pneumonia/Viral/COVID-19"
    )
    assert single_class({"COVID-19"}) == "COVID-19"
    assert single_class({"Pneumonia/Viral", "COVID-19"}) is None
    assert single_class({"Pneumonia/Viral", "Pneumonia/Bacterial"}) is None
    assert single_class({"Pneumonia", "PneumoniaX"}) is None  # a prefix is not a parent
    assert single_class(set()) is None
    assert class_folder("Pneumonia/Viral/COVID-19") == "Pneumonia_Viral_COVID-19"
    assert class_folder("../..") == "_"  # never a hidden or parent folder


def test_imagefolder_writes_split_class_file_and_lists_the_skipped(tmp_path: Path) -> None:
    images = [
        image(1, "a", "training", "Pneumonia", "Pneumonia/Viral"),
        image(2, "b", "training", "COVID-19"),
        image(3, "c", "validation", "COVID-19", "Pneumonia"),  # multi-label
        image(4, "d", "validation"),  # no class
        image(5, "e", "validation", "COVID-19", box=True),
    ]
    summary = export_imagefolder(images, CLASSES, FolderSink(tmp_path), render=render, size=16)
    written = files(tmp_path)
    assert sorted(written) == [
        "classes.csv",
        "index.csv",
        MANIFEST_NAME,
        "skipped.csv",
        "training/COVID-19/b.png",
        "training/Pneumonia_Viral/a.png",
        "validation/COVID-19/e.png",
    ]
    assert written["skipped.csv"].decode() == (
        "file,split,reason,classes\n"
        "validation/c.png,validation,several classes,COVID-19; Pneumonia\n"
        "validation/d.png,validation,no class,\n"
    )
    assert written["classes.csv"].decode() == (
        "folder,class\nCOVID-19,COVID-19\nPneumonia,Pneumonia\nPneumonia_Viral,Pneumonia/Viral\n"
    )
    assert (
        written["index.csv"].decode().splitlines()[1] == "training/COVID-19/b.png,training,COVID-19"
    )
    assert (summary.images_skipped, summary.images_per_split) == (
        2,
        {"training": 2, "validation": 1},
    )
    assert summary.notes == (
        "2 of 5 images are not single-label and are left out: see skipped.csv",
    )
    _, metadata = read_manifest(written[MANIFEST_NAME])
    assert metadata["notes"] == list(summary.notes)
    with Image.open(tmp_path / "training/COVID-19/b.png") as png:
        assert png.size == (16, 16)


def test_imagefolder_refuses_sets_it_cannot_hold(tmp_path: Path) -> None:
    multi = [image(1, "a", "training", "COVID-19", "Pneumonia")]
    with pytest.raises(
        FormatError, match=r"no single-label image among 1.*--format classification"
    ):
        export_imagefolder(multi, CLASSES, FolderSink(tmp_path))
    with pytest.raises(FormatError, match="would share the folder 'a_b'"):
        export_imagefolder([image(1, "a", "training", "a/b")], ["a/b", "a_b"], FolderSink(tmp_path))
    assert not any(tmp_path.iterdir())


# --- detection formats without boxes, data.yaml -------------------------------------------


NO_BOX = "no boxes: the 2 images carry 3 image-level findings only"


@pytest.mark.parametrize("writer", [export_yolo, export_coco])
def test_detection_exports_say_plainly_when_there_is_no_box(tmp_path: Path, writer: object) -> None:
    images = [
        image(1, "a", "training", "COVID-19", "Pneumonia"),
        image(2, "b", "validation", "COVID-19"),
    ]
    summary = writer(images, CLASSES, FolderSink(tmp_path / "none"), size=None)  # type: ignore[operator]
    assert len(summary.notes) == 1 and summary.notes[0].startswith(NO_BOX)
    assert "--format classification" in summary.notes[0]
    written = files(tmp_path / "none")
    assert NO_BOX in written["README.txt"].decode()
    _, metadata = read_manifest(written[MANIFEST_NAME])
    assert metadata["notes"] == list(summary.notes)
    if writer is export_coco:
        document = json.loads(written["annotations/training.json"])
        assert document["annotations"] == [] and document["info"]["notes"] == list(summary.notes)
    # One box anywhere: a detection set with background images, nothing to say.
    images[1] = image(2, "b", "validation", "COVID-19", box=True)
    boxed = writer(images, CLASSES, FolderSink(tmp_path / "boxed"), size=None)  # type: ignore[operator]
    assert boxed.notes == () and not (tmp_path / "boxed" / "README.txt").exists()


def test_data_yaml_always_has_train_and_val() -> None:
    def entries(*splits: str) -> dict[str, str]:
        document = yaml.safe_load(data_yaml(list(splits), CLASSES))
        return {k: document[k] for k in ("train", "val", "test") if k in document}

    assert entries("training", "validation", "test") == {
        "train": "images/training",
        "val": "images/validation",
        "test": "images/test",
    }
    assert entries("training", "test") == {
        "train": "images/training",
        "val": "images/test",
        "test": "images/test",
    }
    assert entries("training", "staging") == {"train": "images/training", "val": "images/training"}
    assert entries("test") == {"train": "images/test", "val": "images/test", "test": "images/test"}


def test_a_yolo_export_without_validation_notes_the_stand_in(tmp_path: Path) -> None:
    images = [image(1, "a", "training", "COVID-19", box=True), image(2, "b", "test", "COVID-19")]
    summary = export_yolo(images, CLASSES, FolderSink(tmp_path), size=None)
    assert summary.notes == (
        "no validation split: data.yaml's val reads images/test (Ultralytics needs val)",
    )
    assert yaml.safe_load((tmp_path / "data.yaml").read_text())["val"] == "images/test"


# --- through the catalog --------------------------------------------------------------

SIX_FINDINGS = [
    "Pneumonia/Viral/COVID-19",
    "Pneumonia/Viral/COVID-19",
    "Pneumonia/Bacterial",
    "ARDS",
    "COVID-19",
    "Pneumonia/Viral/SARS",
]


@pytest.fixture
def six(lake: Lake, tmp_path: Path) -> Path:
    """Six test-written COVID-style images of five patients, a version over them."""
    root = tmp_path / "covid"
    write_covid(root, ["A", "A", "B", "C", "D", "E"], SIX_FINDINGS)
    load(lake, read_covid_cxr(root))
    spec = SplitSpec.parse("training=0.8,validation=0.1,test=0.1")
    with transaction(lake.engine) as session:
        create_version(session, VersionRequest("six", ImageFilter(), spec))
    return root


def pseudonyms(lake: Lake) -> dict[str, str]:
    """Source file name -> its patient's pseudonym in this lake."""
    with session_factory(lake.engine)() as session:
        rows = session.execute(
            select(ImageRow.source_key, Patient.pseudonym)
            .join(Series, ImageRow.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id)
        )
        return {Path(key).name: pseudonym for key, pseudonym in rows}


def test_labels_csv_of_a_version_lists_patients_classes_and_attributes(
    lake: Lake, six: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = export_version(
        engine=lake.engine, store=lake.store, dataset="six", version=None, fmt="classification",
        sink=FolderSink(out), location=str(out), size=32, attributes=("licence", "view"),
    )  # fmt: skip
    assert summary.images_written == 6 and set(summary.images_per_split) == {
        "training",
        "validation",
        "test",
    }
    patient_of = pseudonyms(lake)
    rows = [
        row
        for split in summary.images_per_split
        for row in csv.DictReader(io.StringIO((out / split / "labels.csv").read_text()))
    ]
    assert list(rows[0]) == [
        "file", "patient", "split", "ARDS", "COVID-19", "Pneumonia", "Pneumonia/Bacterial",
        "Pneumonia/Viral", "Pneumonia/Viral/COVID-19", "Pneumonia/Viral/SARS", "licence", "view",
    ]  # fmt: skip
    by_file = {Path(row["file"]).name: row for row in rows}
    assert sorted(by_file) == [f"img_{n:02d}.png" for n in range(6)]
    for n, finding in enumerate(SIX_FINDINGS):
        row = by_file[f"img_{n:02d}.png"]
        assert row["patient"] == patient_of[f"img {n:02d}.png"] != ""
        levels = {"/".join(finding.split("/")[: i + 1]) for i in range(finding.count("/") + 1)}
        assert {c for c in rows[0] if row[c] == "1"} == levels
        assert (row["licence"], row["view"]) == ("CC BY 4.0", "PA")
        assert (out / row["file"]).is_file()
    # The two images of patient A share a split: the file says so too.
    assert by_file["img_00.png"]["split"] == by_file["img_01.png"]["split"]


def test_a_six_image_version_exports_a_data_yaml_with_val(
    lake: Lake, six: Path, tmp_path: Path
) -> None:
    out = tmp_path / "yolo"
    summary = export_version(
        engine=lake.engine, store=lake.store, dataset="six", version=None, fmt="yolo",
        sink=FolderSink(out), location=str(out), labels_only=True,
    )  # fmt: skip
    document = yaml.safe_load((out / "data.yaml").read_text())
    assert (document["val"], document["test"]) == ("images/validation", "images/test")
    assert summary.notes[0].startswith("no boxes: the 6 images carry 13 image-level findings")
    with pytest.raises(
        DatasetError, match="attribute 'colour' is on none of the 6 images; known: "
    ):
        export_version(
            engine=lake.engine, store=lake.store, dataset="six", version=None,
            fmt="classification", sink=FolderSink(tmp_path / "x"), location="x",
            attributes=("colour",),
        )  # fmt: skip


@pytest.mark.skipif(not IEEE8023.is_dir(), reason="../shared/data (ieee8023 subset) is absent")
def test_the_real_covid_subset_exports_for_classification(lake: Lake, tmp_path: Path) -> None:
    load(lake, read_covid_cxr(IEEE8023))
    with transaction(lake.engine) as session:
        create_version(session, VersionRequest("covid", ImageFilter(), SplitSpec.default()))
    common = {"engine": lake.engine, "store": lake.store, "dataset": "covid", "version": None}
    out = tmp_path / "csv"
    summary = export_version(
        **common, fmt="classification", sink=FolderSink(out), location=str(out),  # type: ignore[arg-type]
        labels_only=True, attributes=("licence", "view"),
    )  # fmt: skip
    assert summary.images_written == 98
    rows = [
        row
        for split in summary.images_per_split
        for row in csv.DictReader(io.StringIO((out / split / "labels.csv").read_text()))
    ]
    with (IEEE8023 / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        source = {
            Path(row["filename"]).stem.replace(" ", "_"): row for row in csv.DictReader(handle)
        }
    assert len(rows) == 98 and len({row["patient"] for row in rows}) == 64
    classes = [c for c in rows[0] if c not in ("file", "patient", "split", "licence", "view")]
    for row in rows:
        original = source[Path(row["file"]).stem]  # the source's own file name
        assert row["licence"] == original["license"].strip()
        assert row["view"] == normalise_view(original["view"])
        assert {c for c in classes if row[c] == "1"} == set(finding_levels(original["finding"]))
    # ImageFolder: every image of a single hierarchy path under its deepest class.
    folder = tmp_path / "folder"
    tree = export_version(
        **common, fmt="imagefolder", sink=FolderSink(folder), location=str(folder),  # type: ignore[arg-type]
        labels_only=True,
    )  # fmt: skip
    assert tree.images_written + tree.images_skipped == 98
    assert tree.images_written > 90
    # The detection formats have no box to write here, and say so.
    coco = export_version(
        **common, fmt="coco", sink=FolderSink(tmp_path / "coco"), location="coco",  # type: ignore[arg-type]
        labels_only=True,
    )  # fmt: skip
    assert coco.boxes_written == 0 and coco.notes[0].startswith("no boxes: the 98 images")


# --- the command line -----------------------------------------------------------------


def test_cli_warns_and_exports_classification(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "covid"
    write_covid(root, ["A", "A", "B", "C", "C"], ["COVID-19"] * 5)
    assert run_radlake(home, "init").returncode == 0
    assert run_radlake(home, "source", "covid", str(root)).returncode == 0
    created = run_radlake(home, "dataset", "create", "tiny")
    assert created.returncode == 0, created.stderr
    assert (
        "warning: split(s) staging, canary, production have no image: only 3 group(s)"
        in created.stderr
    )
    coco = run_radlake(home, "dataset", "export", "tiny", "--format", "coco", "--labels-only",
                       "--out", str(tmp_path / "coco"))  # fmt: skip
    assert coco.returncode == 0, coco.stderr
    assert coco.stderr.startswith("warning: no boxes: the 5 images carry 5 image-level findings")
    out = tmp_path / "csv"
    exported = run_radlake(home, "dataset", "export", "tiny", "--format", "classification",
                           "--attribute", "licence", "--attribute", "view", "--out", str(out),
                           "--json")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["images"] == 5
    header = (out / "training" / "labels.csv").read_text().splitlines()[0]
    assert header == "file,patient,split,COVID-19,licence,view"
    bad = run_radlake(home, "dataset", "export", "tiny", "--format", "classification",
                      "--attribute", "colour", "--out", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: attribute 'colour' is on none of the 5 images")
    assert len(bad.stderr.strip().splitlines()) == 1
    wrong = run_radlake(home, "dataset", "export", "tiny", "--format", "yolo",
                        "--attribute", "view", "--out", str(tmp_path / "w"))  # fmt: skip
    assert wrong.returncode == 1 and "--attribute goes with --format classification" in wrong.stderr


def test_odd_source_file_names_still_export_and_import_back(lake: Lake, tmp_path: Path) -> None:
    """A metadata.csv may name a file anything: a newline, ':', a leading dot, 300
    characters. One such name used to stop every export of the version; the export
    now writes a safe stem and an import of its labels finds the image again."""
    root = tmp_path / "odd"
    (root / "images").mkdir(parents=True)
    names = ["new\nline.png", "a:b.png", ".hidden.png", "é" * 120 + ".png", "plain.png"]
    lines = [["patientid", "finding", "view", "modality", "filename"]]
    for n, name in enumerate(names):
        Image.fromarray(np.full((20, 30 + n), n * 40, dtype=np.uint8)).save(root / "images" / name)
        lines.append([f"P{n}", "COVID-19", "PA", "X-ray", name])
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    (root / "metadata.csv").write_text(buffer.getvalue())
    load(lake, read_covid_cxr(root))
    with transaction(lake.engine) as session:
        create_version(session, VersionRequest("odd", ImageFilter(), SplitSpec.parse("all=1.0")))
    for fmt in ("classification", "yolo", "coco"):
        out = tmp_path / fmt
        summary = export_version(
            engine=lake.engine, store=lake.store, dataset="odd", version=None, fmt=fmt,
            sink=FolderSink(out), location=str(out), size=32,
        )  # fmt: skip
        assert summary.images_written == 5
    written = sorted(p.name for p in (tmp_path / "classification" / "all" / "images").iterdir())
    assert "new_line.png" in written and "a_b.png" in written and "hidden.png" in written
    assert all(len(name.encode()) <= 255 and "\n" not in name for name in written)
    rows = list(
        csv.DictReader(io.StringIO((tmp_path / "classification/all/labels.csv").read_text()))
    )
    assert len(rows) == 5 and all((tmp_path / "classification" / r["file"]).is_file() for r in rows)
    # A label file that names the exported files finds the images they came from.
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{Path(r['file']).name},Left Lung,1,1,5,5\n" for r in rows))
    labels.write_text("file,class,x_min,y_min,x_max,y_max\n" + labels.read_text())
    parsed = read_label_file(labels, "csv")
    imported = import_labels(parsed, ImportRequest(source="back"), engine=lake.engine)
    assert (imported.written, imported.unmatched, imported.ambiguous) == (5, 0, 0), (
        imported.examples
    )
