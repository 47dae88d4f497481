"""Splits: no patient in two splits, exact determinism, scaled counts, stratification
on a VinBigData-like population, stability when data are added, the leakage check."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radlake.curation.splits import (
    SplitInputError,
    SplitItem,
    SplitSpec,
    SplitSpecError,
    assign_splits,
    check_leakage,
    split_statistics,
)
from radlake.errors import RadlakeError

SIX = ("training", "validation", "test", "staging", "canary", "production")
# VinBigData-like: 14 abnormalities (share of images carrying each, among all
# images) plus "No finding" on the two thirds of images without any.
ABNORMAL = {
    "Aortic enlargement": 0.08,
    "Atelectasis": 0.005,
    "Calcification": 0.01,
    "Cardiomegaly": 0.06,
    "Consolidation": 0.01,
    "ILD": 0.013,
    "Infiltration": 0.017,
    "Lung Opacity": 0.033,
    "Nodule/Mass": 0.033,
    "Other lesion": 0.03,
    "Pleural effusion": 0.03,
    "Pleural thickening": 0.063,
    "Pneumothorax": 0.003,
    "Pulmonary fibrosis": 0.053,
}


def population(n: int, *, seed: int, images_per_group: int = 3) -> list[SplitItem]:
    """n images; groups of about `images_per_group` (1: one image per group)."""
    rng = np.random.default_rng(seed)
    names = list(ABNORMAL)
    abnormal = rng.random(n) < 1 / 3
    # Prevalence within abnormal images, so the overall shares match ABNORMAL.
    has = (rng.random((n, len(names))) < 3 * np.array(list(ABNORMAL.values()))) & abnormal[:, None]
    has[abnormal & ~has.any(axis=1), 0] = True  # an abnormal image has a finding
    group = np.arange(n) if images_per_group == 1 else rng.integers(0, n // images_per_group, n)
    return [
        SplitItem(
            i,
            f"patient-{group[i]}",
            frozenset(names[j] for j in np.flatnonzero(has[i])) or frozenset({"No finding"}),
        )
        for i in range(n)
    ]


def label_totals(items: list[SplitItem]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in items:
        for label in item.labels:
            totals[label] = totals.get(label, 0) + 1
    return totals


# --- the spec ---------------------------------------------------------------------


def test_default_spec_is_the_original_six_way_split_scaled_exactly() -> None:
    spec = SplitSpec.default()
    assert spec.names == SIX
    assert list(spec.sizes(15_000).values()) == [11500, 750, 750, 1000, 500, 500]
    assert list(spec.sizes(150_000).values()) == [115000, 7500, 7500, 10000, 5000, 5000]
    assert list(spec.sizes(1_500_000).values()) == [1150000, 75000, 75000, 100000, 50000, 50000]
    # 3,000 images: 2300/150/150/200/100/100 exactly, no rounding needed.
    assert list(spec.sizes(3_000).values()) == [2300, 150, 150, 200, 100, 100]


@given(st.integers(min_value=0, max_value=10**7))
def test_sizes_sum_exactly_and_stay_within_one_of_the_quota(n: int) -> None:
    spec = SplitSpec.default()
    sizes = spec.sizes(n)
    assert sum(sizes.values()) == n
    total = sum(spec.weights)
    for name, weight in zip(spec.names, spec.weights, strict=True):
        assert abs(sizes[name] - n * weight / total) < 1


def test_largest_remainder_gives_leftover_images_to_the_largest_fractions() -> None:
    spec = SplitSpec.parse("a=0.5,b=0.3,c=0.2")
    assert spec.sizes(7) == {"a": 4, "b": 2, "c": 1}  # quotas 3.5, 2.1, 1.4
    assert spec.sizes(1) == {"a": 1, "b": 0, "c": 0}


def test_parse_fractions_and_counts_and_round_trip() -> None:
    fractions = SplitSpec.parse("training=0.8, validation=0.1, test=0.1")
    assert (fractions.names, fractions.weights, fractions.counts) == (
        ("training", "validation", "test"),
        (0.8, 0.1, 0.1),
        False,
    )
    counts = SplitSpec.parse("training=11500,validation=750,test=750")
    assert counts.counts and counts.sizes(13_000) == {
        "training": 11500,
        "validation": 750,
        "test": 750,
    }
    for spec in (fractions, counts, SplitSpec.default()):
        assert SplitSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "NAME=NUMBER"),
        ("training", "NAME=NUMBER"),
        ("training=0.8,=0.2", "NAME=NUMBER"),
        ("training=lots", "expected a number for split 'training'"),
        ("training=0.8,test=0.1", "fractions summing to 1"),
        ("training=0.5,test=0.6", "fractions summing to 1"),
        ("training=100,test=0.5", "all counts or all fractions"),
        ("training=0.5,training=0.5", "unique split names"),
        ("training=0,test=10", "positive size for split 'training'"),
        ("training=1.2,test=-0.2", "positive size for split 'test'"),
        ("training=nan,test=0.5", "positive size"),
        ("train ing=0.5,test=0.5", "split names of letters"),
    ],
)
def test_parse_rejects_bad_specs_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(SplitSpecError, match=message) as caught:
        SplitSpec.parse(text)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RadlakeError)


def test_fractions_may_sum_to_one_within_rounding() -> None:
    SplitSpec.parse("a=0.1,b=0.2,c=0.7")  # 0.1 + 0.2 is 0.30000000000000004
    with pytest.raises(SplitSpecError, match="summing to 1"):
        SplitSpec(("a", "b"), (0.5, 0.5 + 1e-8))


# --- grouping and determinism -----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=300),
    label_bits=st.lists(st.integers(min_value=0, max_value=15), min_size=300, max_size=300),
    fractions=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_no_group_lands_in_two_splits(
    groups: list[int], label_bits: list[int], fractions: list[int], seed: int
) -> None:
    spec = SplitSpec(
        tuple(f"s{i}" for i in range(len(fractions))), tuple(map(float, fractions)), True
    )
    items = [
        SplitItem(
            1000 + i,
            f"g{group}",
            frozenset(f"L{b}" for b in range(4) if label_bits[i] >> b & 1),
        )
        for i, group in enumerate(groups)
    ]
    assignment = assign_splits(items, spec, seed=seed)
    assert sorted(assignment) == [item.image_id for item in items]
    assert set(assignment.values()) <= set(spec.names)
    split_of_group: dict[str, str] = {}
    for item in items:
        assert (
            split_of_group.setdefault(item.group, assignment[item.image_id])
            == assignment[item.image_id]
        )
    assert check_leakage(assignment, items).ok


def test_same_seed_same_result_whatever_the_input_order() -> None:
    items = population(3000, seed=1)
    spec = SplitSpec.default()
    first = assign_splits(items, spec, seed=7)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert assign_splits(shuffled, spec, seed=7) == first
    assert assign_splits(iter(items), spec, seed=7) == first
    other = assign_splits(items, spec, seed=8)
    assert other != first
    assert sum(first[i] != other[i] for i in first) > 100  # a different draw, not one swap


def test_single_image_groups_meet_the_six_way_counts_exactly() -> None:
    items = population(15_000, seed=2, images_per_group=1)
    assignment = assign_splits(items, SplitSpec.default(), seed=0)
    stats = split_statistics(assignment, items, order=SIX)
    assert {n: s.images for n, s in stats.items()} == SplitSpec.default().sizes(15_000)


def test_patient_groups_come_close_to_the_counts() -> None:
    items = population(15_000, seed=3)
    assignment = assign_splits(items, SplitSpec.default(), seed=0)
    stats = split_statistics(assignment, items, order=SIX)
    for name, size in SplitSpec.default().sizes(15_000).items():
        assert abs(stats[name].images - size) <= 10, (name, stats[name].images, size)


def random_group_split(items: list[SplitItem], spec: SplitSpec, seed: int) -> dict[int, str]:
    """The unstratified baseline: groups shuffled and cut at the target sizes."""
    groups = sorted({item.group for item in items})
    random.Random(seed).shuffle(groups)
    bounds = np.cumsum(list(spec.sizes(len(groups)).values()))
    split_of = {
        g: spec.names[int(np.searchsorted(bounds, i, side="right"))] for i, g in enumerate(groups)
    }
    return {item.image_id: split_of[item.group] for item in items}


@pytest.mark.parametrize("images_per_group", [1, 3])
def test_every_split_keeps_the_prevalence_of_every_label(images_per_group: int) -> None:
    items = population(15_000, seed=4, images_per_group=images_per_group)
    spec = SplitSpec.default()
    totals = label_totals(items)
    assert len(totals) == 15 and abs(totals["No finding"] / len(items) - 2 / 3) < 0.02

    def squared_error(assignment: dict[int, str]) -> float:
        stats = split_statistics(assignment, items, order=spec.names)
        error = 0.0
        for name, split in stats.items():
            for label, total in totals.items():
                share = split.label_counts.get(label, 0) / split.images
                # 1.5 points even in the 500-image splits; "No finding" (2/3) included.
                assert abs(share - total / len(items)) <= 0.015, (name, label, share)
                error += (split.label_counts.get(label, 0) - total / len(items) * split.images) ** 2
        return error

    stratified = squared_error(assign_splits(items, spec, seed=11))
    baseline = [
        sum(
            (s.label_counts.get(label, 0) - t / len(items) * s.images) ** 2
            for s in split_statistics(random_group_split(items, spec, seed), items).values()
            for label, t in totals.items()
        )
        for seed in range(3)
    ]
    assert stratified * 10 < min(baseline)  # far closer than a plain grouped shuffle


# --- stability when data are added ----------------------------------------------


def test_adding_data_keeps_every_earlier_assignment() -> None:
    items = population(15_000, seed=5)
    spec = SplitSpec.default()
    before = assign_splits(items, spec, seed=0)
    rng = np.random.default_rng(9)
    groups = sorted({item.group for item in items})
    added = [  # 10% more: half of them new images of known patients, half new patients
        SplitItem(
            100_000 + i,
            groups[int(rng.integers(len(groups)))] if i % 2 else f"new-{i // 4}",
            frozenset({"No finding"}) if rng.random() < 2 / 3 else frozenset({"Cardiomegaly"}),
        )
        for i in range(1500)
    ]
    after = assign_splits(items + added, spec, seed=0, previous=before)
    assert all(after[image_id] == split for image_id, split in before.items())
    split_of_group = {item.group: before[item.image_id] for item in items}
    for item in added:
        if item.group in split_of_group:
            assert after[item.image_id] == split_of_group[item.group]
    assert check_leakage(after, items + added).ok
    stats = split_statistics(after, items + added, order=SIX)
    for name, size in spec.sizes(16_500).items():  # new patients fill toward the targets
        assert abs(stats[name].images - size) <= 30, (name, stats[name].images, size)
    # Running it again with the new result as previous changes nothing.
    assert assign_splits(items + added, spec, seed=0, previous=after) == after


def test_previous_entries_for_images_no_longer_selected_are_ignored() -> None:
    items = [SplitItem(i, f"p{i}") for i in range(10)]
    spec = SplitSpec.parse("a=0.5,b=0.5")
    assignment = assign_splits(items, spec, seed=1, previous={999: "a", 3: "b"})
    assert set(assignment) == set(range(10)) and assignment[3] == "b"


def test_bad_inputs_are_refused() -> None:
    spec = SplitSpec.parse("a=0.5,b=0.5")
    with pytest.raises(SplitInputError, match="image id 4 twice"):
        assign_splits([SplitItem(4, "p"), SplitItem(4, "q")], spec, seed=0)
    with pytest.raises(SplitInputError, match="seed >= 0"):
        assign_splits([SplitItem(1, "p")], spec, seed=-1)
    with pytest.raises(SplitInputError, match=r"\['c'\] not in a=0.5,b=0.5"):
        assign_splits([SplitItem(1, "p")], spec, seed=0, previous={1: "c"})
    assert assign_splits([], spec, seed=0) == {}


# --- the leakage check and statistics ----------------------------------------------


def test_leakage_check_catches_a_leaked_assignment() -> None:
    items = population(600, seed=6)
    assignment = assign_splits(items, SplitSpec.default(), seed=0)
    assert check_leakage(assignment, items).ok
    by_group: dict[str, list[int]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item.image_id)
    group, (first, second, *_) = next(
        (g, ids) for g, ids in sorted(by_group.items()) if len(ids) > 1
    )
    leaked = dict(assignment)
    leaked[second] = next(s for s in SIX if s != assignment[first])
    del leaked[items[-1].image_id]
    report = check_leakage(leaked, [*items, items[0]])
    assert not report.ok
    assert report.leaked_groups == 1
    assert report.groups_in_several_splits == [
        (group, tuple(sorted({assignment[first], leaked[second]})))
    ]
    assert report.images_unassigned == 1
    assert report.duplicate_image_ids == [items[0].image_id]
    stored = json.loads(json.dumps(report.as_dict()))
    assert stored["groups_in_several_splits"][0]["group"] == group and stored["ok"] is False


def test_leakage_report_lists_at_most_the_limit() -> None:
    items = [SplitItem(i, f"p{i // 2}") for i in range(100)]
    assignment = {i: "a" if i % 2 else "b" for i in range(100)}
    report = check_leakage(assignment, items, limit=5)
    assert report.leaked_groups == 50 and len(report.groups_in_several_splits) == 5
    assert report.groups_in_several_splits[0] == ("p0", ("a", "b"))


def test_split_statistics_counts_images_groups_and_labels() -> None:
    items = [
        SplitItem(1, "p1", frozenset({"Nodule/Mass", "ILD"})),
        SplitItem(2, "p1", frozenset({"Nodule/Mass"})),
        SplitItem(3, "p2"),
        SplitItem(4, "p3", frozenset({"ILD"})),
        SplitItem(5, "p4"),
    ]
    stats = split_statistics(
        {1: "train", 2: "train", 3: "train", 4: "test"}, items, order=["train"]
    )
    assert list(stats) == ["train", "test"]
    assert (stats["train"].images, stats["train"].groups) == (3, 2)
    assert stats["train"].label_counts == {"ILD": 1, "Nodule/Mass": 2}
    assert (stats["test"].images, stats["test"].groups, stats["test"].label_counts) == (
        1,
        1,
        {"ILD": 1},
    )
