"""Reader agreement: how far the radiologists who read the same images agree.

For images read by several readers (VinBigData: three of seventeen per image),
`reader_agreement` reports per class and overall:

- image-level agreement: among images where any reader reported the class, the
  share where every reader did (overall: images where all readers report the same
  set of classes; a reader with only "No finding" reports the empty set);
- box F1: for every image and pair of its readers, the boxes of a class are matched
  one-to-one at IoU >= 0.4, greedily by IoU (highest first), and scored
  2 * matches / (boxes of A + boxes of B); the score is the mean over the
  (image, reader pair) units with at least one box (overall: a pair's boxes of all
  classes pooled, then the same mean);
- Fleiss' kappa for the class being present, with images as subjects and readers as
  raters, in its form for a varying number of raters per subject (the mean of the
  per-image agreement P_i over images with two or more readers; category shares
  pooled over all ratings). With the same number of readers on every image this is
  exactly Fleiss (1971). Overall kappa pools every (image, class) as one subject.

Images with a single reader take no part in the figures; their count is reported.
An "image" is whatever a finding's image_id numbers: `catalog.labels.reader_findings`
numbers label groups, so labels whose images are not catalogued (a labels-only
source, grouped by its image key) are scored exactly as they would be with them.
Raises `AgreementError` (a `RadlakeError` and `ValueError`) for unusable input.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from radlake.domain import Box, Finding
from radlake.errors import RadlakeError

NO_FINDING = "No finding"
MATCH_IOU = 0.4
COLUMNS = ("class", "images", "image agreement", "box F1", "kappa")
Row = tuple[str, int, float | None, float | None, float | None]


class AgreementError(RadlakeError, ValueError):
    """Findings or parameters that agreement (or consensus) cannot work with."""


def _iou(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """IoU of boxes a and b (..., 4), broadcast against each other."""
    wide = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    high = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(wide, 0.0, None) * np.clip(high, 0.0, None)

    def area(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.clip(x[..., 2] - x[..., 0], 0.0, None) * np.clip(x[..., 3] - x[..., 1], 0.0, None)

    union = area(a) + area(b) - inter
    result: NDArray[np.float64] = np.zeros_like(inter)
    np.divide(inter, union, out=result, where=union > 0)
    return result


def iou_matrix(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """IoU of every box of `a` (n x 4: x_min, y_min, x_max, y_max) with every box of `b`.

    Boxes of zero area overlap nothing (IoU 0), even themselves.

    Raises:
        AgreementError: an input that is not n x 4 (or empty).
    """
    a, b = _boxes(a), _boxes(b)
    return _iou(a[:, None, :], b[None, :, :])


def iou_pairs(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """IoU of box i of `a` with box i of `b` (both n x 4), with iou_matrix's arithmetic.

    Raises:
        AgreementError: inputs that are not n x 4, or of different lengths.
    """
    a, b = _boxes(a), _boxes(b)
    if len(a) != len(b):
        raise AgreementError(f"expected as many boxes in a as in b, got {len(a)} and {len(b)}")
    return _iou(a, b)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    return float(iou_matrix(box_array([a]), box_array([b]))[0, 0])


def box_array(boxes: Sequence[Box]) -> NDArray[np.float64]:
    """Boxes as an n x 4 array (x_min, y_min, x_max, y_max)."""
    coords = [(b.x_min, b.y_min, b.x_max, b.y_max) for b in boxes]
    return np.asarray(coords, dtype=np.float64).reshape(-1, 4)


def _boxes(value: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise AgreementError(f"expected boxes as an n x 4 array, got shape {array.shape}")
    return array


def match_boxes(a: ArrayLike, b: ArrayLike, threshold: float = MATCH_IOU) -> list[tuple[int, int]]:
    """One-to-one matches (index in a, index in b) with IoU >= threshold, greedily by
    IoU from the highest; equal IoUs go to the lower index of a, then of b.

    Raises:
        AgreementError: boxes that are not n x 4.
    """
    overlap = iou_matrix(a, b)
    rows, cols = np.nonzero(overlap >= threshold)
    matches: list[tuple[int, int]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for k in np.lexsort((cols, rows, -overlap[rows, cols])):
        i, j = int(rows[k]), int(cols[k])
        if i not in used_a and j not in used_b:
            matches.append((i, j))
            used_a.add(i)
            used_b.add(j)
    return matches


def fleiss_kappa(counts: ArrayLike) -> float | None:
    """Fleiss' kappa of a subjects x categories table of rating counts.

    Rows may have different totals (raters per subject); rows with fewer than two
    ratings are left out. None when kappa is undefined: no usable row, or every
    rating in one category (chance agreement is then 1).

    Raises:
        AgreementError: a table that is not 2-D or holds negative counts.
    """
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or (table < 0).any():
        raise AgreementError(f"expected a subjects x categories table of counts, got {table.shape}")
    raters = table.sum(axis=1)
    table, raters = table[raters >= 2], raters[raters >= 2]
    if not len(table):
        return None
    agreement = float(np.mean(((table**2).sum(axis=1) - raters) / (raters * (raters - 1))))
    chance = float(((table.sum(axis=0) / raters.sum()) ** 2).sum())
    if chance >= 1.0 - 1e-12:
        return None
    return (agreement - chance) / (1.0 - chance)


@dataclass(frozen=True, slots=True)
class Reads:
    """What each reader reported on one image: classes (without "No finding") and the
    boxes per (reader, class) as n x 4 arrays in coordinate order."""

    readers: tuple[str, ...]
    classes: dict[str, frozenset[str]]
    boxes: dict[tuple[str, str], NDArray[np.float64]]


def check_readers(findings: Sequence[Finding]) -> None:
    """Raises AgreementError unless every finding names its reader."""
    anonymous = sorted({f.image_id for f in findings if f.reader is None})
    if anonymous:
        raise AgreementError(
            f"expected every finding to name its reader, got findings without one on "
            f"{len(anonymous)} images (first image id {anonymous[0]})"
        )


def collect_reads(findings: Sequence[Finding], *, no_finding: str = NO_FINDING) -> dict[int, Reads]:
    """Findings grouped by image and reader; a reader with only `no_finding` reported
    nothing, and a `no_finding` row's box, if any, is ignored.

    Raises:
        AgreementError: a finding names no reader (agreement needs to know who read).
    """
    check_readers(findings)
    classes: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    boxes: dict[int, dict[tuple[str, str], list[tuple[float, ...]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for f in findings:
        reader = str(f.reader)
        seen = classes[f.image_id][reader]  # a reader with nothing to report still counts
        if f.class_name == no_finding:
            continue
        seen.add(f.class_name)
        if f.box is not None:
            box = (f.box.x_min, f.box.y_min, f.box.x_max, f.box.y_max)
            boxes[f.image_id][reader, f.class_name].append(box)
    return {
        image_id: Reads(
            tuple(sorted(by_reader)),
            {r: frozenset(c) for r, c in by_reader.items()},
            {k: np.asarray(sorted(v), np.float64) for k, v in boxes[image_id].items()},
        )
        for image_id, by_reader in sorted(classes.items())
    }


@dataclass(frozen=True, slots=True)
class ClassAgreement:
    """One row of the table: a class, or every class for the overall row."""

    class_name: str
    images: int
    image_agreement: float | None
    box_f1: float | None
    kappa: float | None


@dataclass(frozen=True, slots=True)
class ImageAgreement:
    """One image: its readers, the classes anyone reported, and how far they agree."""

    image_id: int
    readers: int
    classes: tuple[str, ...]
    all_agree: bool | None  # None with a single reader
    box_f1: float | None  # None without boxes or with a single reader


@dataclass(frozen=True, slots=True)
class AgreementReport:
    """Per-class rows, the overall row and per-image rows of `reader_agreement`."""

    classes: tuple[ClassAgreement, ...]
    overall: ClassAgreement
    images: tuple[ImageAgreement, ...]
    single_reader_images: int
    iou_threshold: float

    def rows(self) -> list[Row]:
        """Table rows under `COLUMNS`: every class, then the overall row."""
        return [
            (r.class_name, r.images, r.image_agreement, r.box_f1, r.kappa)
            for r in (*self.classes, self.overall)
        ]

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form, as stored with a dataset version."""
        return {
            "method": {
                "box_match": "greedy one-to-one by IoU",
                "iou_threshold": self.iou_threshold,
                "kappa": "Fleiss, varying raters per subject",
            },
            "overall": asdict(self.overall),
            "classes": [asdict(r) for r in self.classes],
            "images": [{**asdict(r), "classes": list(r.classes)} for r in self.images],
            "single_reader_images": self.single_reader_images,
        }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def reader_agreement(
    findings: Sequence[Finding], *, iou_threshold: float = MATCH_IOU, no_finding: str = NO_FINDING
) -> AgreementReport:
    """Agreement of the readers of every image (see the module docstring for the measures).

    Raises:
        AgreementError: an IoU threshold outside (0, 1], or a finding without a reader.
    """
    # Imported here: agreement_columns builds on this module's measures and reports.
    from radlake.curation.agreement_columns import ReadTable, table_agreement

    check_threshold(iou_threshold)
    table = ReadTable.from_findings(findings)
    return table_agreement(table, iou_threshold=iou_threshold, no_finding=no_finding)


def check_threshold(iou_threshold: float) -> None:
    """Raises AgreementError unless 0 < iou_threshold <= 1."""
    if not 0.0 < iou_threshold <= 1.0:
        raise AgreementError(f"expected an IoU threshold in (0, 1], got {iou_threshold}")
