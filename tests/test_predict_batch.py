"""The whole detection path on a lake: a labelled source -> a dataset version ->
register -> batch predict -> stored predictions -> evaluate, with known boxes and
so known mAP; resumable batches; one session for concurrent requests; the CLI.

Every image is 256 x 192 with a Left Lung and a Right Lung box at the same place,
and the models (tests/inference_graphs.py) answer constant boxes in their 64 x 64
letterboxed input: the exact model's boxes come back as the ground truth itself.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import delete, func, select

from radlake.catalog.db import session_factory, transaction
from radlake.catalog.inference_models import InferenceRun, ModelVersion, Prediction
from radlake.catalog.model_registry import predictions_for_image
from radlake.catalog.models import Image, Job, Label
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import DatasetError, VersionRequest, create_version
from radlake.domain import Box
from radlake.errors import ImageNotFound
from radlake.inference.errors import InferenceError, ModelNotFound
from radlake.inference.evaluation import (
    coco_scores,
    evaluate_version,
    latest_evaluation,
    mean_box_baseline,
)
from radlake.inference.registry import register_version
from radlake.inference.service import predict_images
from radlake.inference.sessions import SessionCache
from radlake.lake import Lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.predict import predict_batch, select_image_ids
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from tests.conftest import run_radlake
from tests.inference_graphs import constant_head, yolov8_head

WIDTH, HEIGHT = 256, 192
LEFT, RIGHT = (40.0, 60.0, 120.0, 140.0), (140.0, 20.0, 236.0, 172.0)
# The same boxes in the 64 x 64 letterboxed input (scale 1/4, 8 rows of padding above).
LEFT_IN, RIGHT_IN = (10.0, 23.0, 30.0, 43.0), (35.0, 13.0, 59.0, 51.0)
NAMES = "{0: 'Left Lung', 1: 'Right Lung'}"
IMAGES = 12


def write_source(root: Path, count: int = IMAGES) -> None:
    (root / "train").mkdir(parents=True)
    rows, meta = [], []
    for n in range(count):
        image_id = f"cxr{n:03d}"
        rng = np.random.default_rng(zlib.crc32(image_id.encode()))
        PILImage.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)).save(
            root / "train" / f"{image_id}.png"
        )
        meta.append(f"{image_id},{HEIGHT},{WIDTH}")
        for class_id, name, box in ((0, "Left Lung", LEFT), (1, "Right Lung", RIGHT)):
            rows.append(f"{image_id},{name},{class_id},R1,{','.join(str(v) for v in box)}")
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n" + "\n".join(rows) + "\n"
    )
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\n" + "\n".join(meta) + "\n")


def model_file(
    left: tuple[float, ...] = LEFT_IN, scores: tuple[float, float] = (0.9, 0.8)
) -> bytes:
    head = yolov8_head([left, RIGHT_IN], np.array([[scores[0], 0.01], [0.02, scores[1]]]))
    return constant_head(head, metadata={"names": NAMES, "imgsz": "[64, 64]", "task": "detect"})


def load_films(
    lake: Lake,
    root: Path,
    *,
    count: int = IMAGES,
    dataset: str = "lungs",
    splits: str = "training=0.5,test=0.5",
    model: bytes | None = None,
) -> int:
    """The VinBigData-layout source of `count` films loaded, dataset version 1 with
    these splits, and model `lungs` v1 (model_file() unless given) trained on it;
    returns the dataset version's id."""
    write_source(root, count)
    load_source(
        read_vinbigdata(root),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    request = VersionRequest(
        dataset=dataset, selection=ImageFilter(source="vinbigdata"), spec=SplitSpec.parse(splits)
    )
    with transaction(lake.engine) as session:
        version, _ = create_version(session, request)
        assert register_version(
            session,
            lake.store,
            name="lungs",
            onnx_bytes_or_path=model_file() if model is None else model,
            trained_on_version_id=version.id,
        ) == ("lungs", 1)
        return version.id


@pytest.fixture
def lungs(lake: Lake, tmp_path: Path) -> Lake:
    """A lake with the source loaded, dataset `lungs` v1 (half training, half test)
    and model `lungs` v1 (exact boxes)."""
    load_films(lake, tmp_path / "src")
    return lake


def test_register_predict_store_evaluate(lungs: Lake) -> None:
    test_ids = select_image_ids(lungs, dataset="lungs", split="test")
    assert len(test_ids) == IMAGES // 2
    summary = predict_batch(lungs, model_ref="lungs", image_ids=test_ids, batch_size=4)
    assert (summary.predicted, summary.skipped, summary.boxes, summary.unreadable) == (6, 0, 12, {})
    with session_factory(lungs.engine)() as session:
        stored = predictions_for_image(session, image_id=test_ids[0])
        # Predictions are kept apart: the label table holds ground truth only.
        origins = set(session.scalars(select(Label.origin).distinct()))
        runs = session.scalar(select(func.count(InferenceRun.id)))
    assert origins == {"ground_truth"} and runs == 6
    assert [(p.class_name, round(p.score, 6), p.box) for p in stored] == [
        ("Left Lung", 0.9, Box(*LEFT)),  # exact: the letterbox inverse loses nothing
        ("Right Lung", 0.8, Box(*RIGHT)),
    ]
    assert stored[0].model == "lungs" and stored[0].version == 1

    report = evaluate_version(lungs, model_ref="lungs", dataset="lungs", split="test")
    assert (report.scores.map50, report.scores.map50_95) == pytest.approx((1.0, 1.0))
    assert report.scores.per_class["Left Lung"] == {"ap": 1.0, "ap50": 1.0, "boxes": 6}
    assert report.baseline.map50_95 == pytest.approx(1.0)  # every lung in the same place
    assert report.images == 6 and report.as_dict()["labels"].startswith("origin ground_truth")

    # Left Lung 4 input pixels (16 stored) to the right: IoU 2/3 with the truth, so it
    # matches at IoU 0.50, 0.55, 0.60, 0.65 and misses at 0.70..0.95: AP 0.4; Right
    # Lung stays exact (AP 1.0). mAP50-95 = 0.7, mAP50 = 1.0.
    shifted = (LEFT_IN[0] + 4, LEFT_IN[1], LEFT_IN[2] + 4, LEFT_IN[3])
    with transaction(lungs.engine) as session:
        register_version(session, lungs.store, name="lungs", onnx_bytes_or_path=model_file(shifted))
    report = evaluate_version(lungs, model_ref="lungs:2", dataset="lungs", split="test")
    assert report.scores.map50 == pytest.approx(1.0)
    assert report.scores.map50_95 == pytest.approx(0.7)
    assert report.scores.per_class["Left Lung"]["ap"] == pytest.approx(0.4)
    with session_factory(lungs.engine)() as session:
        metrics = session.scalars(select(ModelVersion.metrics).order_by(ModelVersion.version)).all()
    assert metrics[0]["evaluations"]["lungs@1/test"]["model_scores"]["map50_95"] == 1.0
    assert metrics[1]["evaluations"]["lungs@1/test"]["model_scores"]["map50_95"] == pytest.approx(
        0.7
    )


def test_batch_is_resumable_and_survives_an_unreadable_image(lungs: Lake) -> None:
    everything = select_image_ids(lungs, dataset="lungs")
    first = predict_batch(lungs, model_ref="lungs:1", image_ids=everything[:5], workers=2)
    assert (first.predicted, first.skipped) == (5, 0)  # in worker processes
    again = predict_batch(lungs, model_ref="lungs:1", image_ids=everything)
    assert (again.predicted, again.skipped) == (IMAGES - 5, 5)
    assert predict_batch(lungs, model_ref="lungs:1", image_ids=everything).predicted == 0
    # Other thresholds are another prediction of the same images.
    other = predict_batch(lungs, model_ref="lungs", image_ids=everything, score_threshold=0.85)
    assert (other.predicted, other.boxes) == (IMAGES, IMAGES)  # only Left Lung scores 0.9

    # A run lost mid-way (its rows gone) and an original that went bad in the store.
    with transaction(lungs.engine) as session:
        runs = select(InferenceRun.id).where(
            InferenceRun.image_id.in_(everything[:2]), InferenceRun.score_threshold == 0.25
        )
        session.execute(delete(Prediction).where(Prediction.run_id.in_(runs)))
        session.execute(
            delete(InferenceRun).where(
                InferenceRun.image_id.in_(everything[:2]), InferenceRun.score_threshold == 0.25
            )
        )
        broken = session.get_one(Image, everything[1]).original_key
    lungs.store.put_bytes(broken, b"\x89PNG\r\n\x1a\n truncated")
    resumed = predict_batch(lungs, model_ref="lungs", image_ids=everything)
    assert (resumed.predicted, resumed.skipped, list(resumed.unreadable)) == (
        1,
        IMAGES - 2,
        [everything[1]],
    )
    assert "patient" not in resumed.line().lower()
    with session_factory(lungs.engine)() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "predict").order_by(Job.id)).all()
    assert [job.status for job in jobs] == ["succeeded"] * 5
    assert jobs[-1].counts["predicted"] == 1 and jobs[-1].counts["unreadable"] == 1
    assert jobs[-1].parameters["model"] == "lungs:1" and jobs[-1].finished_at is not None
    with pytest.raises(ImageNotFound):
        predict_batch(lungs, model_ref="lungs", image_ids=[987654])


def test_concurrent_requests_reuse_one_session(lungs: Lake) -> None:
    cache = SessionCache()
    image_ids = select_image_ids(lungs, dataset="lungs")

    def ask(image_id: int) -> list[object]:
        (result,) = predict_images(
            lungs, model_ref="lungs", image_ids=[image_id], caller="test", sessions=cache
        )
        assert result.run_id is not None and result.latency_ms > 0
        return [(d.class_name, d.box) for d in result.detections]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, image_ids * 2))
    assert cache.loads == 1
    assert all(
        answer == [("Left Lung", Box(*LEFT)), ("Right Lung", Box(*RIGHT))] for answer in answers
    )
    with session_factory(lungs.engine)() as session:
        callers = set(session.scalars(select(InferenceRun.caller)))
    assert callers == {"test"}


def test_thresholds_and_references_are_checked_before_work(lungs: Lake) -> None:
    ids = select_image_ids(lungs, dataset="lungs")[:1]
    for score, iou in ((11, 0.5), (0.5, -0.1), (float("nan"), 0.5)):
        with pytest.raises(InferenceError, match=r"threshold in \[0, 1\]"):
            predict_images(
                lungs, model_ref="lungs", image_ids=ids, score_threshold=score, iou_threshold=iou
            )
        with pytest.raises(InferenceError, match=r"threshold in \[0, 1\]"):
            predict_batch(
                lungs, model_ref="lungs", image_ids=ids, score_threshold=score, iou_threshold=iou
            )
    with pytest.raises(InferenceError, match=r"selection .* or a dataset"):
        select_image_ids(lungs)
    (kept,) = predict_images(
        lungs, model_ref="lungs", image_ids=ids, score_threshold=0.85, record=False
    )
    assert [d.class_name for d in kept.detections] == ["Left Lung"] and kept.run_id is None


def test_mean_box_baseline_and_coco_scores_by_hand() -> None:
    training = {1: [("a", Box(0, 0, 10, 10))], 2: [("a", Box(10, 10, 30, 30))]}
    baseline = mean_box_baseline(
        training, {1: (100, 100), 2: (200, 200)}, {7: (100, 100), 8: (400, 200)}
    )
    assert baseline[7] == [("a", 1.0, Box(2.5, 2.5, 12.5, 12.5))]
    assert baseline[8] == [("a", 1.0, Box(10.0, 5.0, 50.0, 25.0))]
    truth = {7: [("a", Box(0, 0, 80, 80))]}
    sizes = {7: (100, 100)}
    exact = coco_scores(truth, {7: [("a", 0.5, Box(0, 0, 80, 80))]}, sizes, ["a", "b"])
    assert (exact.map50, exact.map50_95) == pytest.approx((1.0, 1.0)) and exact.per_class["b"][
        "ap"
    ] is None
    shifted = coco_scores(truth, {7: [("a", 0.5, Box(16, 0, 96, 80))]}, sizes, ["a"])
    assert (shifted.map50, shifted.map50_95) == pytest.approx((1.0, 0.4))
    nothing = coco_scores(truth, {}, sizes, ["a"])
    assert (nothing.map50, nothing.map50_95) == (0.0, 0.0)


def test_cli_predict_and_evaluate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_source(tmp_path / "src", count=8)
    (tmp_path / "lungs.onnx").write_bytes(model_file())
    steps = [
        ("init",),
        ("source", "vinbigdata", str(tmp_path / "src")),
        ("dataset", "create", "lungs", "--splits", "training=0.5,test=0.5"),
        ("model", "register", "lungs", str(tmp_path / "lungs.onnx"), "--dataset", "lungs@1"),
    ]
    for step in steps:
        result = run_radlake(home, *step)
        assert result.returncode == 0, (step, result.stderr)
    result = run_radlake(
        home, "predict", "--model", "lungs", "--dataset", "lungs", "--split", "test", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predicted"] == 4
    result = run_radlake(home, "model", "evaluate", "lungs", "--dataset", "lungs")
    assert result.returncode == 0, result.stderr
    assert "mean-box baseline" in result.stdout and "origin ground_truth" in result.stdout
    shown = json.loads(run_radlake(home, "model", "show", "lungs", "--json").stdout)
    assert shown["trained_on"] == "lungs@1"
    assert shown["metrics"]["evaluations"]["lungs@1/test"]["model_scores"]["map50"] == 1.0
    result = run_radlake(
        home, "predict", "--model", "lungs", "--select", "source=vinbigdata", "--score", "11"
    )
    assert result.returncode == 1 and "threshold in [0, 1], got 11" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluation_refuses_what_it_cannot_score(lungs: Lake) -> None:
    with pytest.raises(InferenceError, match="has no 'holdout' images"):
        evaluate_version(lungs, model_ref="lungs", dataset="lungs", split="holdout")
    with pytest.raises(InferenceError, match=r"threshold in \[0, 1\]"):
        evaluate_version(lungs, model_ref="lungs", dataset="lungs", iou_threshold=2)
    with pytest.raises(DatasetError):
        evaluate_version(lungs, model_ref="lungs", dataset="nope")
    with pytest.raises(ModelNotFound):
        evaluate_version(lungs, model_ref="ribs", dataset="lungs")
    # Evaluated twice: the newest report is the one shown, whatever the JSON key order.
    evaluate_version(lungs, model_ref="lungs", dataset="lungs", split="training")
    report = evaluate_version(lungs, model_ref="lungs", dataset="lungs", split="test")
    with session_factory(lungs.engine)() as session:
        metrics = session.scalars(select(ModelVersion.metrics)).one()
    assert sorted(metrics["evaluations"]) == ["lungs@1/test", "lungs@1/training"]
    latest = latest_evaluation(metrics)
    assert latest is not None and latest["split"] == "test"
    assert latest["evaluated_at"] == report.evaluated_at.isoformat()


def test_an_unknown_split_is_refused_not_an_empty_success(lungs: Lake) -> None:
    # Found by a hostile tester: `radlake predict --dataset lungs --split tset` printed
    # "0 selected, ... 0 predicted" and exited 0.
    with pytest.raises(InferenceError, match=r"lungs@1 has no split 'tset' \(its splits: "):
        select_image_ids(lungs, dataset="lungs", split="tset")
    assert len(select_image_ids(lungs, dataset="lungs", split="training")) == IMAGES // 2
    assert len(select_image_ids(lungs, dataset="lungs")) == IMAGES


def test_a_lost_original_is_one_unreadable_image_not_a_failed_job(lungs: Lake) -> None:
    # Found by a hostile tester: one original missing from the store stopped
    # `radlake predict` over 98 films with "error: no object under key ...".
    ids = select_image_ids(lungs, dataset="lungs")
    with session_factory(lungs.engine)() as session:
        lost = session.get_one(Image, ids[2]).original_key
    moved = lungs.store.get_bytes(lost)
    lungs.store.delete(lost)
    summary = predict_batch(lungs, model_ref="lungs", image_ids=ids, batch_size=4)
    assert summary.predicted == IMAGES - 1
    assert summary.unreadable == {ids[2]: "its original is missing from the store"}
    lungs.store.put_bytes(lost, moved)  # found again: the next run predicts just it
    again = predict_batch(lungs, model_ref="lungs", image_ids=ids, batch_size=4)
    assert (again.predicted, again.skipped, again.unreadable) == (1, IMAGES - 1, {})


def test_a_killed_run_is_marked_interrupted_by_the_next(lungs: Lake) -> None:
    """SIGKILL leaves no chance to close the job row: the next run on this host marks
    it (found by the hostile pass: it stayed 'running' for ever)."""
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that no longer exists
    dead_pid = child.pid
    with transaction(lungs.engine) as session:
        killed = Job(kind="predict", status="running", host=socket.gethostname(), pid=dead_pid)
        session.add(killed)
        session.flush()
        killed_id = killed.id
    everything = select_image_ids(lungs, dataset="lungs")
    predict_batch(lungs, model_ref="lungs:1", image_ids=everything[:1])
    with session_factory(lungs.engine)() as session:
        jobs = {job.id: job.status for job in session.scalars(select(Job))}
    assert jobs[killed_id] == "interrupted"
    assert list(jobs.values()).count("running") == 0
