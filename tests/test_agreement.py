"""Reader agreement and consensus labels on hand-computed examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from radlake.catalog.db import make_engine, session_factory, upgrade
from radlake.catalog.labels import reader_findings
from radlake.catalog.models import Label
from radlake.curation.agreement import (
    COLUMNS,
    AgreementError,
    AgreementReport,
    fleiss_kappa,
    iou,
    iou_matrix,
    match_boxes,
    reader_agreement,
)
from radlake.curation.consensus import cluster_boxes, consensus_findings
from radlake.domain import Box, Finding, LabelOrigin
from radlake.errors import RadlakeError
from radlake.imaging.deid import Pseudonymizer
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from radlake.storage.store import open_store
from tests.conftest import SECRET, run_radlake
from tests.test_datasets import write_vinbigdata


def box(image_id: int, reader: str, name: str, *coords: float) -> Finding:
    return Finding(image_id, name, Box(*coords), reader)


def normal(image_id: int, reader: str) -> Finding:
    return Finding(image_id, "No finding", None, reader)


# --- IoU and matching -------------------------------------------------------------


def test_iou_by_hand() -> None:
    assert iou(Box(0, 0, 2, 2), Box(1, 1, 3, 3)) == pytest.approx(1 / 7)  # 1 / (4 + 4 - 1)
    assert iou(Box(0, 0, 2, 2), Box(0, 0, 2, 2)) == 1.0
    assert iou(Box(0, 0, 2, 2), Box(2, 0, 4, 2)) == 0.0  # touching edges share no area
    assert iou(Box(0, 0, 4, 4), Box(1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert iou(Box(1, 1, 1, 5), Box(1, 1, 1, 5)) == 0.0  # no area: overlaps nothing


def test_iou_matrix_agrees_with_the_scalar_form() -> None:
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (7, 2))
    a = np.hstack([corners, corners + rng.uniform(1, 40, (7, 2))])
    b = a[::-1] + rng.uniform(-5, 5, a.shape)
    matrix = iou_matrix(a, b)
    assert matrix.shape == (7, 7)
    for i in range(7):
        for j in range(7):
            assert matrix[i, j] == pytest.approx(iou(Box(*a[i]), Box(*b[j])))
    assert iou_matrix(np.empty((0, 4)), b).shape == (0, 7)
    assert iou_matrix([], b).shape == (0, 7)
    with pytest.raises(AgreementError, match="n x 4"):
        iou_matrix([(0, 0, 1)], b)


def test_matching_is_greedy_by_iou_and_one_to_one() -> None:
    a = [(0, 0, 10, 10), (5, 0, 15, 10)]
    b = [(2, 0, 12, 10), (1, 0, 11, 10)]
    # IoUs: a0-b0 80/120, a0-b1 90/110, a1-b0 70/130, a1-b1 60/140: a0 takes b1 (its
    # best and the best overall), then a1 gets b0 though b1 was also above 0.4.
    assert match_boxes(a, b) == [(0, 1), (1, 0)]
    assert match_boxes(a, b, threshold=0.6) == [(0, 1)]
    assert match_boxes([(0, 0, 10, 10)], [(0, 0, 10, 10), (0, 0, 10, 10)]) == [(0, 0)]
    assert match_boxes(a, np.empty((0, 4))) == []


# --- Fleiss' kappa ----------------------------------------------------------------


def test_fleiss_kappa_of_the_textbook_example() -> None:
    # The worked example of Fleiss' kappa (Wikipedia, "Fleiss' kappa"): 10 subjects,
    # 14 raters, 5 categories; P-bar = 0.378, P_e = 0.213, kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_kappa_by_hand_with_a_varying_number_of_raters() -> None:
    # Same raters everywhere: present counts 3, 2, 0, 1 of 3. P_i = 1, 1/3, 1, 1/3,
    # so P-bar = 2/3; p = 6/12 present, P_e = 1/2; kappa = (2/3 - 1/2) / (1/2) = 1/3.
    assert fleiss_kappa([[3, 0], [2, 1], [0, 3], [1, 2]]) == pytest.approx(1 / 3)
    # 2 raters then 3: P_i = 1 and 1/3, P-bar = 2/3; p = 3/5 and 2/5, P_e = 0.52;
    # kappa = (2/3 - 0.52) / 0.48. A subject with one rating takes no part.
    expected = (2 / 3 - 0.52) / 0.48
    assert fleiss_kappa([[2, 0], [1, 2]]) == pytest.approx(expected)
    assert fleiss_kappa([[2, 0], [1, 2], [1, 0]]) == pytest.approx(expected)
    assert fleiss_kappa([[3, 0], [3, 0]]) is None  # one category only: undefined
    assert fleiss_kappa([[1, 0]]) is None
    with pytest.raises(AgreementError, match="subjects x categories"):
        fleiss_kappa([1, 2, 3])


# --- reader agreement -------------------------------------------------------------


def test_identical_readers_agree_perfectly() -> None:
    findings = []
    for reader in ("R1", "R2", "R3"):
        findings += [
            box(1, reader, "Nodule/Mass", 10, 10, 50, 50),
            box(1, reader, "Cardiomegaly", 100, 200, 400, 300),
            box(2, reader, "Nodule/Mass", 5, 5, 20, 20),
            normal(3, reader),
        ]
    report = reader_agreement(findings)
    assert report.rows() == [
        ("Cardiomegaly", 1, 1.0, 1.0, 1.0),
        ("Nodule/Mass", 2, 1.0, 1.0, 1.0),
        ("all classes", 3, 1.0, 1.0, 1.0),
    ]
    assert [(r.image_id, r.readers, r.classes, r.all_agree) for r in report.images] == [
        (1, 3, ("Cardiomegaly", "Nodule/Mass"), True),
        (2, 3, ("Nodule/Mass",), True),
        (3, 3, (), True),
    ]
    assert report.images[2].box_f1 is None  # nobody drew a box
    assert len(COLUMNS) == len(report.rows()[0])


def test_disjoint_boxes_score_zero() -> None:
    findings = [
        box(1, "R1", "Nodule/Mass", 0, 0, 10, 10),
        box(1, "R2", "Nodule/Mass", 50, 50, 60, 60),
        box(2, "R1", "ILD", 0, 0, 100, 100),
        box(2, "R2", "Pleural effusion", 0, 0, 100, 100),  # same place, another class
    ]
    report = reader_agreement(findings)
    assert report.overall.box_f1 == 0.0
    assert {r.class_name: r.box_f1 for r in report.classes} == {
        "ILD": 0.0,
        "Nodule/Mass": 0.0,
        "Pleural effusion": 0.0,
    }
    nodule = next(r for r in report.classes if r.class_name == "Nodule/Mass")
    assert nodule.image_agreement == 1.0  # both saw a nodule, just not the same one
    assert report.overall.image_agreement == 0.5


def test_box_f1_and_kappa_by_hand() -> None:
    findings = [
        # Image 1: R1 two nodules, R2 one of them (IoU 0.81), R3 nothing.
        box(1, "R1", "Nodule/Mass", 10, 10, 30, 30),
        box(1, "R1", "Nodule/Mass", 100, 100, 120, 120),
        box(1, "R2", "Nodule/Mass", 11, 11, 31, 31),
        normal(1, "R3"),
        # Image 2: all three see the nodule; image 3 and 4 as in the kappa example.
        *(box(2, r, "Nodule/Mass", 0, 0, 10, 10) for r in ("R1", "R2", "R3")),
        *(normal(3, r) for r in ("R1", "R2", "R3")),
        box(4, "R1", "Nodule/Mass", 0, 0, 10, 10),
        normal(4, "R2"),
        normal(4, "R3"),
    ]
    report = reader_agreement(findings)
    (nodule,) = report.classes
    # Present counts 2, 3, 0, 1 of 3 readers: kappa 1/3 as computed by hand above.
    assert nodule.kappa == pytest.approx(1 / 3)
    assert nodule.images == 3 and nodule.image_agreement == pytest.approx(1 / 3)
    # Units with boxes: image 1 pairs R1-R2 2/3, R1-R3 0, R2-R3 0; image 2 three
    # pairs of 1; image 4 pairs R1-R2 0, R1-R3 0 -> mean of 8 units.
    assert nodule.box_f1 == pytest.approx((2 / 3 + 0 + 0 + 3 + 0 + 0) / 8)
    image_1 = report.images[0]
    assert image_1.all_agree is False and image_1.box_f1 == pytest.approx((2 / 3) / 3)
    assert report.overall.kappa == pytest.approx(1 / 3)  # one class: pooled = per class


def test_single_reader_images_are_counted_but_not_scored() -> None:
    findings = [
        box(1, "R1", "ILD", 0, 0, 10, 10),
        box(2, "R1", "ILD", 0, 0, 10, 10),
        box(2, "R2", "ILD", 0, 0, 10, 10),
    ]
    report = reader_agreement(findings)
    assert report.single_reader_images == 1
    assert report.overall.images == 1
    assert report.images[0].all_agree is None and report.images[0].box_f1 is None
    assert report.classes[0].kappa is None  # every rating "present": kappa undefined
    stored = json.loads(json.dumps(report.as_dict()))
    assert stored["method"]["iou_threshold"] == 0.4
    assert stored["overall"]["image_agreement"] == 1.0
    assert stored["images"][0] == {
        "image_id": 1,
        "readers": 1,
        "classes": ["ILD"],
        "all_agree": None,
        "box_f1": None,
    }


def test_image_level_findings_count_for_presence_not_for_boxes() -> None:
    findings = [Finding(1, "COVID-19", None, r) for r in ("R1", "R2")]
    report = reader_agreement(findings)
    assert report.rows() == [
        ("COVID-19", 1, 1.0, None, None),
        ("all classes", 1, 1.0, None, None),
    ]


def test_agreement_refuses_unusable_input() -> None:
    with pytest.raises(AgreementError, match="name its reader") as caught:
        reader_agreement([Finding(7, "ILD", None, None)])
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RadlakeError)
    with pytest.raises(AgreementError, match=r"IoU threshold in \(0, 1\]"):
        reader_agreement([], iou_threshold=0)
    empty = reader_agreement([])
    assert empty.rows() == [("all classes", 0, None, None, None)]


# --- consensus ----------------------------------------------------------------------


def test_two_overlapping_readers_and_an_outlier_fuse_into_one_box() -> None:
    findings = [
        box(1, "R1", "Nodule/Mass", 10, 10, 50, 50),
        box(1, "R2", "Nodule/Mass", 14, 12, 54, 56),  # IoU with R1's about 0.75
        box(1, "R3", "Nodule/Mass", 300, 300, 340, 340),  # the outlier
    ]
    fused, method = consensus_findings(findings)
    assert method == {"name": "mean-of-matched-boxes", "iou_threshold": 0.4, "min_readers": 2}
    image_level, fused_box = fused
    assert image_level == Finding(1, "Nodule/Mass", None, None, LabelOrigin.CONSENSUS, 1.0)
    assert fused_box.box == Box(12, 11, 52, 53)  # the mean of R1's and R2's
    assert fused_box.reader is None and fused_box.origin is LabelOrigin.CONSENSUS
    assert fused_box.confidence == pytest.approx(2 / 3)

    strict, method = consensus_findings(findings, min_readers=3)
    assert method["min_readers"] == 3
    assert [f for f in strict if f.box is not None] == []  # no three readers overlap
    assert strict == [Finding(1, "Nodule/Mass", None, None, LabelOrigin.CONSENSUS, 1.0)]


def test_consensus_presence_needs_k_readers_and_no_finding_fills_the_rest() -> None:
    findings = [
        box(1, "R1", "ILD", 0, 0, 10, 10),
        normal(1, "R2"),
        normal(1, "R3"),
        *(normal(2, r) for r in ("R1", "R2", "R3")),
    ]
    fused, _ = consensus_findings(findings)
    assert [(f.image_id, f.class_name, f.box, f.reader, f.origin) for f in fused] == [
        (1, "No finding", None, None, LabelOrigin.CONSENSUS),
        (2, "No finding", None, None, LabelOrigin.CONSENSUS),
    ]
    assert [f.confidence for f in fused] == pytest.approx([2 / 3, 1.0])  # readers who saw nothing


def test_clusters_take_one_box_per_reader_and_need_every_pair_to_overlap() -> None:
    boxes = np.array(
        [
            (0, 0, 10, 10),  # R0
            (1, 0, 11, 10),  # R0 again, overlaps its own first box
            (0, 0, 10, 10),  # R1
            (5, 0, 15, 10),  # R2: 1/3 with box 0 and 2, 0.54 with box 1
        ],
        dtype=np.float64,
    )
    clusters = cluster_boxes([0, 0, 1, 2], boxes, 0.4)
    assert clusters == [[0, 2], [1, 3]]  # box 0 and 2 are identical, so they join first
    # A chain (A~B, B~C, A!~C) is not one cluster.
    chain = np.array([(0, 0, 10, 10), (4, 0, 14, 10), (8, 0, 18, 10)], dtype=np.float64)
    assert cluster_boxes([0, 1, 2], chain, 0.4) == [[0, 1], [2]]


def test_consensus_is_independent_of_input_order_and_checks_parameters() -> None:
    findings = [
        box(1, "R1", "ILD", 0, 0, 10, 10),
        box(1, "R2", "ILD", 1, 1, 11, 11),
        box(1, "R1", "ILD", 50, 50, 60, 60),
        box(1, "R3", "ILD", 51, 50, 61, 60),
        box(2, "R1", "ILD", 0, 0, 10, 10),
        box(2, "R2", "ILD", 0, 0, 10, 10),
    ]
    forward, _ = consensus_findings(findings)
    assert consensus_findings(findings[::-1])[0] == forward
    assert [f.box for f in forward if f.image_id == 1] == [
        None,
        Box(0.5, 0.5, 10.5, 10.5),
        Box(50.5, 50, 60.5, 60),
    ]
    with pytest.raises(AgreementError, match="at least 1 agreeing reader"):
        consensus_findings(findings, min_readers=0)
    with pytest.raises(AgreementError, match="IoU threshold"):
        consensus_findings(findings, iou_threshold=1.5)
    with pytest.raises(AgreementError, match="name its reader"):
        consensus_findings([Finding(1, "ILD", Box(0, 0, 1, 1))])


# --- agreement over labels alone (issue 9) ------------------------------------------


def _lake_at(folder: Path) -> Lake:
    folder.mkdir()
    engine = make_engine(f"sqlite:///{folder / 'catalog.sqlite'}")
    upgrade(engine)
    return Lake(engine, open_store((folder / "store").as_uri()), Pseudonymizer(SECRET))


def _agreement_by_key(lake: Lake, source: str | None = None) -> tuple[AgreementReport, list[Any]]:
    """The report over a lake's reader labels and its per-image rows keyed by the
    dataset's image key (the same whether the image is catalogued or not)."""
    with session_factory(lake.engine)() as session:
        findings, subjects = reader_findings(session, source=source)
        keys = {
            image_id: key
            for image_id, key in session.execute(
                select(Label.image_id, Label.source_image_key).where(Label.image_id.is_not(None))
            )
        }
    report = reader_agreement(findings)
    rows = []
    for row in report.images:
        subject = subjects[row.image_id]
        key = subject.source_image_key if subject.image_id is None else keys[subject.image_id]
        rows.append((key, row.readers, row.classes, row.all_agree, row.box_f1))
    return report, sorted(rows, key=lambda r: str(r[0]))


def test_labels_alone_give_the_agreement_they_give_with_their_images(
    lake: Lake, tmp_path: Path
) -> None:
    with_images, labels_only = tmp_path / "vin", tmp_path / "vin-labels"
    write_vinbigdata(with_images, range(30))
    labels_only.mkdir()
    shutil.copy(with_images / "train.csv", labels_only / "train.csv")  # no train/ folder
    alone = _lake_at(tmp_path / "alone")
    for target, root in ((lake, with_images), (alone, labels_only)):
        summary = load_source(
            read_vinbigdata(root),
            engine=target.engine,
            store=target.store,
            pseudonymizer=target.pseudonymizer,
            executor=SerialExecutor(),
        )
        assert summary.labels == 90
    with session_factory(alone.engine)() as session:
        attached = session.scalar(select(func.count(Label.id)).where(Label.image_id.is_not(None)))
    assert attached == 0  # truly labels alone
    expected, expected_rows = _agreement_by_key(lake)
    found, found_rows = _agreement_by_key(alone, source="vinbigdata")
    # Stored boxes are the original ones scaled by 1/10 on both axes: IoU, and so every
    # figure, is the same up to float rounding.
    assert len(found.rows()) == len(expected.rows()) == 3
    for got, want in zip(found.rows(), expected.rows(), strict=True):
        assert got[:2] == want[:2]
        assert got[2:] == pytest.approx(want[2:])
    assert [r[:4] for r in found_rows] == [r[:4] for r in expected_rows]
    assert [r[4] for r in found_rows] == pytest.approx([r[4] for r in expected_rows])
    assert found.overall.images == 30 and found.single_reader_images == 0
    alone.engine.dispose()


def test_agreement_command_reads_a_labels_only_source(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "vin"
    write_vinbigdata(root, range(9))
    (root / "train_meta.csv").unlink()
    shutil.rmtree(root / "train")
    assert run_radlake(home, "init").returncode == 0
    assert run_radlake(home, "source", "vinbigdata", str(root)).returncode == 0
    result = run_radlake(home, "labels", "agreement", "--source", "vinbigdata", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["origin"] == "ground_truth" and report["overall"]["images"] == 9
    first = report["images"][0]
    assert (first["image_id"], first["source"], first["source_image_key"]) == (
        None,
        "vinbigdata",
        "img0000",
    )
    table = run_radlake(home, "labels", "agreement")
    assert "ground_truth labels" in table.stdout and "9 of 9 label groups" in table.stdout
    missing = run_radlake(home, "labels", "agreement", "--source", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error: no reader-attributed ground_truth labels of source 'nope'"
    )
