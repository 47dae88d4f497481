"""`radlake simulate` at the production pattern against a realistic lake, beside the
same model called directly in-process (benchmarks/predict.py's direct figures).

Run from the repository root:

    .venv/bin/python benchmarks/simulate.py
    .venv/bin/python benchmarks/simulate.py --pattern 1,2,3,5,3,2,1 --stage-seconds 10

What it does (about 3 minutes on a 2-core machine):

1. Lake and model (not timed): benchmarks/predict.py's prepare(): the first --images
   chest X-rays of ../shared/data/cxr_ieee8023_lung_boxes_subset (or generated CR-like
   PNGs without it) ingested into a fresh RADLAKE_HOME, and its YOLOv8-layout detector
   of realistic cost (640 px, 1.4 GMAC) registered as bench-detector. Then a dataset
   version `bench` whose one split is `production`.
2. Direct: for each worker count of the pattern, client threads in this process call
   the model on the stored images as the service does (predict.py's direct_caller:
   decode from the store, letterbox, one shared ONNX Runtime session, NMS), for
   --direct-seconds after a warm-up: the ceiling for that many concurrent callers.
3. Simulator: `radlake simulate --model bench-detector --dataset bench --split
   production --pattern P --stage-seconds S --json` as a user types it: the API in the
   command's process, real HTTP on 127.0.0.1, every request recorded as a run.
Prints, per stage, the simulator's requests/s, client p50/p95/p99 and the server's
mean latency_ms beside the direct figures for the same number of callers, and the
ratio of the two throughputs. The first stage includes the model's first load.

With 2 CPUs the workers, the server and ONNX Runtime share two cores: compare the
ratio rather than the absolute figures, and run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predict import MODEL, SOURCE, Result, direct_caller, measured, prepare, say
from radlake.catalog.db import transaction
from radlake.curation.filters import ImageFilter
from radlake.curation.splits import SplitSpec
from radlake.curation.versions import VersionRequest, create_version
from radlake.traffic.pattern import DEFAULT_PATTERN, parse_pattern

DATASET = "bench"
SPLIT = "production"


def simulate(home: Path, pattern: str, stage_seconds: float) -> dict[str, Any]:
    """`radlake simulate` over the lake at home; its --json summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    command = [
        sys.executable,
        "-m",
        "radlake.cli.main",
        "simulate",
        "--model",
        MODEL,
        "--dataset",
        DATASET,
        "--split",
        SPLIT,
        "--pattern",
        pattern,
        "--stage-seconds",
        str(stage_seconds),
        "--json",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"radlake simulate failed: {done.stderr.strip()[-1000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def table(stages: Sequence[dict[str, Any]], direct: dict[int, Result]) -> str:
    lines = [
        "| stage | workers | simulate req/s | p50 / p95 / p99 ms | server mean ms | errors "
        "| direct req/s | direct p50 / p95 ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        ceiling = direct[stage["workers"]]
        ratio = stage["requests_per_second"] / ceiling.per_second
        errors = sum(stage["errors"].values())
        lines.append(
            f"| {stage['stage'] or 'total'} | {stage['workers']} "
            f"| {stage['requests_per_second']:.1f} "
            f"| {stage['p50_ms']:.0f} / {stage['p95_ms']:.0f} / {stage['p99_ms']:.0f} "
            f"| {stage['server_mean_ms']:.0f} | {errors} "
            f"| {ceiling.per_second:.1f} | {ceiling.ms(50):.0f} / {ceiling.ms(95):.0f} "
            f"| {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24, help="images in the lake (24)")
    parser.add_argument("--pattern", default=DEFAULT_PATTERN, help=f"({DEFAULT_PATTERN})")
    parser.add_argument("--stage-seconds", type=float, default=10.0, help="(10)")
    parser.add_argument("--direct-seconds", type=float, default=5.0, help="per count (5)")
    args = parser.parse_args(argv)
    counts = sorted(set(parse_pattern(args.pattern)))
    if args.images < 1 or args.stage_seconds <= 0 or args.direct_seconds <= 0:
        parser.error("--images, --stage-seconds and --direct-seconds must be positive")
    work = Path(tempfile.mkdtemp(prefix="radlake-simulate-bench-"))
    home = work / "home"
    prepared = prepare(home, args.images)
    try:
        request = VersionRequest(
            dataset=DATASET,
            selection=ImageFilter(source=SOURCE),
            spec=SplitSpec.parse(f"{SPLIT}=1.0"),
        )
        with transaction(prepared.lake.engine) as session:
            create_version(session, request)
        say(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} before measuring")
        caller = direct_caller(prepared.lake, prepared.image_ids, None)
        direct = {n: measured("direct", n, args.direct_seconds, caller) for n in counts}
        say(f"radlake simulate --pattern {args.pattern} --stage-seconds {args.stage_seconds:g}")
        summary = simulate(home, args.pattern, args.stage_seconds)
    finally:
        prepared.lake.engine.dispose()
    print(
        f"\n{len(prepared.image_ids)} {prepared.described}; model {MODEL} (640 px letterbox, "
        f"1.4 GMAC); pattern {args.pattern}, {args.stage_seconds:g} s stages; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} after measuring\n"
    )
    print(table([*summary["stages"], summary["total"]], direct))
    total = summary["total"]
    print(
        f"\n{total['requests']} requests in {total['seconds']:.1f} s, "
        f"{sum(total['errors'].values())} errors; direct for {args.direct_seconds:g} s "
        f"per worker count; the total's direct figure is at the peak count"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
