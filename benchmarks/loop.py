"""The feedback loop on the real lung subset (issue 11): does reviewing a model's
production predictions and retraining on the review make a better model?

Run from the repository root (needs ../shared/data, the [train] and [inference] extras):

    .venv/bin/python benchmarks/loop.py
    .venv/bin/python benchmarks/loop.py --seed 1 --keep /tmp/lake   # keep the lake

Through the CLI as a user types it, in a temporary lake with the embedded defaults:

1. set-up: `radlake source covid` (98 chest X-rays of 64 patients), `radlake labels
   import` (the collection's Left/Right Lung boxes), `radlake dataset create lungs
   --splits training=0.233,production=0.467,validation=0.15,test=0.15`: by patient,
   a third of a 70 % training share to train on, the other two thirds as production
   traffic, and the same validation and test splits throughout;
2. `radlake model train lungs-loop --dataset lungs` (defaults) -> version 1;
3. `radlake simulate --split production --pattern 2 --max-requests N --review`: every
   production film is sent to /predict once over HTTP and the simulated reviewer
   files accept / reject / correct / add against the ground truth (IoU >= 0.5 to
   match; a matched box under --accept-iou 0.75 is corrected to the truth);
4. `radlake retrain-set build --model lungs-loop:1` -> dataset lungs v2 (the reviewed
   films join training with their feedback labels; validation and test unchanged),
   and `radlake model train lungs-loop --dataset lungs --version 2` -> version 2,
   which also scores version 1 on the same test split;
5. prints mAP50-95 and mAP50 of both versions on that test split beside the constant
   mean-box baseline, the number of reviewed films it took, and the CPU minutes.

Target: a measured improvement in mAP50-95. The lake and models live in a temporary
folder removed at the end (no weights trained on this data are kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from train import BOXES, DATA, cpu_seconds, figure, radlake

SPLITS = "training=0.233,production=0.467,validation=0.15,test=0.15"


def run_json(home: Path, *args: str) -> Any:
    return json.loads(radlake(home, *args, "--json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--keep", type=Path, help="keep the lake in this new folder")
    args = parser.parse_args()
    if not (DATA / "data" / BOXES).is_file():
        sys.exit(f"the lung subset is not at {DATA} (../shared/data is absent)")
    home = args.keep or Path(tempfile.mkdtemp(prefix="radlake-loop-bench-"))
    seed = ("--seed", str(args.seed))
    try:
        radlake(home, "init")
        radlake(home, "source", "covid", str(DATA / "data"))
        radlake(home, "labels", "import", str(DATA / "data" / BOXES), "--format", "coco")
        radlake(home, "dataset", "create", "lungs", "--splits", SPLITS)
        base = run_json(home, "dataset", "show", "lungs")
        production = base["splits"]["production"]
        cpu, started = cpu_seconds(), time.perf_counter()
        first = run_json(home, "model", "train", "lungs-loop", "--dataset", "lungs", *seed)
        traffic = run_json(
            home,
            "simulate",
            "--model", "lungs-loop:1",
            "--dataset", "lungs",
            "--split", "production",
            "--pattern", "2",
            "--stage-seconds", "3600",
            "--max-requests", str(production),
            "--review",
        )  # fmt: skip
        made = run_json(home, "retrain-set", "build", "--model", "lungs-loop:1")
        number = made["dataset"].split("@")[1]
        second = run_json(
            home, "model", "train", "lungs-loop", "--dataset", "lungs", "--version", number, *seed
        )
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - started
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    report(base, first, traffic, made, second, cpu, wall)


def report(
    base: dict[str, Any],
    first: dict[str, Any],
    traffic: dict[str, Any],
    made: dict[str, Any],
    second: dict[str, Any],
    cpu: float,
    wall: float,
) -> None:
    comparison = second["comparison"]
    before, after = comparison["before_scores"], comparison["after_scores"]
    baseline, delta = comparison["mean_box_baseline"], comparison["delta"]
    counts = made["counts"]
    print(f"lungs v1 splits: {base['splits']}")
    print(
        f"version 1: trained on {first['metrics']['splits']['training']} films; "
        f"best epoch {first['metrics']['best_epoch']} of {first['metrics']['epochs_run']}"
    )
    total = traffic["total"]
    print(
        f"simulate: {total['requests']} requests to /predict, errors {total['errors'] or 0}; "
        f"reviews filed: {total.get('reviews', {})}"
    )
    print(
        f"retrain set {made['name']}: {counts['images']} reviewed films "
        f"({counts.get('boxes', 0)} boxes, {made['feedback_rows']} feedback rows); "
        f"left out {counts.get('left_out', {})}; {made['dataset']} splits {counts['splits']}"
    )
    print(
        f"version 2: trained on {second['metrics']['splits']['training']} films; "
        f"best epoch {second['metrics']['best_epoch']} of {second['metrics']['epochs_run']}"
    )
    print(f"same test split {comparison['split']} ({comparison['images']} films):")
    print(f"  {'':26}{'mAP50-95':>10}{'mAP50':>10}")
    for label, scores in (
        ("version 1 (a third)", before),
        ("version 2 (+ review)", after),
        ("mean-box baseline", baseline),
    ):
        print(f"  {label:26}{figure(scores['map50_95']):>10}{figure(scores['map50']):>10}")
    print(
        f"  {'delta (2 - 1)':26}{delta['map50_95']:>+10.3f}{delta['map50']:>+10.3f}"
        if None not in delta.values()
        else "  delta: n/a"
    )
    verdict = "improved" if (delta["map50_95"] or 0) > 0 else "did NOT improve"
    print(
        f"mAP50-95 {verdict} by {delta['map50_95']:+.3f} with {counts['images']} reviewed films; "
        f"{cpu / 60:.1f} CPU minutes, {wall / 60:.1f} min wall (training, traffic, retraining)"
    )


if __name__ == "__main__":
    main()
