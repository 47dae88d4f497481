"""Reader agreement computed over columns: the measures of `curation.agreement`
(see its docstring) for 100,000 images in well under a second.

Findings arrive as columns (subject number, reader, class, box corners) and every
count is a bincount over integer codes: readers per image, readers reporting each
class on each image (a subjects x classes table), boxes per (image, reader, class).
Fleiss' kappa takes that table's columns; image agreement is a row test on it. Box F1
enumerates the (image, reader pair, class) units with numpy; a unit where each
reader drew at most one box is decided by one vectorised IoU, and only units with
more boxes go through `match_boxes`' greedy matching, so the figures are exactly
those of a loop over images (and in the same order, so means round alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numpy.typing import NDArray

from radlake.curation.agreement import (
    AgreementReport,
    ClassAgreement,
    ImageAgreement,
    check_readers,
    check_threshold,
    fleiss_kappa,
    iou_pairs,
    match_boxes,
)
from radlake.domain import Finding

NO_FINDING = "No finding"


@dataclass(frozen=True, slots=True)
class ReadTable:
    """Reader-attributed findings as columns; corners are NaN for image-level ones."""

    subject: NDArray[np.int64]
    reader: NDArray[np.str_]
    class_name: NDArray[np.str_]
    corners: NDArray[np.float64]  # n x 4: x_min, y_min, x_max, y_max

    @classmethod
    def from_findings(cls, findings: Sequence[Finding]) -> ReadTable:
        """The findings as columns.

        Raises:
            AgreementError: a finding names no reader (agreement needs to know who read).
        """
        check_readers(findings)
        n = len(findings)
        corners = np.full((n, 4), np.nan)
        for i, f in enumerate(findings):
            if f.box is not None:
                corners[i] = (f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max)
        return cls(
            np.fromiter((f.image_id for f in findings), np.int64, n),
            np.array([str(f.reader) for f in findings], dtype=np.str_).reshape(n),
            np.array([f.class_name for f in findings], dtype=np.str_).reshape(n),
            corners,
        )


def _mean(values: NDArray[np.float64]) -> float | None:
    return float(np.mean(values)) if len(values) else None


@dataclass(frozen=True, slots=True)
class _Units:
    """Box F1 units, ordered by (image, reader pair, class) as the loop visits them."""

    subject: NDArray[np.int64]  # subject index
    pair: NDArray[np.int64]  # running pair number (ordered by subject, then pair)
    class_code: NDArray[np.int64]
    found: NDArray[np.int64]  # matched boxes
    boxes: NDArray[np.int64]  # boxes of both readers


def _pairs(
    reader_keys: NDArray[np.int64], n_readers: NDArray[np.int64], n_codes: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(subject, reader a, reader b) of every pair of readers of multi-reader images,
    ordered by subject, then by reader names as combinations() orders them."""
    start = np.r_[0, np.cumsum(n_readers)[:-1]]
    readers = reader_keys % n_codes
    parts: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]] = []
    for n in np.unique(n_readers[n_readers >= 2]).tolist():
        subjects = np.flatnonzero(n_readers == n)
        for i, j in combinations(range(n), 2):
            parts.append((subjects, readers[start[subjects] + i], readers[start[subjects] + j]))
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    s, a, b = (np.concatenate(column) for column in zip(*parts, strict=True))
    rank = np.arange(len(s))  # stable: the (i, j) order within a subject
    order = np.lexsort((rank, s))
    return s[order], a[order], b[order]


def _units(
    s_idx: NDArray[np.int64],
    r_idx: NDArray[np.int64],
    c_idx: NDArray[np.int64],
    corners: NDArray[np.float64],
    pairs: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]],
    sizes: tuple[int, int, int],
    iou_threshold: float,
) -> _Units:
    n_subjects, n_readers, n_classes = sizes
    # Box rows in (subject, reader, class, corners) order: collect_reads sorts boxes.
    order = np.lexsort((*corners.T[::-1], c_idx, r_idx, s_idx))
    key = (s_idx[order] * n_readers + r_idx[order]) * n_classes + c_idx[order]
    boxes = corners[order]
    keys, first, count = np.unique(key, return_index=True, return_counts=True)
    # The classes with boxes on each subject, and every pair crossed with them.
    boxed = np.unique(s_idx * n_classes + c_idx)
    boxed_s, boxed_c = boxed // n_classes, boxed % n_classes
    per_subject = np.bincount(boxed_s, minlength=n_subjects)
    offset = np.r_[0, np.cumsum(per_subject)[:-1]]
    pair_s, pair_a, pair_b = pairs
    repeat = per_subject[pair_s]
    unit_pair = np.repeat(np.arange(len(pair_s)), repeat)
    within = np.arange(len(unit_pair)) - np.repeat(np.cumsum(repeat) - repeat, repeat)
    unit_s = pair_s[unit_pair]
    unit_c = boxed_c[offset[unit_s] + within]

    def look(readers: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        wanted = (unit_s * n_readers + readers[unit_pair]) * n_classes + unit_c
        at = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
        hit = keys[at] == wanted if len(keys) else np.zeros(len(wanted), bool)
        return np.where(hit, count[at], 0), np.where(hit, first[at], -1)

    n_a, at_a = look(pair_a)
    n_b, at_b = look(pair_b)
    total = n_a + n_b
    found = np.zeros(len(total), np.int64)
    single = (n_a == 1) & (n_b == 1)
    overlap = iou_pairs(boxes[at_a[single]], boxes[at_b[single]])
    found[single] = overlap >= iou_threshold
    for k in np.flatnonzero((n_a > 0) & (n_b > 0) & ~single).tolist():
        a = boxes[at_a[k] : at_a[k] + n_a[k]]
        b = boxes[at_b[k] : at_b[k] + n_b[k]]
        found[k] = len(match_boxes(a, b, iou_threshold))
    keep = total > 0
    return _Units(unit_s[keep], unit_pair[keep], unit_c[keep], found[keep], total[keep])


def table_agreement(
    table: ReadTable,
    *,
    iou_threshold: float = 0.4,
    no_finding: str = NO_FINDING,
    per_image: bool = True,
) -> AgreementReport:
    """`curation.agreement.reader_agreement` over columns (see the module docstring);
    without per_image the report's images are left empty (the per-class and overall
    figures do not need them).

    Raises:
        AgreementError: an IoU threshold outside (0, 1].
    """
    check_threshold(iou_threshold)
    subjects, s_idx = np.unique(table.subject, return_inverse=True)
    readers, r_idx = np.unique(table.reader, return_inverse=True)
    is_class = table.class_name != no_finding
    names = np.unique(table.class_name[is_class])
    n_s, n_r, n_c = len(subjects), len(readers), len(names)
    c_idx = np.searchsorted(names, table.class_name[is_class]).astype(np.int64)
    s_cls, r_cls = s_idx[is_class], r_idx[is_class]
    # A reader with nothing to report (only no_finding) still counts as a reader.
    reader_keys = np.unique(s_idx * n_r + r_idx)
    n_readers = np.bincount(reader_keys // n_r, minlength=n_s)
    present_keys = np.unique((s_cls * n_c + c_idx) * n_r + r_cls) // n_r
    present = np.bincount(present_keys, minlength=n_s * n_c).reshape(n_s, n_c)
    multi = n_readers >= 2
    on_multi, raters = present[multi], n_readers[multi]
    agree = (on_multi == 0) | (on_multi == raters[:, None])
    boxed = ~np.isnan(table.corners[is_class]).any(axis=1)
    units = _units(
        s_cls[boxed],
        r_cls[boxed],
        c_idx[boxed],
        table.corners[is_class][boxed],
        _pairs(reader_keys, n_readers, n_r),
        (n_s, n_r, n_c),
        iou_threshold,
    )
    unit_f1 = 2 * units.found / units.boxes
    pair_found = np.bincount(
        units.pair, weights=units.found, minlength=units.pair.max(initial=-1) + 1
    )
    pair_boxes = np.bincount(units.pair, weights=units.boxes, minlength=len(pair_found))
    scored = np.flatnonzero(pair_boxes > 0)
    pair_f1 = 2 * pair_found[scored] / pair_boxes[scored]
    pair_subject = np.zeros(len(pair_found), np.int64)
    pair_subject[units.pair] = units.subject
    rows = []
    for c, name in enumerate(names.tolist()):
        reported = int((on_multi[:, c] > 0).sum())
        unanimous = int((on_multi[:, c] == raters).sum())
        counts = np.stack([on_multi[:, c], raters - on_multi[:, c]], axis=1)
        rows.append(
            ClassAgreement(
                name,
                reported,
                unanimous / reported if reported else None,
                _mean(unit_f1[units.class_code == c]),
                fleiss_kappa(counts) if len(counts) else None,
            )
        )
    pooled = np.stack([on_multi.T.ravel(), np.tile(raters, n_c) - on_multi.T.ravel()], axis=1)
    all_agree = agree.all(axis=1)
    overall = ClassAgreement(
        "all classes",
        int(multi.sum()),
        float(all_agree.mean()) if multi.any() else None,
        _mean(pair_f1),
        fleiss_kappa(pooled) if len(pooled) else None,
    )
    return AgreementReport(
        tuple(rows),
        overall,
        _image_rows(
            subjects, n_readers, present, names, (multi, all_agree), pair_subject[scored], pair_f1
        )
        if per_image
        else (),
        int((~multi).sum()),
        iou_threshold,
    )


def _image_rows(
    subjects: NDArray[np.int64],
    n_readers: NDArray[np.int64],
    present: NDArray[np.int64],
    names: NDArray[np.str_],
    agreement: tuple[NDArray[np.bool_], NDArray[np.bool_]],  # multi-reader, all agree there
    scored_subject: NDArray[np.int64],
    pair_f1: NDArray[np.float64],
) -> tuple[ImageAgreement, ...]:
    """One row per image: readers, the classes anyone reported, agreement, mean box F1."""
    multi, all_agree = agreement
    sums = np.bincount(scored_subject, weights=pair_f1, minlength=len(subjects))
    scored = np.bincount(scored_subject, minlength=len(subjects))
    agree_of = np.zeros(len(subjects), bool)
    agree_of[multi] = all_agree
    label = names.tolist()
    # Each subject's reported classes: the nonzero cells of its row, split by subject.
    cell_s, cell_c = np.nonzero(present)
    ends = np.cumsum(np.bincount(cell_s, minlength=len(subjects))).tolist()
    codes = cell_c.tolist()
    rows = []
    for s, subject in enumerate(subjects.tolist()):
        classes = tuple(label[c] for c in codes[ends[s - 1] if s else 0 : ends[s]])
        if not multi[s]:
            rows.append(ImageAgreement(subject, 1, classes, None, None))
            continue
        f1 = float(sums[s] / scored[s]) if scored[s] else None
        rows.append(ImageAgreement(subject, int(n_readers[s]), classes, bool(agree_of[s]), f1))
    return tuple(rows)
