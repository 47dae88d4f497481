"""Label import: COCO, YOLO and CSV files onto catalogued images, exactly and once."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, select

from radlake.catalog.db import make_engine, session_factory, transaction, upgrade
from radlake.catalog.models import Image, Label
from radlake.curation.filters import ImageFilter
from radlake.curation.versions import VersionRequest, create_version
from radlake.domain import LabelOrigin
from radlake.formats.label_readers import (
    Frame,
    FrameMismatch,
    LabelEntry,
    place_box,
    read_coco_entries,
    read_csv_entries,
    read_label_file,
)
from radlake.formats.model import FormatError
from radlake.formats.sink import FolderSink
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.export import export_version
from radlake.pipelines.ingest import ingest
from radlake.pipelines.label_import import (
    ImportRequest,
    LabelImportError,
    import_labels,
)
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from radlake.storage.store import open_store
from tests.conftest import SECRET, run_radlake, shared
from tests.test_datasets import SPEC, write_vinbigdata

Boxes = Counter[tuple[str, str, tuple[float, ...]]]
LUNGS = "cxr_ieee8023_lung_boxes_subset"


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Lake]:
    """A second, empty lake (the one labels are imported into)."""
    (tmp_path / "fresh").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh' / 'catalog.sqlite'}")
    upgrade(engine)
    yield Lake(engine, open_store((tmp_path / "fresh" / "store").as_uri()), Pseudonymizer(SECRET))
    engine.dispose()


def boxes_by_sha(lake: Lake, source: str | None = None) -> Boxes:
    """(image sha256, class, box rounded to 1e-3 px) of every boxed label."""
    with session_factory(lake.engine)() as session:
        statement = (
            select(
                Image.sha256, Label.class_name, Label.x_min, Label.y_min, Label.x_max, Label.y_max
            )
            .join(Image, Label.image_id == Image.id)
            .where(Label.x_min.is_not(None))
        )
        return Counter(
            (sha, name, tuple(round(v, 3) for v in corners))
            for sha, name, *corners in session.execute(statement)
        )


def label_count(lake: Lake) -> int:
    with session_factory(lake.engine)() as session:
        return int(session.scalar(select(func.count(Label.id))) or 0)


@pytest.fixture
def exported(lake: Lake, fresh: Lake, tmp_path: Path) -> Path:
    """A VinBigData-shaped source in `lake`, one version, and its images ingested as a
    plain folder into `fresh` (same bytes, other ids, no labels)."""
    root = tmp_path / "vin"
    write_vinbigdata(root, range(12))
    load_source(
        read_vinbigdata(root),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    with transaction(lake.engine) as session:
        create_version(
            session,
            VersionRequest(dataset="vin", selection=ImageFilter(source="vinbigdata"), spec=SPEC),
        )
    ingest(
        [root / "train"],
        engine=fresh.engine,
        store=fresh.store,
        pseudonymizer=fresh.pseudonymizer,
        executor=SerialExecutor(),
    )
    return root


def _export(lake: Lake, out: Path, fmt: str, size: int | None) -> None:
    export_version(
        engine=lake.engine,
        store=lake.store,
        dataset="vin",
        version=1,
        fmt=fmt,  # type: ignore[arg-type]
        sink=FolderSink(out),
        location=str(out),
        size=size,
        mode="pad",
        labels_only=True,
    )


@pytest.mark.parametrize("size", [None, 512])
def test_coco_export_imports_back_exactly(
    lake: Lake, fresh: Lake, exported: Path, tmp_path: Path, size: int | None
) -> None:
    out = tmp_path / "coco"
    _export(lake, out, "coco", size)
    original = boxes_by_sha(lake)
    assert sum(original.values()) == 24  # 8 images with a finding x 3 readers' boxes
    for split_file in sorted((out / "annotations").glob("*.json")):
        parsed = read_label_file(split_file, "coco")
        summary = import_labels(parsed, ImportRequest(source="vin-coco"), engine=fresh.engine)
        assert (summary.unmatched, summary.invalid, summary.frame_mismatch) == (0, 0, 0)
    assert boxes_by_sha(fresh) == original  # every box back on its image, to 1e-3 px


@pytest.mark.parametrize("size", [None, 512])
def test_yolo_export_imports_back_exactly(
    lake: Lake, fresh: Lake, exported: Path, tmp_path: Path, size: int | None
) -> None:
    out = tmp_path / "yolo"
    _export(lake, out, "yolo", size)
    parsed = read_label_file(out, "yolo")  # data.yaml and manifest.json found in the export
    summary = import_labels(parsed, ImportRequest(source="vin-yolo"), engine=fresh.engine)
    assert (summary.unmatched, summary.invalid, summary.frame_mismatch) == (0, 0, 0)
    assert boxes_by_sha(fresh) == boxes_by_sha(lake)


def test_reimport_writes_nothing_and_duplicates_in_a_file_are_kept(
    fresh: Lake, exported: Path, tmp_path: Path
) -> None:
    text = "file,class,x_min,y_min,x_max,y_max,reader\n"
    text += "img0001.png,Cardiomegaly,10.5,20.25,60.125,70,R1\n" * 2  # twice on purpose
    text += "img0002.png,Nodule/Mass,1e-3,2,3.3333333333,4,R1\n"
    text += "img0002.png,No finding,,,,,R2\n"
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(text)
    parsed = read_label_file(csv_file, "csv")
    first = import_labels(parsed, ImportRequest(source="csv"), engine=fresh.engine)
    assert (first.entries, first.written, first.boxes, first.image_level) == (4, 4, 3, 1)
    again = import_labels(parsed, ImportRequest(source="csv"), engine=fresh.engine)
    assert (again.written, again.already_present) == (0, 4)
    assert label_count(fresh) == 4
    # Another origin or reader is another label, not a duplicate.
    other = import_labels(
        parsed,
        ImportRequest(source="csv", origin=LabelOrigin.PREDICTION, reader="model-1"),
        engine=fresh.engine,
    )
    assert other.written == 4 and label_count(fresh) == 8
    with session_factory(fresh.engine)() as session:
        stored = session.scalars(select(Label).where(Label.class_name == "Nodule/Mass")).all()
    assert {(label.x_min, label.x_max, label.reader) for label in stored} == {
        (1e-3, 3.3333333333, "R1"),
        (1e-3, 3.3333333333, "model-1"),
    }


def test_hostile_coco_entries_are_reported_never_written(fresh: Lake, exported: Path) -> None:
    document = {
        "images": [
            {"id": 1, "file_name": "img0001.png", "width": 256, "height": 200},
            {"id": 2, "file_name": "somewhere/else/not-here.png", "width": 256, "height": 200},
            {"id": 3, "file_name": "img0002.png", "width": 512.0, "height": 400},  # 2x resize
            {"id": 4, "file_name": "img0004.png", "width": 300, "height": 100},  # not a resize
            {"id": [5], "file_name": "img0005.png"},  # an id no annotation can name
        ],
        "categories": [{"id": 1, "name": "Nodule/Mass"}, {"id": [2], "name": "odd"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [None, None, None, None]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 20, 0, 40]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 20, "x", 40]},
            {"id": 5, "image_id": 1, "category_id": 9, "bbox": [10, 20, 30, 40]},
            {"id": 6, "image_id": 99, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 7, "image_id": 2, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 8, "image_id": 3, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 9, "image_id": 4, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, float("inf")]},
            {"id": 11, "image_id": 1, "category_id": 1},  # no bbox: an image-level label
            "garbage",
            {"id": 13, "image_id": [1], "category_id": {"a": 1}, "bbox": [1, 2, 3, 4]},
        ],
    }
    parsed = read_coco_entries(json.dumps(document).encode())
    summary = import_labels(parsed, ImportRequest(source="hostile"), engine=fresh.engine)
    assert summary.entries == 13
    assert (summary.written, summary.boxes, summary.image_level) == (3, 2, 1)
    assert (summary.invalid, summary.unmatched, summary.frame_mismatch) == (8, 1, 1)
    assert any("null, null, null, null" in text for text in summary.examples["invalid"])
    assert summary.examples["unmatched"] == ["annotation 7: not-here.png"]
    with session_factory(fresh.engine)() as session:
        corners = {
            (label.x_min, label.y_min, label.x_max, label.y_max)
            for label in session.scalars(select(Label).where(Label.x_min.is_not(None)))
        }
    assert corners == {(10, 20, 40, 60), (5, 10, 20, 30)}  # the 2x frame scaled back exactly
    for bad in (b"", b"not json", b"[1, 2]", b'{"images": []}'):
        with pytest.raises(FormatError, match="COCO"):
            read_coco_entries(bad)


def test_coco_wrong_types_clashing_ids_and_boxes_off_the_image(fresh: Lake, exported: Path) -> None:
    """Strings and booleans for numbers, an id given twice with other contents, and a
    box off its (256 x 200) image are reported, never written or resolved silently."""
    document = {
        "images": [
            {"id": 1, "file_name": "img0001.png", "width": 256, "height": 200},
            {"id": 2, "file_name": "img0002.png", "width": 256, "height": 200},
            {"id": 2, "file_name": "img0004.png", "width": 256, "height": 200},
        ],
        "categories": [{"id": 1, "name": "Nodule/Mass"}, {"id": 3, "name": "ILD"},
                       {"id": 3, "name": "Other"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": ["10", "20", "30", "40"]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [True, 20, 30, 40]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 4, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [-50, -50, 10, 10]},
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1e300, 1e300]},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 256.5, 200]},  # edge
        ],
    }  # fmt: skip
    parsed = read_coco_entries(json.dumps(document).encode())
    summary = import_labels(parsed, ImportRequest(source="types"), engine=fresh.engine)
    assert (summary.written, summary.invalid) == (1, 6), summary.examples
    reasons = " | ".join(summary.examples["invalid"])
    assert '["10", "20", "30", "40"] is not four numbers' in reasons
    assert "[true, 20, 30, 40] is not four numbers" in reasons
    assert "image_id 2 names two different images" in reasons
    assert "category_id 3 names two classes" in reasons
    assert "lies outside the 256x200 image" in reasons
    with session_factory(fresh.engine)() as session:
        stored = [(r.x_min, r.y_min, r.x_max, r.y_max) for r in session.scalars(select(Label))]
    assert stored == [(0, 0, 256.5, 200)]


def test_frames_place_boxes_exactly() -> None:
    entry = LabelEntry("x", "a.png", None, "c", None, (0.5, 0.5, 0.25, 0.5), Frame(True))
    box = place_box(entry, 200, 100)
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (75, 25, 125, 75)  # type: ignore[union-attr]
    mismatch = LabelEntry("x", "a.png", None, "c", None, (1, 2, 3, 4), Frame(width=10, height=10))
    with pytest.raises(FrameMismatch, match="not a resize"):
        place_box(mismatch, 20, 10)


def test_hostile_csv_and_yolo_files(fresh: Lake, exported: Path, tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"file .*and class"):
        read_csv_entries(b"image_id,finding\nimg0001.png,ILD\n")
    with pytest.raises(FormatError, match="empty"):
        read_csv_entries(b"")
    parsed = read_csv_entries(
        b"file,class,x_min,y_min,x_max,y_max\n"
        b"img0001.png,ILD,5,5,1,1\n"  # inverted
        b"img0001.png,ILD,5,5,,9\n"  # a missing corner
        b",ILD,1,1,2,2\n"
        b"img0001.png,,1,1,2,2\n"
        b"\xe9t\xe9.png,ILD,1,1,2,2\n"  # Windows-1252 name, matches nothing
    )
    summary = import_labels(parsed, ImportRequest(source="bad-csv"), engine=fresh.engine)
    assert (summary.invalid, summary.unmatched, summary.written) == (4, 1, 0)
    assert summary.examples["unmatched"] == ["line 6: été.png"]

    labels = tmp_path / "yolo"
    labels.mkdir()
    (labels / "img0001.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\nx 1 1 1 1\n0 0.5 0.5 0 0.2\n0 0.1 0.2 0.3\n"
    )
    (labels / "nobody.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(FormatError, match="--names"):
        read_label_file(labels, "yolo")
    (tmp_path / "names.txt").write_text("ILD\n")
    parsed = read_label_file(labels, "yolo", names=tmp_path / "names.txt")
    summary = import_labels(parsed, ImportRequest(source="bad-yolo"), engine=fresh.engine)
    assert (summary.entries, summary.written, summary.invalid, summary.unmatched) == (6, 1, 4, 1)
    with pytest.raises(FormatError, match="no such file"):
        read_label_file(tmp_path / "absent.json", "coco")
    with pytest.raises(FormatError, match="expected a format"):
        read_label_file(labels, "voc")


def test_labels_never_go_under_a_dataset_source(lake: Lake, exported: Path) -> None:
    parsed = read_csv_entries(b"file,class\nimg0001.png,ILD\n")
    with pytest.raises(LabelImportError, match="vinbigdata source"):
        import_labels(parsed, ImportRequest(source="vinbigdata"), engine=lake.engine)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_real_lung_boxes_onto_the_real_images(tmp_path: Path) -> None:
    data = shared(LUNGS, "data")
    coco = data / "annotations" / "imageannotation_ai_lung_bounding_boxes.json"
    home = tmp_path / "home"
    ok(run_radlake(home, "init"))
    loaded = json.loads(ok(run_radlake(home, "source", "covid", str(data), "--json")))
    assert loaded["linked"] == 98
    command = ("labels", "import", str(coco), "--format", "coco", "--source", "lungs", "--json")
    first = json.loads(ok(run_radlake(home, *command)))
    assert first["entries"] == 196
    # The two null boxes are reported, never invented; two images of the collection
    # were annotated at another size and shape (466x395 for a 362x330 file).
    assert (first["invalid"], first["unmatched"], first["frame_mismatch"]) == (2, 0, 4)
    assert first["written"] == first["boxes"] == 190
    assert all("null, null, null, null" in t for t in first["examples"]["invalid"])
    again = json.loads(ok(run_radlake(home, *command)))
    assert (again["written"], again["already_present"]) == (0, 190)

    # COCO's x, y, w, h in the stored image's pixels, as the file says.
    document = json.loads(coco.read_bytes())
    image = document["images"][0]
    expected = sorted(
        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
        for a in document["annotations"]
        if a["image_id"] == image["id"]
    )
    engine = make_engine(f"sqlite:///{home / 'catalog.sqlite'}")
    with session_factory(engine)() as session:
        image_id = session.scalars(
            select(Image.id).where(Image.source_key.endswith("/" + image["file_name"]))
        ).one()
    engine.dispose()
    listed = json.loads(ok(run_radlake(home, "labels", "list", str(image_id), "--json")))
    assert listed["origin"] is None  # all origins, each label says its own
    boxes = sorted(row["box"] for row in listed["labels"] if row["box"])
    assert boxes == expected
    assert {row["source"] for row in listed["labels"]} == {"lungs", "covid-chestxray"}
    shown = json.loads(ok(run_radlake(home, "show", str(image_id), "--json")))
    assert shown["labels"] == listed["labels"] and shown["labels_origin"] == "all"
    bad = run_radlake(home, "labels", "list", str(image_id), "--origin", "rumour")
    assert bad.returncode == 1 and "expected an origin" in bad.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xff not json")
    refused = run_radlake(home, "labels", "import", str(garbage), "--format", "coco")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: expected COCO JSON")


def test_yolo_of_stored_size_without_an_export(fresh: Lake, exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "classes.txt").write_text("ILD\nNodule/Mass\n")
    (folder / "img0001.txt").write_text("1 0.5 0.5 0.25 0.5\n")  # stored image: 256 x 200
    summary = import_labels(
        read_label_file(folder, "yolo"), ImportRequest(source="plain"), engine=fresh.engine
    )
    assert summary.written == 1
    with session_factory(fresh.engine)() as session:
        label = session.scalars(select(Label)).one()
    assert (label.class_name, label.x_min, label.y_min, label.x_max, label.y_max) == (
        "Nodule/Mass",
        96,
        50,
        160,
        150,
    )
    assert np.isclose(label.x_max - label.x_min, 64)


def test_reimport_is_idempotent_on_every_backend(catalog: Engine, tmp_path: Path) -> None:
    # MariaDB keeps FLOAT in 4 bytes: a box read back there is not the box written,
    # and a naive comparison would insert every label again on each import.
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a b.png", "c.png"):
        PILImage.new("L", (300, 200), 7 if name == "c.png" else 3).save(folder / name)
    store = open_store((tmp_path / "store").as_uri())
    ingest([folder], engine=catalog, store=store, pseudonymizer=Pseudonymizer(SECRET))
    text = "file,class,x_min,y_min,x_max,y_max,reader\n"
    text += "a b.png,ILD,10.123456789,0.1,299.987654321,199.99999,R1\n"
    text += "c.png,ILD,1.1,2.2,3.3,4.4,R2\nc.png,ILD,1.1,2.2,3.3,4.4,R2\nc.png,ILD,,,,,R2\n"
    text += f"c.png,{'X' * 300}\x00,,,,,{'R' * 100}\n"  # fitted to the columns, not refused
    parsed = read_csv_entries(text.encode())
    first = import_labels(parsed, ImportRequest(source="csv"), engine=catalog)
    second = import_labels(parsed, ImportRequest(source="csv"), engine=catalog)
    assert (first.written, second.written, second.already_present) == (5, 0, 5)
    with session_factory(catalog)() as session:
        assert session.scalar(select(func.count(Label.id))) == 5
        stored = session.scalars(select(Label.x_max).where(Label.reader == "R1")).one()
    assert stored == pytest.approx(299.987654321, abs=1e-3)


def test_ambiguous_names_sha256_and_images_of(fresh: Lake, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    for part, grey in (("one", 10), ("two", 20)):
        (folder / part).mkdir(parents=True)
        PILImage.new("L", (64, 32), grey).save(folder / part / "same.png")
    ingest(
        [folder],
        engine=fresh.engine,
        store=fresh.store,
        pseudonymizer=fresh.pseudonymizer,
        source="two",
    )
    with session_factory(fresh.engine)() as session:
        shas = list(session.scalars(select(Image.sha256).order_by(Image.id)))
    text = f"file,sha256,class\nsame.png,,ILD\n,{shas[1].upper()},ILD\nsame.png,{'0' * 64},ILD\n"
    parsed = read_csv_entries(text.encode())
    summary = import_labels(parsed, ImportRequest(source="csv"), engine=fresh.engine)
    # The name alone fits two images: reported, not written on either. A sha256 decides.
    assert (summary.ambiguous, summary.written, summary.unmatched) == (1, 1, 1)
    assert summary.examples["ambiguous"] == ["line 2: same.png"]
    # A source that does not exist is a typo, not "every entry unmatched" and exit 0.
    with pytest.raises(LabelImportError, match="--images-of: no source named 'nowhere'"):
        import_labels(parsed, ImportRequest(source="csv", images_of="nowhere"), engine=fresh.engine)
