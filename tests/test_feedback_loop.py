"""The loop closed end to end (issue 11), through the `radlake` command as a user types
it, on a small real lake: 30 chest X-rays of the shared lung subset with the
collection's lung boxes.

train a small model -> the traffic simulator at a tiny pattern with the simulated
reviewer -> the retraining set -> retrain -> both versions on the same test split ->
lineage -> promote shows the delta.

Figures are not asserted (a few epochs at 64 px learn little); the test asserts what
must hold whatever they are: the runs, the feedback marked simulated, the held-out
split unchanged, the comparison on one split, the lineage chain.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_radlake

pytest.importorskip("torch", reason="training needs the [train] extra")
pytest.importorskip("onnxruntime", reason="predictions need the [inference] extra")

DATA = Path(__file__).resolve().parents[2] / "shared/data/cxr_ieee8023_lung_boxes_subset/data"
BOXES = DATA / "annotations/imageannotation_ai_lung_bounding_boxes.json"
FILMS = 30
SMALL = ("--epochs", "6", "--size", "64")


def subset(root: Path) -> Path:
    """The first FILMS rows of the collection's metadata.csv, their images linked."""
    folder = root / "films"
    (folder / "images").mkdir(parents=True)
    with (DATA / "metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if (DATA / "images" / r["filename"]).is_file()][:FILMS]
        fields = reader.fieldnames
    assert fields is not None and len(rows) == FILMS
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        (folder / "images" / row["filename"]).symlink_to(DATA / "images" / row["filename"])
    return folder


def radlake_json(home: Path, *args: str, timeout: float = 600) -> Any:
    done = run_radlake(home, *args, "--json", timeout=timeout)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    return json.loads(done.stdout)


def radlake_ok(home: Path, *args: str, timeout: float = 600) -> str:
    done = run_radlake(home, *args, timeout=timeout)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    return done.stdout


@pytest.mark.skipif(not BOXES.is_file(), reason="../shared/data (the lung subset) is absent")
def test_the_loop_closes_on_real_films(tmp_path: Path) -> None:
    home = tmp_path / "lake"
    radlake_ok(home, "init")
    radlake_ok(home, "source", "covid", str(subset(tmp_path)))
    radlake_ok(home, "labels", "import", str(BOXES), "--format", "coco")
    radlake_ok(
        home, "dataset", "create", "lungs", "--splits", "training=0.4,production=0.3,test=0.3"
    )
    first = radlake_json(home, "model", "train", "lungs-det", "--dataset", "lungs", *SMALL)
    assert first["version"] == 1 and first["comparison"] is None

    traffic = radlake_json(
        home,
        "simulate",
        "--model", "lungs-det",
        "--dataset", "lungs",
        "--split", "production",
        "--pattern", "1,2,1",
        "--stage-seconds", "2",
        "--review",
    )  # fmt: skip
    assert [stage["workers"] for stage in traffic["stages"]] == [1, 2, 1]
    assert traffic["total"]["requests"] > 0 and not traffic["total"]["errors"], traffic["total"]

    feedback = radlake_json(home, "feedback", "list", "--model", "lungs-det:1")["feedback"]
    assert feedback and all(row["simulated"] for row in feedback)
    assert {row["verdict"] for row in feedback} <= {"accept", "reject", "correct", "add"}

    made = radlake_json(home, "retrain-set", "build", "--model", "lungs-det:1")
    assert made["created"] and made["dataset"] == "lungs@2" and made["base"] == "lungs@1"
    assert set(made["exports"]) == {"yolo", "coco"}
    assert all(f"retrain/{made['name']}/" in location for location in made["exports"].values())
    again = radlake_json(home, "retrain-set", "build", "--model", "lungs-det:1")
    assert not again["created"] and again["name"] == made["name"]

    base = radlake_json(home, "dataset", "show", "lungs", "--version", "1")
    retrain = radlake_json(home, "dataset", "show", "lungs", "--version", "2")
    assert retrain["splits"]["test"] == base["splits"]["test"]  # the same held-out split
    assert "production" not in retrain["splits"] and retrain["label_set"] == "feedback"

    second = radlake_json(
        home, "model", "train", "lungs-det", "--dataset", "lungs", "--version", "2", *SMALL
    )
    assert second["version"] == 2
    comparison = second["comparison"]
    assert comparison["before"] == "lungs-det:1" and comparison["after"] == "lungs-det:2"
    assert comparison["split"] == "lungs@2/test"
    assert set(comparison["delta"]) == {"map50_95", "map50"}

    chain = radlake_json(home, "model", "lineage", "lungs-det:2")
    assert [step["model"] for step in chain] == ["lungs-det:2", "lungs-det:1"]
    assert chain[0]["trained_on"] == "lungs@2" and chain[0]["reviewed_model"] == "lungs-det:1"
    assert chain[0]["retrain_set"]["name"] == made["name"]
    assert sum(chain[0]["feedback"].values()) == made["feedback_rows"]
    assert all(key.endswith("(simulated)") for key in chain[0]["feedback"])
    assert chain[1]["trained_on"] == "lungs@1" and chain[1]["retrain_set"] is None

    same = run_radlake(home, "model", "compare", "lungs-det:1", "lungs-det:1", "--dataset", "lungs")
    assert same.returncode == 1 and "same version" in same.stderr
    on_training = run_radlake(
        home, "model", "compare", "lungs-det:1", "lungs-det:2", "--dataset", "lungs",
        "--version", "2", "--split", "training",
    )  # fmt: skip
    assert on_training.returncode == 0, on_training.stderr
    assert on_training.stderr.count("not a held-out comparison") == 2

    radlake_ok(home, "model", "promote", "lungs-det", "1")
    promoted = radlake_ok(home, "model", "promote", "lungs-det", "2")
    assert "lungs-det@production -> version 2 (was 1)" in promoted
    assert "delta: mAP50-95" in promoted and "lungs@2/test" in promoted
    again = radlake_ok(home, "model", "promote", "lungs-det", "2")
    assert "already points at version 2: nothing moved" in again
