"""Datasets end to end: a VinBigData-shaped source -> versions -> YOLO and COCO exports."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools.coco import COCO
from sqlalchemy import select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import DatasetMember, Export, Image, Label
from radlake.catalog.queries import ImageFilter, count_images
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import (
    DatasetError,
    VersionRequest,
    create_version,
    diff_versions,
    members,
)
from radlake.formats.coco import read_coco
from radlake.formats.sink import FolderSink, StoreSink
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.export import export_version
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata

CLASSES = ["No finding", "Cardiomegaly", "Nodule/Mass"]  # by n % 3
SPEC = SplitSpec.parse("training=0.6,validation=0.2,test=0.2")


def write_vinbigdata(root: Path, ids: range) -> None:
    """PNG variant: stored 256 x 200 from originals 2560 x 2000 (scale 0.1), 3 readers."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    rows, meta = [], []
    for n in ids:
        image_id = f"img{n:04d}"
        rng = np.random.default_rng(zlib.crc32(image_id.encode()))
        PILImage.fromarray(rng.integers(0, 256, (200, 256), dtype=np.uint8)).save(
            root / "train" / f"{image_id}.png"
        )
        meta.append(f"{image_id},2000,2560")
        if n % 3 == 0:
            rows += [f"{image_id},No finding,14,R{r},,,," for r in (1, 2, 3)]
            continue
        name = CLASSES[n % len(CLASSES)]
        class_id = [0, 3, 8][n % len(CLASSES)]
        for r, shift in ((1, 0), (2, 20), (3, 900)):  # R3 disagrees
            rows.append(
                f"{image_id},{name},{class_id},R{r},{100 + shift},{200},{600 + shift},{700}"
            )
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n" + "\n".join(rows) + "\n"
    )
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\n" + "\n".join(meta) + "\n")


@pytest.fixture
def loaded(lake: Lake, tmp_path: Path) -> Path:
    root = tmp_path / "vin"
    write_vinbigdata(root, range(60))
    load_source(
        read_vinbigdata(root),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    return root


def make(lake: Lake, **changes: object) -> tuple[int, bool]:
    request = replace(
        VersionRequest(dataset="vin", selection=ImageFilter(source="vinbigdata"), spec=SPEC),
        **changes,
    )
    with transaction(lake.engine) as session:
        version, created = create_version(session, request)
        assert version.leakage["ok"] is True
        return version.version, created


def test_versions_are_immutable_stable_and_diffable(lake: Lake, loaded: Path) -> None:
    assert make(lake) == (1, True)
    assert make(lake) == (1, False)  # nothing changed: no new version
    with session_factory(lake.engine)() as session:
        first = members(session, 1)
    assert len(first) == 60
    assert sorted(set(first.values())) == ["test", "training", "validation"]
    assert list(first.values()).count("training") == 36

    write_vinbigdata(loaded, range(60, 80))
    load_source(
        read_vinbigdata(loaded),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    assert make(lake) == (2, True)
    with session_factory(lake.engine)() as session:
        version_ids = sorted(set(session.scalars(select(DatasetMember.version_id))))
        second = members(session, version_ids[1])
        change = diff_versions(session, "vin", 1, 2)
        in_split = count_images(session, selection=ImageFilter(dataset="vin", split="test"))
    assert all(second[image] == split for image, split in first.items())  # stable
    assert (len(change.added), len(change.removed), len(change.moved)) == (20, 0, 0)
    assert in_split == list(second.values()).count("test")


def test_empty_selection_and_bad_label_set_are_refused(lake: Lake, loaded: Path) -> None:
    with pytest.raises(DatasetError, match="matches no image"):
        make(lake, selection=ImageFilter(modality="CT"))
    with pytest.raises(DatasetError, match="label set"):
        make(lake, label_set="everyone")


def test_selection_by_finding_and_size(lake: Lake, loaded: Path) -> None:
    with session_factory(lake.engine)() as session:
        assert count_images(session, selection=ImageFilter(finding="Cardiomegaly")) == 20
        assert count_images(session, selection=ImageFilter(reader="R3")) == 60
        assert count_images(session, selection=ImageFilter(min_size=256)) == 0
        assert count_images(session, selection=ImageFilter(min_size=200)) == 60
        assert (
            count_images(session, selection=ImageFilter(attributes=(("dataset", "vinbigdata"),)))
            == 60
        )


def test_yolo_and_coco_exports_are_exact_and_reproducible(
    lake: Lake, loaded: Path, tmp_path: Path
) -> None:
    make(lake)
    outputs = []
    for attempt in ("a", "b"):
        out = tmp_path / f"coco-{attempt}"
        export_version(
            engine=lake.engine,
            store=lake.store,
            dataset="vin",
            version=1,
            fmt="coco",
            sink=FolderSink(out),
            location=str(out),
            size=None,
        )
        outputs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert outputs[0] == outputs[1]  # same version, same bytes
    training = tmp_path / "coco-a" / "annotations" / "training.json"
    coco = COCO(str(training))
    assert len(coco.getImgIds()) == 36
    contents = read_coco(training.read_bytes())
    with session_factory(lake.engine)() as session:
        stored = {
            (label.class_name, round(label.x_min or 0, 6), round(label.y_max or 0, 6))
            for label in session.scalars(select(Label).where(Label.x_min.is_not(None)))
        }
    imported = {(name, round(box.x_min, 6), round(box.y_max, 6)) for _, name, box in contents.boxes}
    assert imported <= stored  # the round trip gives back the catalogued boxes
    # R1's Cardiomegaly box (100, 200)-(600, 700) in original pixels, stored at 1/10.
    assert ("Cardiomegaly", 10.0, 70.0) in imported

    yolo_sink = StoreSink(lake.store, "exports/vin/1/yolo")
    summary = export_version(
        engine=lake.engine,
        store=lake.store,
        dataset="vin",
        version=1,
        fmt="yolo",
        sink=yolo_sink,
        location="store",
        size=512,
        mode="pad",
    )
    assert summary.images_written == 60
    data_yaml = lake.store.get_bytes("exports/vin/1/yolo/data.yaml").decode()
    assert "nc: 2" in data_yaml  # the classes that have boxes
    label_keys = [k for k in lake.store.list("exports/vin/1/yolo/labels/")]
    assert len(label_keys) == 60
    empty = [k for k in label_keys if not lake.store.get_bytes(k)]
    assert len(empty) == 20  # "No finding" images: empty label files, no fake boxes
    with session_factory(lake.engine)() as session:
        assert len(list(session.scalars(select(Export)))) == 3
        image = session.scalar(select(Image).limit(1))
    assert image is not None and (image.columns, image.rows) == (256, 200)


def test_consensus_label_set_fuses_agreeing_readers(lake: Lake, loaded: Path) -> None:
    version, created = make(lake, label_set="consensus")
    assert created
    from radlake.curation.versions import get_version, version_findings

    with session_factory(lake.engine)() as session:
        chosen = get_version(session, "vin", version)
        findings = version_findings(session, chosen, sorted(members(session, chosen.id)))
    boxes = [f for fs in findings.values() for f in fs if f.box is not None]
    assert len(boxes) == 40  # one fused box per image with a finding (R1 + R2 agree)
    fused = boxes[0].box
    assert fused is not None
    # R1 at x 100..600 and R2 at 120..620 (original pixels), stored at 1/10 scale.
    assert fused.x_min == pytest.approx(11.0)
    assert fused.x_max == pytest.approx(61.0)
    assert boxes[0].confidence == pytest.approx(2 / 3)


def test_manifest_hash_changes_with_the_seed(lake: Lake, loaded: Path) -> None:
    make(lake)
    with session_factory(lake.engine)() as session:
        before = members(session, 1)
    version, created = make(lake, seed=7)
    assert created and version == 2
    with session_factory(lake.engine)() as session:
        assert members(session, 1) == before
