"""The column form of reader agreement gives exactly what a loop over images gives.

`loop_agreement` is the per-image loop radlake used before the column form (kept
here as the oracle): it groups findings with collect_reads and matches every
(image, reader pair, class) with match_boxes. Random findings shaped like
VinBigData's (up to four readers, boxes that overlap, shift or go missing, several
boxes of a class per reader, image-level findings, readers with nothing to report)
must give identical reports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pytest

from radlake.curation.agreement import (
    NO_FINDING,
    AgreementReport,
    ClassAgreement,
    ImageAgreement,
    collect_reads,
    fleiss_kappa,
    iou_matrix,
    iou_pairs,
    match_boxes,
    reader_agreement,
)
from radlake.domain import Box, Finding


def loop_agreement(findings: Sequence[Finding], iou_threshold: float = 0.4) -> AgreementReport:
    reads = collect_reads(findings)
    names = sorted({c for read in reads.values() for cs in read.classes.values() for c in cs})
    reported: dict[str, int] = defaultdict(int)
    unanimous: dict[str, int] = defaultdict(int)
    presence: dict[str, list[tuple[int, int]]] = {c: [] for c in names}
    class_f1: dict[str, list[float]] = defaultdict(list)
    pair_f1: list[float] = []
    rows: list[ImageAgreement] = []
    for image_id, read in reads.items():
        sets = [read.classes[r] for r in read.readers]
        union = frozenset().union(*sets)
        if len(sets) < 2:
            rows.append(ImageAgreement(image_id, 1, tuple(sorted(union)), None, None))
            continue
        for name in names:
            present = sum(name in s for s in sets)
            presence[name].append((present, len(sets) - present))
            reported[name] += present > 0
            unanimous[name] += present == len(sets)
        scores: list[float] = []
        for a, b in combinations(read.readers, 2):
            matched = total = 0
            for name in sorted(union):
                boxes_a = read.boxes.get((a, name), np.empty((0, 4)))
                boxes_b = read.boxes.get((b, name), np.empty((0, 4)))
                if n := len(boxes_a) + len(boxes_b):
                    found = len(match_boxes(boxes_a, boxes_b, iou_threshold))
                    class_f1[name].append(2 * found / n)
                    matched, total = matched + found, total + n
            if total:
                scores.append(2 * matched / total)
        pair_f1.extend(scores)
        same = all(s == sets[0] for s in sets)
        mean = float(np.mean(scores)) if scores else None
        rows.append(ImageAgreement(image_id, len(sets), tuple(sorted(union)), same, mean))
    multi = [r for r in rows if r.all_agree is not None]

    def avg(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    classes = tuple(
        ClassAgreement(
            name,
            reported[name],
            unanimous[name] / reported[name] if reported[name] else None,
            avg(class_f1[name]),
            fleiss_kappa(presence[name]) if presence[name] else None,
        )
        for name in names
    )
    pooled = [pair for name in names for pair in presence[name]]
    overall = ClassAgreement(
        "all classes",
        len(multi),
        sum(bool(r.all_agree) for r in multi) / len(multi) if multi else None,
        avg(pair_f1),
        fleiss_kappa(pooled) if pooled else None,
    )
    return AgreementReport(classes, overall, tuple(rows), len(rows) - len(multi), iou_threshold)


CLASSES = ("Aortic enlargement", "Cardiomegaly", "Nodule/Mass", "Pleural effusion")


def random_findings(seed: int, images: int = 300) -> list[Finding]:
    rng = np.random.default_rng(seed)
    found: list[Finding] = []
    for image in rng.permutation(np.arange(1, images + 1) * 7).tolist():
        readers = [f"R{r}" for r in rng.choice(9, size=int(rng.integers(1, 5)), replace=False)]
        truth = [
            (str(rng.choice(CLASSES)), rng.uniform(0, 800, 2), rng.uniform(20, 300, 2))
            for _ in range(int(rng.integers(0, 4)))
        ]
        for reader in readers:
            wrote = False
            for name, (x, y), (w, h) in truth:
                if rng.random() < 0.2:
                    continue  # this reader missed it
                for _ in range(1 + int(rng.random() < 0.15)):  # sometimes twice
                    dx, dy = rng.normal(0, 0.3 * w), rng.normal(0, 0.3 * h)
                    box = Box(float(x + dx), float(y + dy), float(x + dx + w), float(y + dy + h))
                    found.append(Finding(int(image), name, box, reader))
                    wrote = True
            if rng.random() < 0.1:
                found.append(Finding(int(image), str(rng.choice(CLASSES)), None, reader))
                wrote = True
            if not wrote or rng.random() < 0.05:
                found.append(Finding(int(image), NO_FINDING, None, reader))
    rng.shuffle(found)  # type: ignore[arg-type]
    return found


@pytest.mark.parametrize("seed", range(6))
def test_columns_agree_exactly_with_the_loop(seed: int) -> None:
    findings = random_findings(seed)
    for threshold in (0.4, 0.1, 1.0):
        assert reader_agreement(findings, iou_threshold=threshold) == loop_agreement(
            findings, threshold
        )


def test_edge_cases_agree_with_the_loop() -> None:
    same = Box(0, 0, 10, 10)
    cases: list[list[Finding]] = [
        [],
        [Finding(1, NO_FINDING, None, "a"), Finding(1, NO_FINDING, None, "b")],
        [Finding(1, "x", same, "a")],
        [Finding(1, "x", same, "a"), Finding(1, "x", same, "b"), Finding(2, "y", None, "a")],
        [Finding(1, "x", Box(0, 0, 0, 10), "a"), Finding(1, "x", Box(0, 0, 0, 10), "b")],
        [Finding(5, "x", same, "b"), Finding(5, "x", same, "a"), Finding(5, "x", same, "a")],
    ]
    for findings in cases:
        assert reader_agreement(findings) == loop_agreement(findings), findings


def test_iou_pairs_is_the_diagonal_of_the_matrix() -> None:
    rng = np.random.default_rng(3)
    a = np.sort(rng.uniform(0, 100, (50, 4)).reshape(50, 2, 2), axis=1).transpose(0, 2, 1)
    b = np.sort(rng.uniform(0, 100, (50, 4)).reshape(50, 2, 2), axis=1).transpose(0, 2, 1)
    a, b = a.reshape(50, 4)[:, [0, 2, 1, 3]], b.reshape(50, 4)[:, [0, 2, 1, 3]]
    assert np.array_equal(iou_pairs(a, b), np.diag(iou_matrix(a, b)))
