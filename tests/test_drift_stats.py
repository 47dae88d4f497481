"""Per-feature drift tests (curation.drift) against independent scipy/pandas computations."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, ks_2samp, wasserstein_distance

from radlake.curation.drift import DRIFT_ROWS, FeatureDrift, categorical_drift, numeric_drift


def rng(seed: int = 14) -> np.random.Generator:
    return np.random.default_rng(seed)


def js_by_formula(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log) from its definition."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    # A zero share adds nothing (x log x -> 0 as x -> 0).
    kl_pm = float(np.sum(p[p > 0] * np.log(p[p > 0] / m[p > 0])))
    kl_qm = float(np.sum(q[q > 0] * np.log(q[q > 0] / m[q > 0])))
    return math.sqrt((kl_pm + kl_qm) / 2)


# --- which test ---------------------------------------------------------------------


def test_the_reference_size_chooses_p_value_tests_up_to_drift_rows_and_distances_above() -> None:
    assert DRIFT_ROWS == 1000
    g = rng()
    current = g.normal(size=500)
    assert numeric_drift("x", g.normal(size=1000), current).test == "ks"
    assert numeric_drift("x", g.normal(size=1001), current).test == "wasserstein"

    few = g.integers(0, 3, size=1001).astype(float)
    assert numeric_drift("x", few[:1000], few[:300]).test == "chi_squared"
    assert numeric_drift("x", few, few[:300]).test == "jensen_shannon"

    labels = list(g.choice(["PA", "AP", "LL"], size=1001))
    assert categorical_drift("view", labels[:1000], labels[:50]).test == "chi_squared"
    assert categorical_drift("view", labels, labels[:50]).test == "jensen_shannon"

    # The current side's size plays no part.
    assert numeric_drift("x", g.normal(size=10), g.normal(size=5000)).test == "ks"


def test_rows_are_counted_after_dropping_missing_values() -> None:
    g = rng()
    reference = g.normal(size=1001)
    reference[7] = np.nan  # 1000 values left: still a p-value test
    result = numeric_drift("x", reference, g.normal(size=20))
    assert (result.test, result.reference_rows, result.current_rows) == ("ks", 1000, 20)

    labels: list[str | None] = ["a", "b", "c"] * 334  # 1002
    labels[0] = labels[1] = None
    result = categorical_drift("c", labels, ["a", "b"])
    assert (result.test, result.reference_rows) == ("chi_squared", 1000)


def test_numbers_with_five_or_fewer_distinct_values_are_tested_as_categories() -> None:
    g = rng()
    reference = g.integers(1, 6, size=400).astype(float)  # 1..5
    current = g.integers(1, 6, size=300).astype(float)
    result = numeric_drift("grade", reference, current)
    assert (result.kind, result.test) == ("numeric", "chi_squared")
    ref_counts = pd.Series(reference).value_counts().sort_index()
    cur_counts = pd.Series(current).value_counts().reindex(ref_counts.index, fill_value=0)
    expected = chisquare(cur_counts.to_numpy(), ref_counts.to_numpy() * (300 / 400))
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)

    # Distinct values count over both sides together: 5 in A plus a sixth in B is KS.
    assert numeric_drift("grade", reference, [*current, 6.0]).test == "ks"


# --- numeric tests ------------------------------------------------------------------


def test_ks_matches_scipy_and_separates_same_from_shifted_samples() -> None:
    g = rng()
    reference = g.normal(size=800)
    same = g.normal(size=600)
    shifted = g.normal(loc=0.5, size=600)

    result = numeric_drift("age", reference, same)
    expected = ks_2samp(reference, same)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert (result.threshold, result.drifted) == (0.05, False)
    assert result.p_value > 0.05

    result = numeric_drift("age", reference, shifted)
    assert result.p_value == pytest.approx(ks_2samp(reference, shifted).pvalue)
    assert result.drifted is True
    assert result.p_value < 1e-6


def test_normed_wasserstein_matches_scipy_and_separates_same_from_shifted_samples() -> None:
    g = rng()
    reference = g.normal(loc=100, scale=20, size=20_000)
    same = g.normal(loc=100, scale=20, size=5_000)
    shifted = g.normal(loc=106, scale=20, size=5_000)  # 0.3 reference std away

    result = numeric_drift("spacing", reference, same)
    expected = wasserstein_distance(reference, same) / np.std(reference)
    assert result.statistic == pytest.approx(expected)
    assert (result.test, result.p_value, result.threshold) == ("wasserstein", None, 0.1)
    assert result.drifted is False

    result = numeric_drift("spacing", reference, shifted)
    assert result.statistic == pytest.approx(
        wasserstein_distance(reference, shifted) / 20, rel=0.02
    )
    assert result.drifted is True


def test_a_constant_reference_is_normed_by_the_floor_of_0_001() -> None:
    reference = np.zeros(1500)
    current = np.arange(6, dtype=float)  # six distinct values over both sides
    result = numeric_drift("x", reference, current)
    assert result.test == "wasserstein"
    assert result.statistic == pytest.approx(wasserstein_distance(reference, current) / 0.001)
    assert result.drifted is True


# --- categorical tests --------------------------------------------------------------


def test_chi_squared_matches_a_hand_computed_scipy_call() -> None:
    reference = ["PA"] * 50 + ["AP"] * 30 + ["LL"] * 20
    current = ["PA"] * 20 + ["AP"] * 25 + ["LL"] * 15
    result = categorical_drift("view", reference, current)
    # Keys sorted: AP, LL, PA. Expected = reference count * 60 / 100.
    expected = chisquare([25, 15, 20], [18.0, 12.0, 30.0])
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.statistic == pytest.approx(49 / 18 + 9 / 12 + 100 / 30)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert (result.kind, result.test, result.threshold) == ("categorical", "chi_squared", 0.05)
    assert expected.pvalue == pytest.approx(0.0333, abs=1e-4)
    assert result.drifted is True
    assert (result.reference_rows, result.current_rows) == (100, 60)


def test_chi_squared_agrees_with_pandas_value_counts_on_random_labels() -> None:
    g = rng()
    reference = g.choice(["a", "b", "c", "d"], size=700, p=[0.4, 0.3, 0.2, 0.1])
    current = g.choice(["a", "b", "c", "d"], size=250, p=[0.4, 0.3, 0.2, 0.1])
    shifted = g.choice(["a", "b", "c", "d"], size=250, p=[0.1, 0.2, 0.3, 0.4])

    ref_counts = pd.Series(reference).value_counts().sort_index()
    cur_counts = pd.Series(current).value_counts().reindex(ref_counts.index, fill_value=0)
    expected = chisquare(cur_counts.to_numpy(), ref_counts.to_numpy() * (250 / 700))
    result = categorical_drift("c", list(reference), list(current))
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.drifted is False

    assert categorical_drift("c", list(reference), list(shifted)).drifted is True


def test_a_category_new_in_current_is_certain_drift_under_chi_squared() -> None:
    reference = ["PA"] * 40 + ["AP"] * 60
    current = ["PA"] * 40 + ["AP"] * 59 + ["LL"]
    result = categorical_drift("view", reference, current)
    assert result.test == "chi_squared"
    assert result.statistic == math.inf
    assert (result.p_value, result.drifted) == (0.0, True)

    # A category that only the reference has is an ordinary expected count, not a new
    # support: B observed none of it, and the test is scipy's.
    result = categorical_drift("view", [*reference, "LL"], ["PA"] * 40 + ["AP"] * 60)
    expected = chisquare([60, 0, 40], np.array([60, 1, 40]) * (100 / 101))
    assert result.p_value == pytest.approx(expected.pvalue)


def test_a_single_value_on_both_sides_is_not_drift() -> None:
    result = categorical_drift("modality", ["CT"] * 30, ["CT"] * 4)
    assert (result.test, result.statistic, result.p_value, result.drifted) == (
        "chi_squared",
        0.0,
        1.0,
        False,
    )
    assert numeric_drift("frames", [1.0] * 30, [1.0] * 4).drifted is False


def test_jensen_shannon_keeps_a_category_missing_on_one_side_at_zero() -> None:
    reference = ["PA"] * 700 + ["AP"] * 300 + ["LL"] * 200  # 1200 rows: a distance
    current = ["PA"] * 500 + ["AP"] * 500  # no LL
    result = categorical_drift("view", reference, current)
    assert (result.test, result.p_value, result.threshold) == ("jensen_shannon", None, 0.1)

    keys = ["AP", "LL", "PA"]
    ref_counts = pd.Series(reference).value_counts().reindex(keys, fill_value=0)
    cur_counts = pd.Series(current).value_counts().reindex(keys, fill_value=0)
    ref_shares = (ref_counts / ref_counts.sum()).to_numpy()
    cur_shares = (cur_counts / cur_counts.sum()).to_numpy()
    assert cur_shares[1] == 0.0  # Evidently's Jensen-Shannon fills no zero
    assert result.statistic == pytest.approx(jensenshannon(ref_shares, cur_shares))
    assert result.statistic == pytest.approx(js_by_formula(ref_shares, cur_shares))
    assert result.statistic >= 0.1
    assert result.drifted is True


def test_jensen_shannon_separates_same_from_shifted_large_samples() -> None:
    g = rng()
    views = ["PA", "AP", "LL", "lateral", "other"]
    reference = g.choice(views, size=50_000, p=[0.5, 0.2, 0.1, 0.1, 0.1])
    same = g.choice(views, size=50_000, p=[0.5, 0.2, 0.1, 0.1, 0.1])
    shifted = g.choice(views, size=50_000, p=[0.2, 0.5, 0.1, 0.1, 0.1])
    assert categorical_drift("view", list(reference), list(same)).drifted is False
    assert categorical_drift("view", list(reference), list(shifted)).drifted is True

    few = g.integers(0, 3, size=50_000).astype(float)
    result = numeric_drift("grade", few, g.integers(0, 3, size=40_000))
    assert (result.kind, result.test, result.drifted) == ("numeric", "jensen_shannon", False)
    assert numeric_drift("grade", few, np.full(1000, 2.0)).drifted is True


# --- missing values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "current", "reason"),
    [
        ([], [1.0, 2.0], "no values in A"),
        ([1.0, 2.0], [None, float("nan")], "no values in B"),
        ([None], [], "no values in A or B"),
    ],
)
def test_an_empty_side_gives_no_test_and_says_why(
    reference: list[float | None], current: list[float | None], reason: str
) -> None:
    result = numeric_drift("x", reference, current)
    assert result == FeatureDrift(
        "x",
        "numeric",
        "none",
        None,
        None,
        None,
        None,
        len([v for v in reference if v is not None and v == v]),
        len([v for v in current if v is not None and v == v]),
        reason,
    )
    labels = [None if v is None or v != v else str(v) for v in reference]
    other = [None if v is None or v != v else str(v) for v in current]
    result = categorical_drift("x", labels, other)
    assert (result.kind, result.test, result.drifted, result.reason) == (
        "categorical",
        "none",
        None,
        reason,
    )


def test_missing_values_are_dropped_before_testing() -> None:
    g = rng()
    reference = g.normal(size=300)
    current = g.normal(size=200)
    clean = numeric_drift("x", reference, current)
    dirty = numeric_drift(
        "x",
        [None, *reference.tolist(), float("nan"), math.inf],
        [*current.tolist(), None, -math.inf],
    )
    assert dirty == clean
    assert (dirty.reference_rows, dirty.current_rows) == (300, 200)

    labels = ["PA"] * 10 + ["AP"] * 5
    clean = categorical_drift("view", labels, ["PA", "AP", "AP"])
    dirty = categorical_drift(
        "view",
        [*labels, None],
        ["PA", None, "AP", float("nan"), "AP"],  # type: ignore[list-item]  # pandas' missing
    )
    assert dirty == clean
    assert (dirty.reference_rows, dirty.current_rows) == (15, 3)


def test_pandas_series_with_missing_values_are_accepted() -> None:
    reference = pd.Series(["PA", None, "AP", "PA"], dtype="object")
    current = pd.Series(["PA", "AP", None], dtype="object")
    result = categorical_drift("view", reference.tolist(), current.tolist())
    assert (result.reference_rows, result.current_rows) == (3, 2)
    numbers = numeric_drift("x", pd.Series([1.0, None, 2.0]), pd.Series([2.0, 3.0]))
    assert (numbers.reference_rows, numbers.current_rows) == (2, 2)


# --- the result ---------------------------------------------------------------------


def test_results_are_frozen() -> None:
    result = numeric_drift("x", [1.0, 2.0], [1.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.drifted = False  # type: ignore[misc]


def test_as_dict_is_strict_json_for_every_kind_of_result() -> None:
    g = rng()
    results = [
        numeric_drift("ks", g.normal(size=100), g.normal(size=100)),
        numeric_drift("wd", g.normal(size=2000), g.normal(size=100)),
        categorical_drift("chi", ["a", "b"] * 10, ["a", "b", "c"]),  # statistic inf
        categorical_drift("js", ["a", "b"] * 600, ["a"] * 10),
        categorical_drift("empty", [], ["a"]),
    ]
    for result in results:
        text = json.dumps(result.as_dict(), allow_nan=False)
        back = json.loads(text)
        assert set(back) == {f.name for f in dataclasses.fields(FeatureDrift)}
        assert back["feature"] == result.feature
        assert back["drifted"] == result.drifted
    assert results[2].as_dict()["statistic"] == "inf"
    assert results[2].as_dict()["p_value"] == 0.0
    assert results[4].as_dict()["statistic"] is None
    assert results[4].as_dict()["reason"] == "no values in A"
    assert results[0].as_dict()["statistic"] == results[0].statistic
