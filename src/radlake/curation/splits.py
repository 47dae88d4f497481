"""Named dataset splits: grouped (no patient in two splits), stratified, stable.

`assign_splits` places groups (patients, or single images when a source has no
patients) by iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML PKDD
2011): rarest label first, each split taking that label's groups in proportion to
how many of the label it still lacks; the groups left fill each split to its size.
A label's groups are placed as arrays (an order cut into one run per split), so the
cost is a sort of the input plus O(images x labels), not a loop. Earlier assignments
are kept: only groups never seen before are placed.

Reproducible anywhere (issue 9): a group is known by its content, the smallest
content key (sha256) of its images, and groups are ordered by a hash of (seed, that
identity). Group names (keyed patient pseudonyms, which differ from lake to lake) and
image ids (ingestion order) only say which images belong together, never where they
go, so the same files, spec and seed give the same splits in any lake. When there
are at least as many groups as splits, every split gets one; with fewer, the
trainer's splits (training, validation, test) are served first and
`empty_split_warnings` says which stay empty.

Errors: `SplitSpecError` (a malformed spec) and `SplitInputError` (items, seed or
previous assignment that cannot be split), both `RadlakeError` and `ValueError`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import NDArray

from radlake.errors import RadlakeError

IntArray = NDArray[np.int64]

#: The original production pipeline's six splits of 15,000 images.
DEFAULT_SPEC = "training=11500,validation=750,test=750,staging=1000,canary=500,production=500"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SplitSpecError(RadlakeError, ValueError):
    """A split specification is malformed (names, numbers, fractions' sum)."""


class SplitInputError(RadlakeError, ValueError):
    """Items, a seed or a previous assignment cannot be split as asked."""


@dataclass(frozen=True, slots=True)
class SplitSpec:
    """Ordered split names with fractions, or with counts that are scaled to the data.

    Counts are proportions: `training=11500,...` on 150,000 images gives 115,000
    training images; on exactly their sum they are met exactly.

    Raises:
        SplitSpecError: no names, names repeated or not of letters, digits, "_", "."
            and "-", sizes that are not positive (or counts not whole), fractions
            that do not sum to 1 within 1e-9.
    """

    names: tuple[str, ...]
    weights: tuple[float, ...]
    counts: bool = False

    def __post_init__(self) -> None:
        if not self.names or len(self.names) != len(self.weights):
            raise SplitSpecError(
                f"expected one weight per split name, got {len(self.names)} names "
                f"and {len(self.weights)} weights"
            )
        for name in self.names:
            if not _NAME.match(name):
                raise SplitSpecError(
                    f"expected split names of letters, digits, _ . -; got {name!r}"
                )
        if len(set(self.names)) != len(self.names):
            repeated = sorted({n for n in self.names if self.names.count(n) > 1})
            raise SplitSpecError(f"expected unique split names, got {', '.join(repeated)} twice")
        for name, weight in zip(self.names, self.weights, strict=True):
            if not (math.isfinite(weight) and weight > 0):
                raise SplitSpecError(f"expected a positive size for split {name!r}, got {weight}")
            if self.counts and weight != int(weight):
                raise SplitSpecError(f"expected a whole count for split {name!r}, got {weight}")
        if not self.counts and abs(math.fsum(self.weights) - 1.0) > 1e-9:
            raise SplitSpecError(
                f"expected fractions summing to 1, got {math.fsum(self.weights)!r}"
            )

    @classmethod
    def default(cls) -> SplitSpec:
        """The six splits of the original pipeline, as counts scaled to the data."""
        return cls.parse(DEFAULT_SPEC)

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        """Parse `training=0.8,validation=0.1,test=0.1` or `training=11500,test=750`.

        Whole numbers are counts, numbers with a point or exponent are fractions.

        Raises:
            SplitSpecError: empty text, an entry that is not NAME=NUMBER, counts mixed
                with fractions, or a spec that fails validation.
        """
        names: list[str] = []
        weights: list[float] = []
        kinds: set[bool] = set()
        for entry in (part.strip() for part in text.split(",")):
            name, sep, value = (s.strip() for s in entry.partition("="))
            if not sep or not name or not value:
                raise SplitSpecError(
                    f"expected NAME=NUMBER entries separated by commas, got {entry!r}"
                )
            try:
                weights.append(float(value))
            except ValueError:
                raise SplitSpecError(
                    f"expected a number for split {name!r}, got {value!r}"
                ) from None
            names.append(name)
            kinds.add(value.isdigit())
        if len(kinds) > 1:
            raise SplitSpecError(f"expected all counts or all fractions, got a mix in {text!r}")
        return cls(tuple(names), tuple(weights), kinds == {True})

    def __str__(self) -> str:
        fmt = (lambda w: str(int(w))) if self.counts else repr
        return ",".join(f"{n}={fmt(w)}" for n, w in zip(self.names, self.weights, strict=True))

    def sizes(self, n: int) -> dict[str, int]:
        """Images per split for `n` images, summing exactly to `n`.

        Largest-remainder rounding (Hamilton's method); ties go to the earlier split.

        Raises:
            SplitInputError: a negative `n`.
        """
        if n < 0:
            raise SplitInputError(f"expected a number of images >= 0, got {n}")
        if self.counts:  # exact integer quotas, so 15,000 gives 11500/750/... exactly
            total = int(sum(self.weights))
            quotas = [(n * int(w)) // total for w in self.weights]
            fracs = [((n * int(w)) % total) / total for w in self.weights]
        else:
            total_weight = math.fsum(self.weights)  # so the quotas add up to n
            exact = [n * w / total_weight for w in self.weights]
            quotas = [math.floor(q) for q in exact]
            fracs = [q - f for q, f in zip(exact, quotas, strict=True)]
        for i in sorted(range(len(quotas)), key=lambda i: -fracs[i])[: n - sum(quotas)]:
            quotas[i] += 1
        return dict(zip(self.names, quotas, strict=True))


# Splits a trainer reads (Ultralytics train/val/test) are the first to get a group
# when there are fewer groups than splits, so a tiny set still has a validation set.
_TRAINER_SPLITS = ("training", "train", "validation", "val", "valid", "test")


@dataclass(frozen=True, slots=True)
class SplitItem:
    """One image to split: its group (patient pseudonym, else anything unique to the
    image) and its content key (the sha256 of the original).

    The key decides where the group goes; without one the image id stands in, which
    ties the result to the lake's ids (fine for tests, not across lakes).
    """

    image_id: int
    group: str
    labels: frozenset[str] = frozenset()
    key: str = ""

    @property
    def content_key(self) -> str:
        return self.key or f"id:{self.image_id:020d}"


@dataclass(frozen=True, slots=True)
class _Table:
    """Items as arrays in image-id order, so the input order never matters."""

    image_ids: IntArray
    group_of: IntArray  # per image: index into group_ids (groups in identity order)
    group_ids: list[str]  # per group: its smallest content key, its identity
    label_image: IntArray  # per (image, label) pair: the image's row
    label_code: IntArray  # per pair: index into labels (sorted)
    labels: tuple[str, ...]


def _table(items: Iterable[SplitItem]) -> _Table:
    items = list(items)
    ids = [item.image_id for item in items]
    identity: dict[str, str] = {}
    for item in items:
        key = item.content_key
        if item.group not in identity or key < identity[item.group]:
            identity[item.group] = key
    # Groups are numbered by identity (content), not by name (a lake's pseudonym).
    ranked = sorted(identity, key=lambda g: (identity[g], g))
    number = {group: i for i, group in enumerate(ranked)}
    pair_row: list[int] = []
    pair_label: list[str] = []
    for row, item in enumerate(items):
        pair_row.extend([row] * len(item.labels))
        pair_label.extend(item.labels)
    image_ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(image_ids, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group_of = np.asarray([number[item.group] for item in items], dtype=np.int64)
    labels = tuple(sorted(set(pair_label)))
    code = {label: i for i, label in enumerate(labels)}
    return _Table(
        image_ids[order],
        group_of[order],
        [identity[g] for g in ranked],
        rank[np.asarray(pair_row, dtype=np.int64)],
        np.asarray([code[label] for label in pair_label], dtype=np.int64),
        labels,
    )


def _priorities(identities: Sequence[str], seed: int) -> NDArray[np.uint64]:
    """Each group's place in the seeded order: a hash of (seed, group identity).

    A group's place depends on itself alone, never on the other groups, the lake's
    secret or its ids.
    """
    return np.fromiter(
        (
            int.from_bytes(hashlib.sha256(f"{seed}\0{g}".encode()).digest()[:8], "big")
            for g in identities
        ),
        dtype=np.uint64,
        count=len(identities),
    )


def _cut(
    weights: IntArray,
    need: NDArray[np.float64],
    priority: NDArray[np.uint64],
    rng: np.random.Generator,
) -> IntArray:
    """Give each split a run of the seeded group order whose weight matches its need."""
    need = np.clip(need, 0.0, None)
    if need.sum() <= 0:  # every split already has its share: spread evenly
        need = np.ones_like(need)
    order = np.argsort(priority, kind="stable")
    # Splits in a random order too: the midpoint rule below favours no split.
    splits = rng.permutation(len(need))
    w = weights[order].astype(np.float64)
    bounds = np.cumsum(need[splits]) * (w.sum() / need.sum())
    # A group goes where the middle of its weight falls, so integer needs summing
    # to the total weight are met exactly (single-image groups hit the counts).
    run = np.searchsorted(bounds, np.cumsum(w) - w / 2, side="right")
    out = np.empty(len(weights), dtype=np.int64)
    out[order] = splits[np.minimum(run, len(need) - 1)]
    return out


def _stratify(
    sizes: IntArray, group_labels: IntArray, excess: IntArray, fractions: NDArray[np.float64],
    size_need: NDArray[np.float64], label_need: NDArray[np.float64],
    excess_need: NDArray[np.float64], priority: NDArray[np.uint64], rng: np.random.Generator,
) -> IntArray:  # fmt: skip
    """Iterative stratification of groups (their split codes); updates the needs in place."""
    out = np.full(len(sizes), -1, dtype=np.int64)
    remaining = np.ones(len(sizes), dtype=bool)
    left = group_labels.sum(axis=0)
    excess_left = float(excess.sum())
    # An image with several labels meets several needs at once, so a split that got
    # many such images would end with fewer images than its labels suggest (and too
    # large a "No finding" share). Each label's groups are therefore cut in levels of
    # excess labels (0, 1, 2-3, 4-7, ...), richest first, steering excess to the
    # splits short of it; the plain last level evens out the label's own counts.
    level = np.floor(np.log2(excess + 1.0)).astype(np.int64)
    while (left > 0).any() and remaining.any():
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))  # rarest
        rows = np.flatnonzero(remaining & (group_labels[:, label] > 0))
        if len(rows) == remaining.sum():
            break  # the label is on every group left: the size step below serves both
        rows = rows[np.argsort(-level[rows], kind="stable")]
        need = label_need[:, label].copy()
        for stratum in np.split(rows, np.flatnonzero(np.diff(level[rows])) + 1):
            weights = group_labels[stratum, label]
            share = np.clip(need, 0.0, None)
            density = excess[stratum].sum() / weights.sum()
            if density > 0 and share.sum() > 0:
                off = excess_need - fractions * excess_left  # > 0: short of excess
                share = np.clip(share * (weights.sum() / share.sum()) + off / density, 0.0, None)
            split = _cut(weights, share if share.sum() > 0 else size_need, priority[stratum], rng)
            for j in range(len(size_need)):
                mine = stratum[split == j]
                size_need[j] -= sizes[mine].sum()
                label_need[j] -= group_labels[mine].sum(axis=0)
                need[j] -= group_labels[mine, label].sum()
                excess_need[j] -= excess[mine].sum()
            out[stratum] = split
            remaining[stratum] = False
            excess_left -= float(excess[stratum].sum())
        left -= group_labels[rows].sum(axis=0)
    rows = np.flatnonzero(remaining)
    out[rows] = _cut(sizes[rows], size_need, priority[rows], rng)
    return out


def assign_splits(
    items: Iterable[SplitItem],
    spec: SplitSpec,
    *,
    seed: int,
    previous: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Assign every item's image to a split of `spec`; returns image id -> split name.

    All images of a group land in one split; per-label image counts follow the split
    fractions as closely as whole groups allow; every split gets a group when there
    are enough (see `_fill_empty_splits`). The result depends only on which images
    share a group, their labels and content keys, the spec and the seed: not on
    group names, image ids or input order. With `previous` (an earlier result), its images
    keep their split, new images of a group seen before follow that group (its most
    common previous split, should `previous` itself be leaked), and only new groups
    are distributed, towards the targets for the whole new set. Entries of `previous`
    for images no longer among the items are ignored.

    Raises:
        SplitInputError: a negative seed, an image id listed twice, or a previous
            split name that is not in `spec`.
    """
    if seed < 0:
        raise SplitInputError(f"expected a seed >= 0, got {seed}")
    table = _table(items)
    n, k, n_labels = len(table.image_ids), len(spec.names), len(table.labels)
    if n and (dup := table.image_ids[1:][np.diff(table.image_ids) == 0]).size:
        raise SplitInputError(f"expected each image once, got image id {int(dup[0])} twice")
    split = np.full(n, -1, dtype=np.int64)
    if previous:
        code = {name: j for j, name in enumerate(spec.names)}
        unknown = sorted(set(previous.values()) - code.keys())
        if unknown:
            raise SplitInputError(f"previous assignment uses splits {unknown} not in {spec}")
        prev_ids = np.fromiter(previous.keys(), dtype=np.int64, count=len(previous))
        prev_split = np.fromiter((code[s] for s in previous.values()), np.int64, len(previous))
        pos = np.minimum(np.searchsorted(table.image_ids, prev_ids), max(n - 1, 0))
        kept = (table.image_ids[pos] == prev_ids) if n else np.zeros(0, dtype=bool)
        split[pos[kept]] = prev_split[kept]
    n_groups = len(table.group_ids)
    seen = split >= 0
    votes = np.bincount(table.group_of[seen] * k + split[seen], minlength=n_groups * k)
    votes = votes.reshape(n_groups, k)
    group_split = np.where(votes.any(axis=1), votes.argmax(axis=1), -1)
    split = np.where(seen, split, group_split[table.group_of])

    # Whatever is already placed counts against the targets for the whole set.
    placed = split >= 0
    size_need = np.asarray(list(spec.sizes(n).values()), dtype=np.float64)
    fractions = size_need / max(n, 1)
    size_need -= np.bincount(split[placed], minlength=k)
    label_totals = np.bincount(table.label_code, minlength=n_labels)
    label_need = fractions[:, None] * label_totals[None, :]
    pair_split = split[table.label_image]
    on = pair_split >= 0
    label_need -= np.bincount(
        pair_split[on] * n_labels + table.label_code[on], minlength=k * n_labels
    ).reshape(k, n_labels)

    new_groups = np.flatnonzero(group_split < 0)
    if new_groups.size:
        local = np.full(n_groups, -1, dtype=np.int64)
        local[new_groups] = np.arange(new_groups.size)
        sizes = np.bincount(local[table.group_of][~placed], minlength=new_groups.size)
        pair_group = local[table.group_of[table.label_image]]
        mine = pair_group >= 0
        group_labels = np.bincount(
            pair_group[mine] * n_labels + table.label_code[mine],
            minlength=new_groups.size * n_labels,
        ).reshape(new_groups.size, n_labels)
        rng = np.random.default_rng(seed)
        image_excess = np.maximum(np.bincount(table.label_image, minlength=n) - 1, 0)
        excess = np.bincount(
            local[table.group_of][~placed], image_excess[~placed], minlength=new_groups.size
        ).astype(np.int64)
        excess_need = fractions * image_excess.sum() - np.bincount(
            split[placed], image_excess[placed], minlength=k
        )
        group_split[new_groups] = _stratify(
            sizes, group_labels, excess, fractions, size_need, label_need, excess_need,
            _priorities([table.group_ids[g] for g in new_groups], seed), rng,
        )  # fmt: skip
        group_sizes = np.bincount(table.group_of, minlength=n_groups)
        movable = np.zeros(n_groups, dtype=bool)
        movable[new_groups] = True
        _fill_empty_splits(
            group_split, group_sizes, movable, _priorities(table.group_ids, seed), spec
        )
        split = np.where(placed, split, group_split[table.group_of])
    names = np.asarray(spec.names, dtype=object)[split]
    return dict(zip(table.image_ids.tolist(), names.tolist(), strict=True))


def _split_priority(spec: SplitSpec) -> list[int]:
    """Split indices in the order they are served when groups are scarce: the
    trainer's splits, then the others by size (ties in spec order)."""
    trainer = {name: rank for rank, name in enumerate(_TRAINER_SPLITS)}
    return sorted(
        range(len(spec.names)),
        key=lambda j: (trainer.get(spec.names[j], len(trainer)), -spec.weights[j], j),
    )


def _fill_empty_splits(
    group_split: IntArray,
    group_sizes: IntArray,
    movable: NDArray[np.bool_],
    priority: NDArray[np.uint64],
    spec: SplitSpec,
) -> None:
    """Give every split a group when there are enough (issue 9), in place.

    Proportional targets give a split of 6 images no validation or test image. Each
    empty split that should have one (all of them with at least as many groups as
    splits, else the first in `_split_priority`) takes the smallest newly placed
    group (then the first in the seeded order) of the split furthest over its
    target that can spare one. Groups of an earlier version never move.
    """
    k = len(spec.names)
    n_groups = len(group_split)
    served = _split_priority(spec)[: min(n_groups, k)]
    target = np.asarray(list(spec.sizes(int(group_sizes.sum())).values()), dtype=np.int64)
    for j in served:
        groups_in = np.bincount(group_split, minlength=k)
        if groups_in[j]:
            continue
        images_in = np.bincount(group_split, group_sizes, minlength=k)
        # A donor keeps a group of its own unless nothing asks it to have one.
        spare = np.asarray([groups_in[d] >= (2 if d in served else 1) for d in range(k)])
        candidates = movable & spare[group_split]
        if not candidates.any():
            continue
        over = images_in - target
        donor = max(
            (int(d) for d in np.unique(group_split[candidates])),
            key=lambda d: (d not in served, over[d], -d),
        )
        rows = np.flatnonzero(candidates & (group_split == donor))
        chosen = rows[np.lexsort((priority[rows], group_sizes[rows]))[0]]
        group_split[chosen] = j


def empty_split_warnings(
    assignment: Mapping[int, str], items: Iterable[SplitItem], spec: SplitSpec
) -> list[str]:
    """One line per reason some splits of `spec` got no image (too few groups, or
    every group kept by an earlier version); empty when every split has images."""
    used = set(assignment.values())
    empty = [name for name in spec.names if name not in used]
    if not empty:
        return []
    groups = len({item.group for item in items})
    why = (
        f"only {groups} group(s) (patients, or images without one) for {len(spec.names)} splits"
        if groups < len(spec.names)
        else "the groups kept by the earlier version leave none to spare"
    )
    return [f"split(s) {', '.join(empty)} have no image: {why}"]


@dataclass(frozen=True, slots=True)
class LeakageReport:
    """What `check_leakage` found; `ok` when no group spans splits and all is assigned."""

    ok: bool
    groups_in_several_splits: list[tuple[str, tuple[str, ...]]]  # first `limit`, by group
    leaked_groups: int
    images_unassigned: int
    duplicate_image_ids: list[int]  # first `limit`, ascending

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form, as stored with a dataset version."""
        groups = [{"group": g, "splits": list(s)} for g, s in self.groups_in_several_splits]
        return {**asdict(self), "groups_in_several_splits": groups}


def check_leakage(
    assignment: Mapping[int, str], items: Iterable[SplitItem], *, limit: int = 20
) -> LeakageReport:
    """Check an assignment against its items: groups in several splits, images left
    out, image ids listed more than once. Never raises on bad data; it reports it."""
    items = list(items)
    splits_of: dict[str, set[str]] = {}
    unassigned = 0
    for item in items:
        name = assignment.get(item.image_id)
        if name is None:
            unassigned += 1
        else:
            splits_of.setdefault(item.group, set()).add(name)
    leaked = sorted(g for g, s in splits_of.items() if len(s) > 1)
    ids, counts = np.unique(np.asarray([i.image_id for i in items], np.int64), return_counts=True)
    duplicates = ids[counts > 1]
    return LeakageReport(
        ok=not leaked and unassigned == 0 and duplicates.size == 0,
        groups_in_several_splits=[(g, tuple(sorted(splits_of[g]))) for g in leaked[:limit]],
        leaked_groups=len(leaked),
        images_unassigned=unassigned,
        duplicate_image_ids=duplicates[:limit].tolist(),
    )


@dataclass(frozen=True, slots=True)
class SplitStatistics:
    """One split's size and label counts (images carrying each label)."""

    images: int = 0
    groups: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)


def split_statistics(
    assignment: Mapping[int, str], items: Iterable[SplitItem], *, order: Sequence[str] = ()
) -> dict[str, SplitStatistics]:
    """Images, groups and label counts per split, splits in `order` then by name.

    Images without a split are left out here; `check_leakage` counts them.
    """
    images: dict[str, int] = {}
    groups: dict[str, set[str]] = {}
    labels: dict[str, dict[str, int]] = {}
    for item in items:
        name = assignment.get(item.image_id)
        if name is None:
            continue
        images[name] = images.get(name, 0) + 1
        groups.setdefault(name, set()).add(item.group)
        counts = labels.setdefault(name, {})
        for label in item.labels:
            counts[label] = counts.get(label, 0) + 1
    names = [n for n in order if n in images] + sorted(images.keys() - set(order))
    return {
        n: SplitStatistics(images[n], len(groups[n]), dict(sorted(labels[n].items())))
        for n in names
    }
