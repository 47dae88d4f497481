"""Per-feature drift between two samples of a feature: A (reference) and B (current).

The dashboard's Drift page (issue 14) compares one cohort or time window (A) with
another (B) feature by feature. For every feature this module picks a test, runs it
and gives a verdict; it is pure statistics over numpy arrays and knows nothing of the
catalog.

The choice of test follows Evidently's default stattest choice (Evidently is the
reference for these defaults; it is not a dependency), with the issue's one change:
chi-squared also for categorical features with two or fewer values, where Evidently
would use a z-test for proportions. Missing values (None, NaN; for numeric features
also +-inf) are dropped from each side first, and "rows" below counts what remains.
``n_unique`` is the number of distinct values over both sides together.

==============  ===================  ==============  ==================  =========
feature         reference rows       n_unique        test                drift when
==============  ===================  ==============  ==================  =========
numeric         <= DRIFT_ROWS        > 5             Kolmogorov-Smirnov  p <= 0.05
numeric         <= DRIFT_ROWS        <= 5            chi-squared         p < 0.05
numeric         > DRIFT_ROWS         > 5             Wasserstein (norm)  d >= 0.1
numeric         > DRIFT_ROWS         <= 5            Jensen-Shannon      d >= 0.1
categorical     <= DRIFT_ROWS        any             chi-squared         p < 0.05
categorical     > DRIFT_ROWS         any             Jensen-Shannon      d >= 0.1
==============  ===================  ==============  ==================  =========

- Kolmogorov-Smirnov: ``scipy.stats.ks_2samp(A, B)``; the statistic is D.
- Wasserstein (normed): ``wasserstein_distance(A, B) / max(std(A), 0.001)``, so the
  distance is in units of the reference's standard deviation.
- chi-squared: goodness of fit of B's counts to A's shares. Keys are the sorted union
  of the values of both sides; expected = A's count * len(B) / len(A), observed = B's
  count, ``scipy.stats.chisquare(observed, expected)``. Two cases scipy cannot score
  are decided here instead: a value seen in B but never in A has an expected count of
  0, so the two distributions differ in support and the verdict is certain drift
  (statistic inf, p-value 0.0); a single value on both sides leaves the test no degree
  of freedom and the two samples identical (statistic 0.0, p-value 1.0, no drift).
- Jensen-Shannon: the share of each key over the union (count / rows) per side, zeros
  kept (Evidently's stattest calls ``get_binned_data`` with its zero fill off), then
  ``scipy.spatial.distance.jensenshannon`` with its natural-log base. Numeric features
  with few values are binned as categories over their distinct values.

The thresholds' sides are Evidently's: KS drifts at p <= 0.05, chi-squared at
p < 0.05, the distances at >= 0.1.

Each result is a verdict for one feature only: p-values are not corrected for the
number of features compared, and a distance is not a probability. An empty side is
not an error: its result has test "none", no statistic and no verdict, and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]
from scipy.stats import chisquare, ks_2samp, wasserstein_distance  # type: ignore[import-untyped]

DRIFT_ROWS = 1000
"""The reference size above which distances replace p-value tests (Evidently's default)."""

P_VALUE_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
FEW_VALUES = 5
"""Numeric features with at most this many distinct values are tested as categories."""

FeatureKind = Literal["numeric", "categorical"]
TestName = Literal["ks", "wasserstein", "chi_squared", "jensen_shannon", "none"]
NumericValues = ArrayLike | Sequence[float | None]
"""Numbers as numpy reads them; None (a missing value, as a catalog query gives it) reads as NaN."""


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """The drift test of one feature between A (reference) and B (current).

    ``p_value`` is set for "ks" and "chi_squared", None for the distances.
    ``statistic`` is KS D, the chi-squared statistic (inf when B has a value A never
    has), or the distance. For test "none" (a side with no values) statistic,
    p_value, threshold and drifted are None and ``reason`` says why.
    """

    feature: str
    kind: FeatureKind
    test: TestName
    statistic: float | None
    p_value: float | None
    threshold: float | None
    drifted: bool | None
    reference_rows: int
    current_rows: int
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The result as JSON-ready values.

        Strict JSON has no infinity, so an infinite statistic (chi-squared with a
        value new in B) becomes the string "inf" (kept rather than None so the page
        can still show "infinite" as against "not computed"); a NaN, which no test
        here produces, would become None.
        """
        return {
            "feature": self.feature,
            "kind": self.kind,
            "test": self.test,
            "statistic": _json_number(self.statistic),
            "p_value": _json_number(self.p_value),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "reason": self.reason,
        }


def numeric_drift(feature: str, reference: NumericValues, current: NumericValues) -> FeatureDrift:
    """Drift of a numeric feature from `reference` (A) to `current` (B).

    None, NaN and +-inf are dropped from each side first. See the module docstring
    for the choice of test.

    Raises:
        ValueError, TypeError: values numpy cannot read as float64 (for example
            strings that are not numbers); use `categorical_drift` for those.
    """
    ref = _finite(reference)
    cur = _finite(current)
    empty = _empty(feature, "numeric", ref.size, cur.size)
    if empty is not None:
        return empty
    values = np.unique(np.concatenate([ref, cur]))
    if values.size <= FEW_VALUES:
        # Evidently bins few-valued numbers as categories over their distinct values.
        ref_counts = np.bincount(np.searchsorted(values, ref), minlength=values.size)
        cur_counts = np.bincount(np.searchsorted(values, cur), minlength=values.size)
        return _counts_drift(feature, "numeric", ref_counts, cur_counts)
    if ref.size <= DRIFT_ROWS:
        result = ks_2samp(ref, cur)
        p_value = float(result.pvalue)
        return FeatureDrift(
            feature,
            "numeric",
            "ks",
            float(result.statistic),
            p_value,
            P_VALUE_THRESHOLD,
            p_value <= P_VALUE_THRESHOLD,
            ref.size,
            cur.size,
        )
    norm = max(float(np.std(ref)), 0.001)
    distance = float(wasserstein_distance(ref, cur)) / norm
    return FeatureDrift(
        feature,
        "numeric",
        "wasserstein",
        distance,
        None,
        DISTANCE_THRESHOLD,
        distance >= DISTANCE_THRESHOLD,
        ref.size,
        cur.size,
    )


def categorical_drift(
    feature: str, reference: Sequence[str | None], current: Sequence[str | None]
) -> FeatureDrift:
    """Drift of a categorical feature from `reference` (A) to `current` (B).

    None (and NaN, as pandas gives for missing strings) are dropped from each side
    first; other values are compared as their ``str``. See the module docstring for
    the choice of test. Does not raise.
    """
    ref = _labels(reference)
    cur = _labels(current)
    empty = _empty(feature, "categorical", ref.size, cur.size)
    if empty is not None:
        return empty
    ref_keys, ref_counts = np.unique(ref, return_counts=True)
    cur_keys, cur_counts = np.unique(cur, return_counts=True)
    keys = np.union1d(ref_keys, cur_keys)
    return _counts_drift(
        feature,
        "categorical",
        _spread(keys, ref_keys, ref_counts),
        _spread(keys, cur_keys, cur_counts),
    )


def _counts_drift(
    feature: str, kind: FeatureKind, ref_counts: NDArray[np.int64], cur_counts: NDArray[np.int64]
) -> FeatureDrift:
    """Chi-squared or Jensen-Shannon over per-key counts aligned on the same keys."""
    ref_rows = int(ref_counts.sum())
    cur_rows = int(cur_counts.sum())
    if ref_rows > DRIFT_ROWS:
        distance = float(jensenshannon(_shares(ref_counts), _shares(cur_counts)))
        return FeatureDrift(
            feature,
            kind,
            "jensen_shannon",
            distance,
            None,
            DISTANCE_THRESHOLD,
            distance >= DISTANCE_THRESHOLD,
            ref_rows,
            cur_rows,
        )
    expected = ref_counts * (cur_rows / ref_rows)
    if np.any(expected == 0):
        # Keys are the union of both sides, so a zero expected count is a value seen
        # in B and never in A: the supports differ, which is drift for certain.
        # scipy would divide by zero here (inf statistic, NaN p-value, a warning).
        statistic, p_value = math.inf, 0.0
    elif ref_counts.size == 1:
        # One value on both sides: identical samples, and no degree of freedom for
        # scipy (which would answer a NaN p-value).
        statistic, p_value = 0.0, 1.0
    else:
        result = chisquare(cur_counts, expected)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return FeatureDrift(
        feature,
        kind,
        "chi_squared",
        statistic,
        p_value,
        P_VALUE_THRESHOLD,
        p_value < P_VALUE_THRESHOLD,  # Evidently's side; KS drifts at <=
        ref_rows,
        cur_rows,
    )


def _shares(counts: NDArray[np.int64]) -> NDArray[np.float64]:
    """Share of each key (zeros kept, as Evidently's Jensen-Shannon keeps them)."""
    shares: NDArray[np.float64] = counts.astype(np.float64) / float(counts.sum())
    return shares


def _spread(
    keys: NDArray[np.str_], present: NDArray[np.str_], counts: NDArray[np.intp]
) -> NDArray[np.int64]:
    """`counts` of the sorted `present` keys placed on the sorted union `keys` (0 elsewhere)."""
    spread = np.zeros(keys.size, dtype=np.int64)
    spread[np.searchsorted(keys, present)] = counts
    return spread


def _finite(values: NumericValues) -> NDArray[np.float64]:
    """The finite values of `values` as a flat float64 array (None reads as NaN)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _labels(values: Sequence[str | None]) -> NDArray[np.str_]:
    """The non-missing values as a numpy string array (None and NaN dropped)."""
    array = np.asarray(values, dtype=object).ravel()
    # None != None is False and NaN == NaN is False: together they drop both.
    keep = np.not_equal(array, np.array(None, dtype=object)) & np.equal(array, array)
    labels: NDArray[np.str_] = array[keep].astype(np.str_)
    return labels


def _empty(feature: str, kind: FeatureKind, ref_rows: int, cur_rows: int) -> FeatureDrift | None:
    """The "none" result when a side has no values; None when both have some."""
    if ref_rows and cur_rows:
        return None
    if not ref_rows and not cur_rows:
        reason = "no values in A or B"
    elif not ref_rows:
        reason = "no values in A"
    else:
        reason = "no values in B"
    return FeatureDrift(feature, kind, "none", None, None, None, None, ref_rows, cur_rows, reason)


def _json_number(value: float | None) -> float | str | None:
    """`value` for strict JSON: inf as "inf" / "-inf", NaN as None."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return None
    return "inf" if value > 0 else "-inf"
