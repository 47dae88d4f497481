"""Consensus labels: one derived label set from several readers' findings.

Boxes of one class on one image are clustered across readers: pairs of boxes from
different readers are joined from the highest IoU down, as long as each reader has
at most one box in a cluster and every two boxes of the cluster overlap at IoU >=
the threshold (complete linkage, so a chain of overlaps never joins boxes that do
not overlap). A cluster with boxes from at least k readers becomes one box whose
coordinates are the mean of its boxes (weighted box fusion, Solovyev et al. 2021,
with equal weights: ground truth carries no scores). A class is present on an image
when at least k readers report it; an image with no class present gets "No finding".
Confidence is the share of the image's readers behind a box or a class.

The returned `FusionMethod` is recorded with the dataset version, so a consensus
label set can be rebuilt exactly. Raises `AgreementError` for unusable input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray

from radlake.curation.agreement import (
    MATCH_IOU,
    NO_FINDING,
    AgreementError,
    Reads,
    check_threshold,
    collect_reads,
    iou_matrix,
)
from radlake.domain import Box, Finding, LabelOrigin

FUSION_NAME = "mean-of-matched-boxes"


class FusionMethod(TypedDict):
    """How a consensus label set was made, as stored with a dataset version."""

    name: str
    iou_threshold: float
    min_readers: int


def cluster_boxes(
    readers: Sequence[int], boxes: NDArray[np.float64], iou_threshold: float = MATCH_IOU
) -> list[list[int]]:
    """Clusters (lists of row indices of `boxes`) with at most one box per reader and
    every pair of boxes at IoU >= `iou_threshold`; singletons included, in row order.

    Deterministic for a given row order: equal IoUs are joined lower rows first.
    """
    owner = np.asarray(readers)
    overlap = iou_matrix(boxes, boxes)
    rows, cols = np.nonzero(np.triu(overlap >= iou_threshold, k=1) & (owner[:, None] != owner))
    cluster = list(range(len(boxes)))  # cluster id of each row
    members: dict[int, list[int]] = {i: [i] for i in range(len(boxes))}
    for k in np.lexsort((cols, rows, -overlap[rows, cols])):
        a, b = cluster[rows[k]], cluster[cols[k]]
        if a == b:
            continue
        joined = members[a] + members[b]
        one_each = len({int(owner[i]) for i in joined}) == len(joined)
        if one_each and (overlap[np.ix_(joined, joined)] >= iou_threshold).all():
            for i in members.pop(b):
                cluster[i] = a
            members[a] = sorted(joined)
    return sorted(members.values())


def _image_consensus(
    image_id: int, read: Reads, iou_threshold: float, min_readers: int, no_finding: str
) -> list[Finding]:
    n_readers = len(read.readers)
    out: list[Finding] = []
    for name in sorted(frozenset().union(*read.classes.values())):
        votes = sum(name in read.classes[r] for r in read.readers)
        if votes < min_readers:
            continue
        out.append(Finding(image_id, name, None, None, LabelOrigin.CONSENSUS, votes / n_readers))
        owners = [(i, r) for i, r in enumerate(read.readers) if (r, name) in read.boxes]
        if not owners:
            continue
        boxes = np.concatenate([read.boxes[r, name] for _, r in owners])
        readers = np.concatenate([np.full(len(read.boxes[r, name]), i) for i, r in owners])
        fused = [
            (boxes[members].mean(axis=0), len(members))
            for members in cluster_boxes(readers.tolist(), boxes, iou_threshold)
            if len(members) >= min_readers
        ]
        for coords, agreeing in sorted(fused, key=lambda f: tuple(f[0])):
            box = Box(*(float(c) for c in coords))
            out.append(
                Finding(image_id, name, box, None, LabelOrigin.CONSENSUS, agreeing / n_readers)
            )
    if not out:  # nothing reached consensus: the image is labelled, as normal
        silent = sum(not read.classes[r] for r in read.readers)
        out.append(
            Finding(image_id, no_finding, None, None, LabelOrigin.CONSENSUS, silent / n_readers)
        )
    return out


def consensus_findings(
    findings: Sequence[Finding],
    *,
    iou_threshold: float = MATCH_IOU,
    min_readers: int = 2,
    no_finding: str = NO_FINDING,
) -> tuple[list[Finding], FusionMethod]:
    """Consensus findings of every image (origin CONSENSUS, no reader), ordered by
    image, class, then box; each present class also gets its image-level finding.

    Raises:
        AgreementError: an IoU threshold outside (0, 1], `min_readers` below 1, or a
            finding without a reader.
    """
    check_threshold(iou_threshold)
    if min_readers < 1:
        raise AgreementError(f"expected at least 1 agreeing reader, got {min_readers}")
    reads = collect_reads(findings, no_finding=no_finding)
    fused = [
        finding
        for image_id, read in reads.items()
        for finding in _image_consensus(image_id, read, iou_threshold, min_readers, no_finding)
    ]
    method = FusionMethod(name=FUSION_NAME, iou_threshold=iou_threshold, min_readers=min_readers)
    return fused, method
