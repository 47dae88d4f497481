"""`radlake simulate` (issue 11): real HTTP traffic to POST /predict in stages of
concurrent workers, and the simulated reviewer.

The matcher (traffic/reviewer.review_decisions) and the pattern are tested as pure
functions; the command runs as a user runs it (a subprocess with RADLAKE_HOME and the
catalog URL) against a small lake on each catalog backend: six 256 x 192 PNGs in a
dataset whose one split is `production`, and a model (tests/inference_graphs.py) that
answers three fixed boxes, so every verdict the reviewer files is known in advance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from radlake.auth import list_tokens
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.feedback_models import Feedback
from radlake.catalog.inference_models import InferenceRun, Prediction
from radlake.catalog.models import Label
from radlake.config import Settings
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.domain import Box
from radlake.inference.registry import register_version
from radlake.lake import Lake, init_lake
from radlake.pipelines.executor import SerialExecutor
from radlake.pipelines.source_load import load_source
from radlake.sources.vinbigdata import read_vinbigdata
from radlake.traffic.pattern import MAX_STAGES, MAX_WORKERS, SimulationError, parse_pattern
from radlake.traffic.report import percentiles
from radlake.traffic.reviewer import Decision, Predicted, Truth, ground_truth, review_decisions
from tests.inference_graphs import constant_head, yolov8_head
from tests.test_predict_batch import HEIGHT, LEFT, NAMES, RIGHT, WIDTH

Result = subprocess.CompletedProcess[str]

# -- the pattern -------------------------------------------------------------------


def test_pattern_parses_positive_worker_counts() -> None:
    assert parse_pattern("1,2,3,5,3,2,1") == (1, 2, 3, 5, 3, 2, 1)
    assert parse_pattern(" 4 , 1 ") == (4, 1)
    assert parse_pattern(",".join(["1"] * MAX_STAGES)) == (1,) * MAX_STAGES
    assert parse_pattern(str(MAX_WORKERS)) == (MAX_WORKERS,)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "1,,2",
        "1,2,",
        "0",
        "-1",
        "1.5",
        "two",
        str(MAX_WORKERS + 1),
        "1;2",
        ",".join(["1"] * (MAX_STAGES + 1)),
    ],
)
def test_pattern_refuses_bad_input(text: str) -> None:
    with pytest.raises(SimulationError):
        parse_pattern(text)


def test_percentiles_are_numpys() -> None:
    assert percentiles([]) == {}
    found = percentiles([float(n) for n in range(1, 101)])
    assert found == pytest.approx({50: 50.5, 95: 95.05, 99: 99.01})


# -- the matcher -------------------------------------------------------------------

L, R = "Left Lung", "Right Lung"


def predicted(prediction_id: int, class_name: str, score: float, *box: float) -> Predicted:
    return Predicted(prediction_id, class_name, score, Box(*box))


def test_matcher_accepts_corrects_rejects_and_adds() -> None:
    truths = [Truth(L, Box(0, 0, 100, 100)), Truth(R, Box(200, 0, 300, 100))]
    boxes = [
        predicted(1, L, 0.9, 0, 0, 100, 90),  # IoU 0.9 with the left truth
        predicted(2, R, 0.4, 400, 400, 450, 450),  # overlaps nothing
    ]
    assert review_decisions(boxes, truths) == [
        Decision("accept", 1),
        Decision("reject", 2),
        Decision("add", None, R, Box(200, 0, 300, 100)),
    ]
    # IoU 0.6: the same class but a loose box is corrected to the truth's box.
    loose = [predicted(7, L, 0.8, 0, 0, 100, 60)]
    assert review_decisions(loose, truths[:1]) == [
        Decision("correct", 7, class_name=None, box=Box(0, 0, 100, 100))
    ]
    # ... and accepted when the reviewer accepts from IoU 0.6.
    assert review_decisions(loose, truths[:1], accept_iou=0.6) == [Decision("accept", 7)]


def test_matcher_is_greedy_by_score_and_one_truth_per_box() -> None:
    truth = [Truth(L, Box(0, 0, 100, 100))]
    # The lower-scored box overlaps more, but the higher score chooses first.
    boxes = [predicted(1, L, 0.5, 0, 0, 100, 100), predicted(2, L, 0.9, 0, 0, 100, 80)]
    assert review_decisions(boxes, truth) == [Decision("accept", 2), Decision("reject", 1)]
    # Below 0.5 there is no match: reject the box, add the truth.
    weak = [predicted(3, L, 0.9, 0, 0, 100, 45)]
    assert review_decisions(weak, truth) == [
        Decision("reject", 3),
        Decision("add", None, L, Box(0, 0, 100, 100)),
    ]


def test_matcher_corrects_the_class_of_a_box_on_another_class() -> None:
    truths = [Truth(R, Box(0, 0, 100, 100))]
    # Right place, wrong class: the class is corrected; the box too when loose.
    assert review_decisions([predicted(1, L, 0.9, 0, 0, 100, 95)], truths) == [
        Decision("correct", 1, class_name=R, box=None)
    ]
    assert review_decisions([predicted(1, L, 0.9, 0, 0, 100, 60)], truths) == [
        Decision("correct", 1, class_name=R, box=Box(0, 0, 100, 100))
    ]
    # A box of the right class takes the truth first, even with a lower score.
    both = [predicted(1, L, 0.9, 0, 0, 100, 95), predicted(2, R, 0.3, 0, 0, 100, 90)]
    assert review_decisions(both, truths) == [Decision("reject", 1), Decision("accept", 2)]


def test_matcher_edges() -> None:
    assert review_decisions([], []) == []
    assert review_decisions([], [Truth(L, Box(1, 1, 2, 2))]) == [
        Decision("add", None, L, Box(1, 1, 2, 2))
    ]
    with pytest.raises(ValueError, match="accept_iou"):
        review_decisions([], [], accept_iou=0.4)


def test_ground_truth_keeps_the_models_classes_once() -> None:
    box = {"x_min": 1.0, "y_min": 2.0, "x_max": 3.0, "y_max": 4.0}
    labels = {
        "labels": [
            {"class_name": L, "origin": "ground_truth", "box": box, "reader": "R1"},
            {"class_name": L, "origin": "ground_truth", "box": box, "reader": "R2"},
            {"class_name": "Nodule", "origin": "ground_truth", "box": box},
            {"class_name": R, "origin": "ground_truth", "box": None},
            {"class_name": R, "origin": "feedback", "box": box},
        ]
    }
    assert ground_truth(labels, {L, R}) == [Truth(L, Box(1, 2, 3, 4))]


# -- a lake ------------------------------------------------------------------------

# The model's boxes in its 64 x 64 letterboxed input (stored = 4 x input, 8 rows of
# padding above) and what the reviewer makes of them:
#   Left Lung (10, 23, 30, 40) -> stored (40, 60, 120, 128): IoU 0.85 with LEFT, accept
#   Right Lung (35, 13, 59, 40) -> stored (140, 20, 236, 128): IoU 0.71 with RIGHT,
#       correct (box); on images without RIGHT, reject
#   Right Lung (1, 9, 7, 15) -> stored (4, 4, 28, 28): overlaps nothing, reject
# Images "b*" have a second Right Lung box far from every prediction: add.
MODEL_BOXES = [(10.0, 23.0, 30.0, 40.0), (35.0, 13.0, 59.0, 40.0), (1.0, 9.0, 7.0, 15.0)]
MODEL_SCORES = np.array([[0.9, 0.0], [0.0, 0.8], [0.0, 0.6]])
FAR = (20.0, 150.0, 100.0, 190.0)
IMAGES = {
    "a0": (LEFT, RIGHT),
    "a1": (LEFT, RIGHT),
    "a2": (LEFT, RIGHT),
    "b0": (LEFT, FAR),
    "b1": (LEFT, FAR),
    "b2": (LEFT, FAR),
}
EXPECTED = {  # verdicts per run, by image kind
    "a": Counter({"accept": 1, "correct": 1, "reject": 1}),
    "b": Counter({"accept": 1, "reject": 2, "add": 1}),
}


def write_source(root: Path) -> None:
    """A VinBigData-layout folder: PNGs, train.csv (boxes), train_meta.csv (sizes)."""
    (root / "train").mkdir(parents=True)
    rows, meta = [], []
    for name, (left, right) in IMAGES.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
        PILImage.fromarray(pixels).save(root / "train" / f"{name}.png")
        meta.append(f"{name},{HEIGHT},{WIDTH}")
        for class_id, class_name, box in ((0, L, left), (1, R, right)):
            rows.append(f"{name},{class_name},{class_id},R1,{','.join(map(str, box))}")
    header = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
    (root / "train.csv").write_text(header + "\n".join(rows) + "\n")
    (root / "train_meta.csv").write_text("image_id,dim0,dim1\n" + "\n".join(meta) + "\n")


@dataclass
class Site:
    home: Path
    catalog_url: str
    lake: Lake

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
        env.pop("COLUMNS", None)
        return env | {"RADLAKE_HOME": str(self.home), "RADLAKE_CATALOG_URL": self.catalog_url}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "radlake.cli.main", "simulate", *args]

    def simulate(self, *args: str, timeout: float = 120) -> Result:
        return subprocess.run(
            self.command(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def build_site(tmp_path: Path, catalog_url: str) -> Site:
    home = tmp_path / "home"
    settings = Settings(home=home, catalog_url=catalog_url, store_url=None, secret_key=None)
    lake, _ = init_lake(settings)
    write_source(tmp_path / "src")
    load_source(
        read_vinbigdata(tmp_path / "src"),
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        executor=SerialExecutor(),
    )
    request = VersionRequest(
        dataset="traffic",
        selection=ImageFilter(source="vinbigdata"),
        spec=SplitSpec.parse("production=1.0"),
    )
    head = yolov8_head(MODEL_BOXES, MODEL_SCORES)
    model = constant_head(head, metadata={"names": NAMES, "imgsz": "[64, 64]", "task": "detect"})
    with transaction(lake.engine) as session:
        create_version(session, request)
        register_version(session, lake.store, name="lungs", onnx_bytes_or_path=model)
    return Site(home, catalog_url, lake)


@pytest.fixture
def site(tmp_path: Path, catalog_url: str) -> Any:
    built = build_site(tmp_path, catalog_url)
    yield built
    built.lake.engine.dispose()


@pytest.fixture
def sqlite_site(tmp_path: Path) -> Any:
    built = build_site(tmp_path, f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield built
    built.lake.engine.dispose()


def ok_json(result: Result) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return json.loads(result.stdout)


def one_error_line(result: Result) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def runs_by(lake: Lake, caller: str) -> list[InferenceRun]:
    with session_factory(lake.engine)() as session:
        return list(session.scalars(select(InferenceRun).where(InferenceRun.caller == caller)))


# -- end to end --------------------------------------------------------------------


def test_simulate_runs_each_stage_and_records_every_request(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    args = ("--model", "lungs", "--dataset", "traffic", "--pattern", "1,2,1")
    started = time.monotonic()
    summary = ok_json(site.simulate(*args, "--stage-seconds", "1.5", "--out", str(out), "--json"))
    # It stops by itself: three 1.5 s stages, plus start-up and the last requests.
    assert time.monotonic() - started < 60
    stages = summary["stages"]
    assert [stage["workers"] for stage in stages] == [1, 2, 1]
    assert summary["interrupted"] is False and summary["results"] == str(out)
    lines = read_lines(out)
    assert {line["kind"] for line in lines} == {"predict"}  # no reviewer without --review
    assert len(lines) == summary["total"]["requests"] == sum(s["requests"] for s in stages)
    for stage in stages:
        mine = [line for line in lines if line["stage"] == stage["stage"]]
        assert len(mine) == stage["requests"] > 0
        assert {line["worker"] for line in mine} <= set(range(1, stage["workers"] + 1))
        assert {line["workers"] for line in mine} == {stage["workers"]}
        assert stage["errors"] == {} and stage["p50_ms"] <= stage["p95_ms"] <= stage["p99_ms"]
        assert stage["server_mean_ms"] > 0
    assert {line["status"] for line in lines} == {200}
    # Round robin over the split: the images in turn, every one of them.
    ids = sorted({line["image_id"] for line in lines})
    assert len(ids) == min(len(IMAGES), len(lines))
    assert all(line["boxes"] == 3 and line["client_ms"] >= line["latency_ms"] for line in lines)
    # The server recorded exactly these runs, under the run's own token, now revoked.
    runs = runs_by(site.lake, summary["caller"])
    assert sorted(run.id for run in runs) == sorted(line["run_id"] for line in lines)
    with session_factory(site.lake.engine)() as session:
        tokens = {t.name: t for t in list_tokens(session)}
    name = summary["caller"].removeprefix("api:")
    assert tokens[name].role == "viewer" and tokens[name].revoked_at is not None


def test_simulate_review_files_the_matchers_verdicts(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    result = site.simulate(
        "--model",
        "lungs",
        "--dataset",
        "traffic",
        "--pattern",
        "2,1",
        "--stage-seconds",
        "1",
        "--max-requests",
        "8",
        "--review",
        "--out",
        str(out),
        "--json",
    )
    summary = ok_json(result)
    lines = read_lines(out)
    sent = [line for line in lines if line["kind"] == "predict"]
    assert len(sent) == summary["total"]["requests"] <= 8
    assert summary["total"]["review_errors"] == {}
    with session_factory(site.lake.engine)() as session:
        rows = list(session.scalars(select(Feedback)))
        for line in sent:
            run_id = line["run_id"]
            # What the matcher decides on this run's stored boxes and the image's truth.
            boxes = [
                Predicted(p.id, p.class_name, p.score, Box(p.x_min, p.y_min, p.x_max, p.y_max))
                for p in session.scalars(select(Prediction).where(Prediction.run_id == run_id))
            ]
            truths = [
                Truth(label.class_name, Box(label.x_min, label.y_min, label.x_max, label.y_max))
                for label in session.scalars(
                    select(Label).where(
                        Label.image_id == line["image_id"], Label.x_min.is_not(None)
                    )
                )
            ]
            decided = review_decisions(boxes, truths)
            filed = [row for row in rows if row.run_id == run_id]
            assert sorted((d.verdict, d.prediction_id) for d in decided) == sorted(
                (row.verdict, row.prediction_id) for row in filed
            )
            kind = "a" if any(t.box == Box(*RIGHT) for t in truths) else "b"
            assert Counter(row.verdict for row in filed) == EXPECTED[kind]
            for row, decision in zip(
                sorted(filed, key=lambda r: (r.verdict, r.prediction_id or 0)),
                sorted(decided, key=lambda d: (d.verdict, d.prediction_id or 0)),
                strict=True,
            ):
                if decision.box is not None:
                    assert (row.x_min, row.y_min, row.x_max, row.y_max) == pytest.approx(
                        (
                            decision.box.x_min,
                            decision.box.y_min,
                            decision.box.x_max,
                            decision.box.y_max,
                        )
                    )
    assert rows and all(row.simulated for row in rows)
    assert Counter(row.verdict for row in rows) == Counter(summary["total"]["reviews"])
    feedback_lines = [line for line in lines if line["kind"] == "feedback"]
    assert len(feedback_lines) == len(rows)
    assert sum(line["kind"] == "labels" for line in lines) == len(sent)
    name = summary["caller"].removeprefix("api:")
    assert {row.reviewer for row in rows} == {name}


def test_simulate_stops_at_max_requests(sqlite_site: Site, tmp_path: Path) -> None:
    out = tmp_path / "capped.jsonl"
    started = time.monotonic()
    summary = ok_json(
        sqlite_site.simulate(
            "--model",
            "lungs",
            "--dataset",
            "traffic",
            "--pattern",
            "2,3,2",
            "--stage-seconds",
            "30",
            "--max-requests",
            "5",
            "--out",
            str(out),
            "--json",
        )
    )
    # Five requests take far less than a stage: the run ends when they are spent.
    assert time.monotonic() - started < 30
    assert summary["total"]["requests"] == 5 == len(read_lines(out))
    assert len(runs_by(sqlite_site.lake, summary["caller"])) == 5


def test_simulate_prints_a_table_and_says_where_results_are(sqlite_site: Site) -> None:
    result = sqlite_site.simulate(
        "--model", "lungs", "--dataset", "traffic", "--pattern", "1,2", "--stage-seconds", "0.5"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["stage", "workers", "requests", "req/s"]
    assert [line.split()[:2] for line in lines[1:4]] == [["1", "1"], ["2", "2"], ["total", "2"]]
    written = sorted((sqlite_site.home / "simulations").glob("*.jsonl"))
    assert len(written) == 1 and str(written[0]) in lines[-1]
    assert "stage 1/2: 1 worker(s)" in result.stderr


def test_simulate_refuses_bad_input_in_one_line(sqlite_site: Site) -> None:
    run = sqlite_site.simulate
    base = ("--stage-seconds", "1")
    assert "1..64" in one_error_line(
        run("--model", "lungs", "--dataset", "traffic", "--pattern", "1,0,2", *base)
    )
    assert "lungs2" in one_error_line(run("--model", "lungs2", "--dataset", "traffic", *base))
    assert "nothere" in one_error_line(run("--model", "lungs", "--dataset", "nothere", *base))
    line = one_error_line(run("--model", "lungs", "--dataset", "traffic", "--split", "test", *base))
    assert "no split 'test'" in line
    line = one_error_line(
        run("--model", "lungs", "--dataset", "traffic", "--url", "http://127.0.0.1:9", *base)
    )
    assert "token" in line
    for bad in ("ftp://x", "notaurl", "http://"):
        line = one_error_line(
            run("--model", "lungs", "--dataset", "traffic", "--url", bad, "--token", "t", *base)
        )
        assert "--url: expected http" in line
    assert not (sqlite_site.home / "simulations").exists()  # nothing was sent
    unwritable = one_error_line(
        run("--model", "lungs", "--dataset", "traffic", "--out", "/proc/x.jsonl", *base)
    )
    assert "cannot write --out /proc/x.jsonl" in unwritable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_simulate_against_a_dead_url_counts_errors(sqlite_site: Site, tmp_path: Path) -> None:
    out = tmp_path / "dead.jsonl"
    dead = sqlite_site.simulate(
        "--model",
        "lungs",
        "--dataset",
        "traffic",
        "--pattern",
        "1,2",
        "--stage-seconds",
        "1",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--token",
        "rl_nothing",
        "--out",
        str(out),
        "--json",
    )
    # The report, and exit 1: a run that reached nothing is a failure a script sees.
    assert dead.returncode == 1 and "every one of the" in dead.stderr, dead.stderr
    summary = json.loads(dead.stdout)
    for stage in summary["stages"]:
        assert stage["requests"] > 0 and stage["errors"] == {"connect": stage["requests"]}
        assert stage["server_mean_ms"] is None
    lines = read_lines(out)
    assert len(lines) == summary["total"]["requests"]
    assert all(line["status"] is None and line["error"].startswith("connect") for line in lines)


def test_simulate_ctrl_c_reports_what_was_sent(sqlite_site: Site, tmp_path: Path) -> None:
    out = tmp_path / "stopped.jsonl"
    process = subprocess.Popen(
        sqlite_site.command(
            "--model",
            "lungs",
            "--dataset",
            "traffic",
            "--pattern",
            "2,2",
            "--stage-seconds",
            "60",
            "--out",
            str(out),
            "--json",
        ),
        env=sqlite_site.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count("\n") >= 3):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and len(summary["stages"]) == 1
    assert summary["total"]["requests"] == len(read_lines(out)) >= 3
    # The run's token is revoked even so.
    with session_factory(sqlite_site.lake.engine)() as session:
        token = next(t for t in list_tokens(session) if f"api:{t.name}" == summary["caller"])
    assert token.revoked_at is not None
    with session_factory(sqlite_site.lake.engine)() as session:
        count = session.scalar(select(func.count(InferenceRun.id)))
    assert count == summary["total"]["requests"]
