"""The Dataset version dashboard's figures, from the catalog (issue 14).

A version's members and the lake's ground-truth labels are numpy columns kept by
catalog.dashboard_tables (read once, then topped up), and every figure is computed
from those columns with numpy: counts by class and split via bincount over integer
codes, box geometry and centre heatmaps via histograms. Labels are the version's own
label set: its readers' ground truth as kept; a consensus or retraining set's labels
come from `curation.versions.version_findings`, the same the exports use. Reader
agreement is `curation.agreement_columns.table_agreement` (reader_agreement's
measures) over the members' reader-attributed ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.columns import floats, texts
from radlake.catalog.dashboard_tables import CORNERS, GROUND_TRUTH, members_table
from radlake.catalog.models import DatasetVersion, Image
from radlake.curation.agreement import ClassAgreement
from radlake.curation.agreement_columns import ReadTable, table_agreement
from radlake.curation.versions import version_findings
from radlake.domain import Finding

HEATMAP_CELLS = 16  # the box-centre heatmap is HEATMAP_CELLS x HEATMAP_CELLS over the image
SIZE_BINS = np.linspace(0.0, 1.0, 21)  # sqrt(box area / image area)
ASPECT_BINS = np.linspace(-3.0, 3.0, 13)  # log2(width / height), in pixels
SAMPLES = 3  # sample images per class and split


@dataclass(frozen=True, slots=True)
class Members:
    """A version's images, their split and pixel size (columns, rows), by image id."""

    image_id: NDArray[np.int64]
    split: NDArray[np.str_]
    columns: NDArray[np.float64]
    rows: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LabelColumns:
    """Labels as columns; box corners are NaN for image-level findings, the reader ""
    where none is named."""

    image_id: NDArray[np.int64]
    class_name: NDArray[np.str_]
    reader: NDArray[np.str_]
    corners: NDArray[np.float64]  # n x 4: x_min, y_min, x_max, y_max

    @property
    def has_box(self) -> NDArray[np.bool_]:
        return np.asarray(~np.isnan(self.corners).any(axis=1), dtype=np.bool_)


@dataclass(frozen=True, slots=True)
class Sample:
    """A sample image of a class in a split, with that class's boxes on it."""

    image_id: int
    columns: int
    rows: int
    boxes: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True, slots=True)
class DatasetFigures:
    """Everything the Dataset version page shows."""

    splits: dict[str, int]  # split -> images
    classes: list[str]
    class_images: dict[str, dict[str, int]]  # class -> split -> images with the class
    class_boxes: dict[str, dict[str, int]]  # class -> split -> boxes
    labels_per_image: list[int]  # [k] = images with k labels
    agreement: list[ClassAgreement]  # per class, then the overall row; [] without readers
    single_reader_images: int
    size_hist: dict[str, list[int]]  # class -> counts over SIZE_BINS
    aspect_hist: dict[str, list[int]]  # class -> counts over ASPECT_BINS (clipped)
    heatmaps: dict[str, list[list[int]]]  # class -> [row y][column x] box centres
    samples: dict[str, dict[str, list[Sample]]]  # class -> split -> samples

    @property
    def sample_ids(self) -> list[int]:
        """Every sample image's id, once, in id order."""
        return sorted(
            {s.image_id for per in self.samples.values() for ss in per.values() for s in ss}
        )


def version_members(session: Session, *, version_id: int) -> Members:
    """The version's images, ordered by image id."""
    found = members_table(version_id).columns(session)
    return Members(found["id"], found["split"], found["columns"], found["rows"])


def _label_columns(
    image_id: Sequence[int], class_name: Sequence[str], reader: Sequence[str | None], *corners: Any
) -> LabelColumns:
    return LabelColumns(
        np.fromiter(image_id, np.int64, len(image_id)),
        texts(class_name),
        texts(reader),
        np.stack([floats(c) for c in corners], axis=1) if image_id else np.zeros((0, 4)),
    )


def ground_truth_columns(session: Session, *, members: Members) -> LabelColumns:
    """Every ground-truth label of the members, by image (then label id)."""
    found = GROUND_TRUTH.columns(session)
    chosen = np.flatnonzero(np.isin(found["image_id"], members.image_id))
    chosen = chosen[np.argsort(found["image_id"][chosen], kind="stable")]
    return LabelColumns(
        found["image_id"][chosen],
        found["class_name"][chosen],
        found["reader"][chosen],
        np.stack([found[c][chosen] for c in CORNERS], axis=1),
    )


def version_labels(
    session: Session, version: DatasetVersion, members: Members, ground_truth: LabelColumns
) -> LabelColumns:
    """The labels of the version's label set on its members (see the module docstring)."""
    if version.label_set == "readers":
        return ground_truth
    found = version_findings(session, version, members.image_id.tolist())
    rows = [_finding_row(f) for fs in found.values() for f in fs]
    return (
        _label_columns(*zip(*rows, strict=True)) if rows else _label_columns((), (), (), *[()] * 4)
    )


def _finding_row(f: Finding) -> tuple[Any, ...]:
    box = f.box
    corners = (None,) * 4 if box is None else (box.x_min, box.y_min, box.x_max, box.y_max)
    return (f.image_id, f.class_name, f.reader, *corners)


def _codes(values: NDArray[Any], names: Sequence[str]) -> NDArray[np.int64]:
    """Each value's index in names (every value must be one of them)."""
    order = np.asarray(names, dtype=np.str_)
    return np.searchsorted(order, values).astype(np.int64) if len(order) else np.zeros(0, np.int64)


def _by_class_split(
    codes: NDArray[np.int64], classes: list[str], splits: list[str]
) -> dict[str, dict[str, int]]:
    counts = np.bincount(codes, minlength=len(classes) * len(splits)).reshape(
        len(classes), len(splits)
    )
    return {c: {s: int(counts[i, j]) for j, s in enumerate(splits)} for i, c in enumerate(classes)}


def dataset_figures(
    session: Session, version: DatasetVersion, *, split_order: Sequence[str] = ()
) -> DatasetFigures:
    """The Dataset version page's figures (see the module docstring)."""
    members = version_members(session, version_id=version.id)
    ground_truth = ground_truth_columns(session, members=members)
    labels = version_labels(session, version, members, ground_truth)
    named = list(dict.fromkeys([*split_order, *sorted(set(members.split.tolist()))]))
    splits = [s for s in named if s in set(members.split.tolist())]
    split_sorted = sorted(splits)
    member_split = _codes(members.split, split_sorted)
    # Each label's member row (labels are only read for members).
    at = np.searchsorted(members.image_id, labels.image_id)
    classes = sorted(set(labels.class_name.tolist()))
    class_code = _codes(labels.class_name, classes)
    label_split = member_split[at] if len(at) else np.zeros(0, np.int64)
    pair = class_code * len(split_sorted) + label_split
    box = labels.has_box
    # Images per (class, split): distinct (member, pair) first.
    distinct = np.unique(at * (len(classes) * len(split_sorted) or 1) + pair)
    image_pairs = distinct % (len(classes) * len(split_sorted) or 1)
    class_images = _reorder(_by_class_split(image_pairs, classes, split_sorted), splits)
    class_boxes = _reorder(_by_class_split(pair[box], classes, split_sorted), splits)
    per_image = np.bincount(at, minlength=len(members.image_id))
    geometry = _geometry(labels, members, at, class_code, classes)
    agreement, single = _agreement(ground_truth)
    samples = _samples(labels, members, at, class_code, label_split, classes)
    return DatasetFigures(
        splits={s: int((members.split == s).sum()) for s in splits},
        classes=classes,
        class_images=class_images,
        class_boxes=class_boxes,
        labels_per_image=np.bincount(per_image).tolist() if len(per_image) else [],
        agreement=agreement,
        single_reader_images=single,
        size_hist=geometry[0],
        aspect_hist=geometry[1],
        heatmaps=geometry[2],
        samples={
            c: {s: samples[c].get(split_sorted.index(s), []) for s in splits} for c in classes
        },
    )


def _reorder(table: dict[str, dict[str, int]], splits: list[str]) -> dict[str, dict[str, int]]:
    return {c: {s: row[s] for s in splits} for c, row in table.items()}


Geometry = tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[list[int]]]]


def _geometry(
    labels: LabelColumns,
    members: Members,
    at: NDArray[np.int64],
    class_code: NDArray[np.int64],
    classes: list[str],
) -> Geometry:
    """Per class: box size and aspect histograms and the box-centre heatmap."""
    box = labels.has_box
    corners = labels.corners[box]
    columns, rows = members.columns[at[box]], members.rows[at[box]]
    width, height = corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]
    size = np.sqrt(np.clip(width * height, 0, None) / (columns * rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.clip(np.log2(width / height), ASPECT_BINS[0], ASPECT_BINS[-1])
    centre_x = (corners[:, 0] + corners[:, 2]) / 2 / columns
    centre_y = (corners[:, 1] + corners[:, 3]) / 2 / rows
    code = class_code[box]
    sizes, aspects, heatmaps = {}, {}, {}
    edges = np.linspace(0.0, 1.0, HEATMAP_CELLS + 1)
    for i, name in enumerate(classes):
        chosen = code == i
        if not chosen.any():
            continue
        sizes[name] = np.histogram(np.clip(size[chosen], 0, 1), SIZE_BINS)[0].tolist()
        finite = chosen & np.isfinite(aspect)
        aspects[name] = np.histogram(aspect[finite], ASPECT_BINS)[0].tolist()
        cells, _, _ = np.histogram2d(
            np.clip(centre_y[chosen], 0, 1), np.clip(centre_x[chosen], 0, 1), bins=(edges, edges)
        )
        heatmaps[name] = cells.astype(np.int64).tolist()
    return sizes, aspects, heatmaps


def _agreement(ground_truth: LabelColumns) -> tuple[list[ClassAgreement], int]:
    """Agreement of the reader-attributed ground truth (labels naming no reader left out)."""
    named = ground_truth.reader != ""
    if not named.any():
        return [], 0
    table = ReadTable(
        ground_truth.image_id[named],
        ground_truth.reader[named],
        ground_truth.class_name[named],
        ground_truth.corners[named],
    )
    report = table_agreement(table, per_image=False)
    return [*report.classes, report.overall], report.single_reader_images


def _samples(
    labels: LabelColumns,
    members: Members,
    at: NDArray[np.int64],
    class_code: NDArray[np.int64],
    label_split: NDArray[np.int64],
    classes: list[str],
) -> dict[str, dict[int, list[Sample]]]:
    """The first SAMPLES images (by id) of each class in each split, with the class's
    boxes; image-level findings give samples without boxes."""
    n_members = max(len(members.image_id), 1)
    n_splits = int(label_split.max()) + 1 if len(label_split) else 1
    # Distinct (class, split, member) in that order; keep the first SAMPLES of each group.
    keys = np.unique((class_code * n_splits + label_split) * n_members + at)
    group, member = keys // n_members, keys % n_members
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    keep = rank < SAMPLES
    group, member = group[keep], member[keep]
    # The picked images' boxes of the class they were picked for.
    wanted = np.unique((group // n_splits) * n_members + member)
    own = np.isin(class_code * n_members + at, wanted) & labels.has_box
    boxes: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}
    for code, m, corners in zip(
        class_code[own].tolist(), at[own].tolist(), labels.corners[own].tolist(), strict=True
    ):
        boxes.setdefault((code, m), []).append(tuple(corners))
    result: dict[str, dict[int, list[Sample]]] = {name: {} for name in classes}
    for g, m in zip(group.tolist(), member.tolist(), strict=True):
        code, split = divmod(g, n_splits)
        sample = Sample(
            int(members.image_id[m]),
            int(members.columns[m]),
            int(members.rows[m]),
            tuple(boxes.get((code, m), ())),
        )
        result[classes[code]].setdefault(split, []).append(sample)
    return result


def image_attributes(session: Session, *, image_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The images' attributes now: read on every request, never cached, since the
    privacy checks depend on them (a burned-in flag set later must apply at once)."""
    if not image_ids:
        return {}
    found = session.execute(select(Image.id, Image.attributes).where(Image.id.in_(image_ids)))
    return {int(i): dict(a or {}) for i, a in found}
