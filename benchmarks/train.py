"""`radlake model train` with its defaults on the real lung subset (issue 10).

Run from the repository root (needs ../shared/data and the [train] extra):

    .venv/bin/python benchmarks/train.py
    .venv/bin/python benchmarks/train.py --seed 1 --keep /tmp/lake   # keep the lake

What it does, in a temporary lake with the embedded defaults, through the CLI as a
user types it:

1. set-up (not timed): `radlake source covid .../data` (98 chest X-rays of 64
   patients), `radlake labels import ...lung_bounding_boxes.json --format coco` (the
   collection's Left/Right Lung boxes; the file's two null boxes and the four boxes
   drawn on another size of two images are reported and left out by the import),
   `radlake dataset create lungs --splits training=0.7,validation=0.15,test=0.15`
   (by patient, no leakage);
2. timed: `radlake model train lungs-detector --dataset lungs` with its defaults,
   which trains, exports ONNX, registers and evaluates on the test split.

It prints the test split's COCO mAP50-95 and mAP50 beside the mean-box baseline
(each class's mean training box, scaled to each image, score 1), and the CPU
minutes the training command used (getrusage, self + children: user + system, all
threads), and its wall time. Targets: mAP50-95 >= 0.50 (moonshot 0.60) within 15
CPU minutes. Judge on mAP50-95: lungs sit in nearly the same place on every film,
so the constant baseline already scores a high mAP50.

The model and the lake live in a temporary folder that is removed at the end
(weights trained on this data are never kept in the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr_ieee8023_lung_boxes_subset"
BOXES = "annotations/imageannotation_ai_lung_bounding_boxes.json"


def radlake(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "radlake.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"radlake {' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def cpu_seconds() -> float:
    """This process and its waited-for children: user + system, all threads."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def figure(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--keep", type=Path, help="keep the lake in this new folder")
    args = parser.parse_args()
    if not (DATA / "data" / BOXES).is_file():
        sys.exit(f"the lung subset is not at {DATA} (../shared/data is absent)")
    home = args.keep or Path(tempfile.mkdtemp(prefix="radlake-train-bench-"))
    try:
        radlake(home, "init")
        radlake(home, "source", "covid", str(DATA / "data"))
        radlake(home, "labels", "import", str(DATA / "data" / BOXES), "--format", "coco")
        radlake(
            home,
            "dataset",
            "create",
            "lungs",
            "--splits",
            "training=0.7,validation=0.15,test=0.15",
        )
        cpu_before, started = cpu_seconds(), time.perf_counter()
        out = radlake(
            home,
            "model",
            "train",
            "lungs-detector",
            "--dataset",
            "lungs",
            "--seed",
            str(args.seed),
            "--json",
        )
        cpu = cpu_seconds() - cpu_before
        wall = time.perf_counter() - started
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    result = json.loads(out)
    metrics, evaluation = result["metrics"], result["evaluation"]
    scores, baseline = evaluation["model_scores"], evaluation["mean_box_baseline"]
    config = metrics["config"]
    print(
        f"radlake model train (defaults: {config['size']} px, width {config['width']}, "
        f"at most {config['epochs']} epochs, {config['threads']} thread(s), seed {config['seed']})"
    )
    print(
        f"  splits: {metrics['splits']}; best epoch {metrics['best_epoch']} of "
        f"{metrics['epochs_run']}; val mAP50-95 {figure(metrics['val_map50_95'])}"
    )
    print(f"  test images: {evaluation['images']}")
    print(f"  {'':22}{'mAP50-95':>10}{'mAP50':>10}")
    print(f"  {'model':22}{figure(scores['map50_95']):>10}{figure(scores['map50']):>10}")
    print(
        f"  {'mean-box baseline':22}{figure(baseline['map50_95']):>10}"
        f"{figure(baseline['map50']):>10}"
    )
    print(f"  CPU minutes (training command): {cpu / 60:.2f}; wall {wall / 60:.2f} min")
    print(f"  ONNX vs torch max difference: {metrics['onnx_max_difference']}")


if __name__ == "__main__":
    main()
