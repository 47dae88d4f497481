"""Split assignment at 15k, 150k and 1.5M images against the original per-row loop.

Run it from the repository root (after `make test` or any install of radlake with
pandas, which only the baseline needs):

    .venv/bin/python benchmarks/splits.py                   # 15k, 150k, 1.5M
    .venv/bin/python benchmarks/splits.py --sizes 15000,150000 --repeat 5
    .venv/bin/python benchmarks/splits.py --baseline-sizes 15000,45000

What it measures:

1. Population: n synthetic VinBigData-like images in about n/3 patients, 14 finding
   classes plus "No finding" on two thirds of the images (15 labels in all).
2. `assign_splits` with the default six-way spec (training/validation/test/staging/
   canary/production, 11500/750/750/1000/500/500 scaled to n), from the list of
   `SplitItem`s to the finished image -> split dict; the fastest of `--repeat` runs.
   Printed: seconds, and seconds / (n log n) relative to the smallest size, which
   stays near 1 (or falls) when growth is no worse than n log n.
   Every result is checked with `check_leakage` (untimed) and its largest deviation
   of a label's share in a split from the overall share is shown.
3. Baseline: the approach of the projects radlake replaces, a pandas loop over
   `df.iterrows()` giving each new patient the first split with room left and
   writing each row's split with `df.loc` (grouped, not stratified). It is timed at
   `--baseline-sizes` (default 15k only, about 5 s); larger sizes are extrapolated
   linearly from the largest measured one, marked as such, and are lower bounds:
   its per-row cost grows with n (about x2 from 15k to 45k rows on our machine).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from radlake.curation.splits import (
    SplitItem,
    SplitSpec,
    assign_splits,
    check_leakage,
    split_statistics,
)

FINDINGS = (  # share of abnormal images with each finding
    ("Aortic enlargement", 0.24), ("Atelectasis", 0.015), ("Calcification", 0.03),
    ("Cardiomegaly", 0.18), ("Consolidation", 0.03), ("ILD", 0.04), ("Infiltration", 0.05),
    ("Lung Opacity", 0.10), ("Nodule/Mass", 0.10), ("Other lesion", 0.09),
    ("Pleural effusion", 0.09), ("Pleural thickening", 0.19), ("Pneumothorax", 0.01),
    ("Pulmonary fibrosis", 0.16),
)  # fmt: skip


def population(n: int, seed: int = 0) -> list[SplitItem]:
    """n images in about n/3 patients; two thirds "No finding"."""
    rng = np.random.default_rng(seed)
    names = [name for name, _ in FINDINGS]
    abnormal = rng.random(n) < 1 / 3
    has = (rng.random((n, len(names))) < [p for _, p in FINDINGS]) & abnormal[:, None]
    has[abnormal & ~has.any(axis=1), 0] = True
    patient = rng.integers(0, max(n // 3, 1), n)
    none = frozenset({"No finding"})
    rows, cols = np.nonzero(has)
    labels: list[frozenset[str]] = [none] * n
    starts = np.searchsorted(rows, np.arange(n + 1))
    for i in np.flatnonzero(abnormal).tolist():
        labels[i] = frozenset(names[c] for c in cols[starts[i] : starts[i + 1]].tolist())
    return [SplitItem(i, f"patient-{p}", labels[i]) for i, p in enumerate(patient.tolist())]


def largest_share_deviation(assignment: dict[int, str], items: list[SplitItem]) -> float:
    totals: dict[str, int] = {}
    for item in items:
        for label in item.labels:
            totals[label] = totals.get(label, 0) + 1
    return max(
        abs(split.label_counts.get(label, 0) / split.images - total / len(items))
        for split in split_statistics(assignment, items).values()
        for label, total in totals.items()
    )


def pandas_row_loop(items: list[SplitItem], spec: SplitSpec, seed: int) -> dict[int, str]:
    """The original approach: iterate rows, give a new patient the first split with
    room left, write each row's split with df.loc."""
    import pandas as pd

    df = pd.DataFrame(
        {"image_id": [i.image_id for i in items], "patient": [i.group for i in items]}
    )
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df["split"] = ""
    targets = spec.sizes(len(df))
    filled = dict.fromkeys(spec.names, 0)
    split_of: dict[str, str] = {}
    for index, row in df.iterrows():
        patient = row["patient"]
        if patient not in split_of:
            split_of[patient] = next(
                (s for s in spec.names if filled[s] < targets[s]), spec.names[0]
            )
        df.loc[index, "split"] = split_of[patient]
        filled[split_of[patient]] += 1
    return dict(zip(df["image_id"].tolist(), df["split"].tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="15000,150000,1500000")
    parser.add_argument("--baseline-sizes", default="15000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    spec = SplitSpec.default()

    print(f"assign_splits, spec {spec}")
    header = ("images", "patients", "seconds", "s/(n log n) vs first", "leakage", "max share dev")
    print("{:>10} {:>9} {:>8} {:>21} {:>8} {:>14}".format(*header))
    first: float | None = None
    for n in sizes:
        items = population(n)
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            assignment = assign_splits(items, spec, seed=0)
            runs.append(time.perf_counter() - start)
        seconds = min(runs)
        per = seconds / (n * math.log(n))
        first = first or per
        leakage = "ok" if check_leakage(assignment, items).ok else "LEAK"
        deviation = largest_share_deviation(assignment, items)
        patients = len({item.group for item in items})
        relative = per / first
        print(
            f"{n:>10,} {patients:>9,} {seconds:>8.3f} {relative:>21.2f} {leakage:>8}"
            f" {deviation:>14.4f}"
        )

    print("\nbaseline: pandas iterrows + df.loc per row (grouped, not stratified)")
    measured: list[tuple[int, float]] = []
    for n in [int(s) for s in args.baseline_sizes.split(",")]:
        items = population(n)
        start = time.perf_counter()
        assignment = pandas_row_loop(items, spec, seed=0)
        seconds = time.perf_counter() - start
        measured.append((n, seconds))
        ok = "ok" if check_leakage(assignment, items).ok else "LEAK"
        print(f"{n:>10,} {seconds:>10.3f} s  measured ({seconds / n * 1e6:.0f} us/row, {ok})")
    n0, s0 = max(measured)
    for n in sizes:
        if n > n0:
            print(f"{n:>10,} {s0 * n / n0:>10.1f} s  EXTRAPOLATED linearly from {n0:,}")
    if len(measured) > 1:
        small_n, small_s = min(measured)
        growth = (s0 / n0) / (small_s / small_n)
        print(f"  (per-row cost x{growth:.2f} from {small_n:,} to {n0:,} rows)")
    if any(n > n0 for n in sizes):
        # Linear is the kindest assumption: the per-row cost of df.loc writes grows
        # with the frame (see --baseline-sizes 15000,45000), so these are lower bounds.
        print("  (extrapolations are lower bounds: the per-row cost grows with n)")


if __name__ == "__main__":
    main()
