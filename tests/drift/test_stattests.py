"""The drift statistics, checked against scipy/numpy and against values worked out by hand."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from modelrun.drift.stattests import TESTS, Column, get_test
from modelrun.errors import InvalidInput


def num(values, *, counted: bool = True, sample=None) -> Column:
    """A numerical side holding `values` (counts when `counted` and at most 64 distinct); `sample` replaces
    the stored values by a subset, as the profile does for large sides."""
    values = np.asarray(values, dtype=float)
    counts = Counter(values.tolist())
    return Column("numerical", len(values), values if sample is None else np.asarray(sample, dtype=float),
                  dict(counts) if counted and len(counts) <= 64 else None,
                  float(values.min()) if len(values) else None, float(values.max()) if len(values) else None)


def cat(counts: dict) -> Column:
    return Column("categorical", sum(counts.values()), counts={str(k): v for k, v in counts.items()})


EMPTY_NUM = Column("numerical", 0, np.array([]), {})
EMPTY_CAT = Column("categorical", 0, counts={})


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


# --- Evidently's tests -------------------------------------------------------------------------------------

def test_ks_is_scipys_two_sided_p_value():
    ref, near, far = np.arange(1.0, 21.0), np.arange(3.0, 23.0), np.arange(12.0, 32.0)
    for cur in (near, far):
        assert TESTS["ks"].fn(num(ref), num(cur)) == pytest.approx(stats.ks_2samp(ref, cur).pvalue, rel=1e-12)
    assert not TESTS["ks"].drifted(TESTS["ks"].fn(num(ref), num(near)))  # largest CDF gap 2/20
    assert TESTS["ks"].drifted(TESTS["ks"].fn(num(ref), num(far)))  # largest CDF gap 11/20


def test_chisquare_against_the_reference_scaled_to_the_current_size():
    # expected = ref share * 50 = 25, 15, 10; chi2 = 25/25 + 25/15 + 0 = 8/3 on 2 degrees of freedom,
    # whose survival function is exp(-chi2 / 2)
    p = TESTS["chisquare"].fn(cat({"a": 50, "b": 30, "c": 20}), cat({"a": 20, "b": 20, "c": 10}))
    assert p == pytest.approx(math.exp(-4 / 3), rel=1e-12)


def test_chisquare_with_a_value_the_reference_never_had_is_certain_drift():
    # expected count 0 for "d": scipy's statistic is infinite, p = 0
    p = TESTS["chisquare"].fn(cat({"a": 50, "b": 50}), cat({"a": 10, "b": 10, "d": 1}))
    assert p == 0.0 and TESTS["chisquare"].drifted(p)


def test_chisquare_on_numerical_counts():
    ref, cur = [1.0] * 10 + [2.0] * 10 + [3.0] * 5, [1.0] * 4 + [2.0] * 8 + [3.0] * 8
    expected = np.array([10, 10, 5]) * 20 / 25
    assert TESTS["chisquare"].fn(num(ref), num(cur)) == pytest.approx(
        stats.chisquare([4, 8, 8], expected).pvalue, rel=1e-12)


def test_z_is_the_pooled_two_proportion_test_on_value_other_than_the_smallest():
    # indicator "!= a": p1 = 70/100, p2 = 40/50, pooled = 110/150
    p1, p2, pooled = 0.7, 0.8, 110 / 150
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 50))
    p = TESTS["z"].fn(cat({"a": 30, "b": 70}), cat({"a": 10, "b": 40}))
    assert p == pytest.approx(2 * (1 - phi(abs(z))), rel=1e-9)
    assert p == pytest.approx(0.1917, abs=1e-4)


def test_z_takes_the_smallest_number_when_categories_are_integers():
    # "9" < "10" as numbers (Evidently sorts the original integers), not as strings
    ref, cur = cat({9: 20, 10: 50, 11: 30}), cat({9: 40, 10: 30, 11: 30})
    p1, p2 = 80 / 100, 60 / 100  # share of values other than 9
    pooled = 140 / 200
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert TESTS["z"].fn(ref, cur) == pytest.approx(2 * (1 - phi(abs(z))), rel=1e-9)


def test_z_with_two_different_single_values():
    p = TESTS["z"].fn(cat({"a": 10}), cat({"b": 10}))
    z = -1 / math.sqrt(0.25 * (1 / 10 + 1 / 10))
    assert p == pytest.approx(2 * (1 - phi(abs(z))), rel=1e-9) and p < 1e-4


def test_wasserstein_is_normed_by_the_population_std_of_the_reference():
    # the distance between 0..4 and 1..5 is 1; the population std of 0..4 is sqrt(2)
    score = TESTS["wasserstein"].fn(num([0, 1, 2, 3, 4]), num([1, 2, 3, 4, 5]))
    assert score == pytest.approx(1 / math.sqrt(2), rel=1e-12)


def test_wasserstein_on_a_constant_reference_divides_by_one_thousandth():
    assert TESTS["wasserstein"].fn(num([3, 3, 3]), num([3, 3, 4])) == pytest.approx((1 / 3) / 0.001)


def test_jensenshannon_is_the_natural_log_distance_of_the_category_shares():
    p, q = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    m = (p + q) / 2
    by_hand = math.sqrt((np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m))) / 2)
    score = TESTS["jensenshannon"].fn(cat({"a": 5, "b": 5}), cat({"a": 8, "b": 2}))
    assert score == pytest.approx(by_hand, rel=1e-12)
    assert score == pytest.approx(distance.jensenshannon(p, q), rel=1e-12)


def test_jensenshannon_of_disjoint_categories_is_its_maximum():
    assert TESTS["jensenshannon"].fn(cat({"a": 3}), cat({"b": 4})) == pytest.approx(math.sqrt(math.log(2)))


def test_more_than_20_distinct_reference_values_use_sturges_bins_over_both_sides():
    ref, cur = np.arange(30.0), np.arange(10.0, 40.0) + 0.5
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    r, c = np.histogram(ref, edges)[0] / 30, np.histogram(cur, edges)[0] / 30
    assert TESTS["jensenshannon"].fn(num(ref), num(cur)) == pytest.approx(distance.jensenshannon(r, c), rel=1e-12)
    r[r == 0], c[c == 0] = 1e-4, 1e-4
    assert TESTS["psi"].fn(num(ref), num(cur)) == pytest.approx(np.sum((r - c) * np.log(r / c)), rel=1e-12)


def test_sturges_bins_from_samples_use_the_exact_range_and_count():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 400), rng.normal(0.3, 1, 300)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    ref_sample = np.concatenate([[ref.min(), ref.max()], rng.choice(ref, 98, replace=False)])
    cur_sample = np.concatenate([[cur.min(), cur.max()], rng.choice(cur, 98, replace=False)])
    r, c = np.histogram(ref_sample, edges)[0] / 100, np.histogram(cur_sample, edges)[0] / 100
    score = TESTS["jensenshannon"].fn(num(ref, sample=ref_sample), num(cur, sample=cur_sample))
    assert score == pytest.approx(distance.jensenshannon(r, c), rel=1e-12)


def test_few_distinct_reference_values_get_one_bucket_per_value_of_the_union():
    # reference 1,1,2,3 and current 2,2,3,4: shares over 1,2,3,4
    p, q = np.array([0.5, 0.25, 0.25, 0.0]), np.array([0.0, 0.5, 0.25, 0.25])
    score = TESTS["jensenshannon"].fn(num([1, 1, 2, 3]), num([2, 2, 3, 4]))
    assert score == pytest.approx(distance.jensenshannon(p, q), rel=1e-12)


def test_per_value_buckets_count_the_values_when_a_side_has_too_many_to_count():
    cur_values = np.concatenate([np.arange(100.0), [1.0] * 100])
    counted = Column("numerical", 200, cur_values, dict(Counter(cur_values.tolist())), 0.0, 99.0)
    uncounted = num(cur_values, counted=False)
    ref = num([1, 2, 3, 1, 2])
    assert uncounted.counts is None
    assert TESTS["psi"].fn(ref, uncounted) == pytest.approx(TESTS["psi"].fn(ref, counted), rel=1e-12)


def test_psi_fills_empty_buckets_with_1e_4_per_side():
    # reference shares .6 .4 0 (the empty "c" becomes 1e-4, no renormalising); current .5 .3 .2
    by_hand = (0.6 - 0.5) * math.log(0.6 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3) \
        + (1e-4 - 0.2) * math.log(1e-4 / 0.2)
    psi = TESTS["psi"].fn(cat({"a": 60, "b": 40}), cat({"a": 50, "b": 30, "c": 20}))
    assert psi == pytest.approx(by_hand, rel=1e-12)


def test_psi_fills_with_a_millionth_of_the_smallest_share_when_that_is_tiny():
    # reference: smallest share 1/20000 = 5e-5 <= 1e-4, so its empty "c" becomes 5e-11;
    # current: smallest share 0.25, so its empty "b" becomes 1e-4
    r = {"a": 19999 / 20000, "b": 1 / 20000, "c": 5e-11}
    c = {"a": 0.75, "b": 1e-4, "c": 0.25}
    by_hand = sum((r[k] - c[k]) * math.log(r[k] / c[k]) for k in r)
    psi = TESTS["psi"].fn(cat({"a": 19999, "b": 1}), cat({"a": 3, "c": 1}))
    assert psi == pytest.approx(by_hand, rel=1e-12)


# --- Vertex's tests ----------------------------------------------------------------------------------------

def test_linf_is_the_largest_share_difference_each_side_normalised_alone():
    # shares: reference a .6 b .4; current a .3 b .3 c .4 -> differences .3, .1, .4
    assert TESTS["linf"].fn(cat({"a": 6, "b": 4}), cat({"a": 3, "b": 3, "c": 4})) == pytest.approx(0.4)


def test_js_divergence_rebuckets_histograms_with_different_edges():
    # reference 0..10: one value in each of its 10 unit buckets; current 0..5: one in each half-unit bucket.
    # On the union of edges (every 0.5) the reference spreads each unit bucket evenly over two halves:
    # p = .05 on all 20 intervals, q = .1 on the first 10; m = .075 there and .025 on the rest.
    ref = [0, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 10]
    cur = [0, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2, 3.7, 4.2, 5]
    kl_p = 0.5 * math.log2(0.05 / 0.075) + 0.5 * math.log2(0.05 / 0.025)
    kl_q = math.log2(0.1 / 0.075)
    score = TESTS["js_divergence"].fn(num(ref), num(cur))
    assert score == pytest.approx((kl_p + kl_q) / 2, rel=1e-12)
    assert score == pytest.approx(0.3113, abs=1e-4) and TESTS["js_divergence"].drifted(score)
    p, q = np.full(20, 0.05), np.r_[np.full(10, 0.1), np.zeros(10)]
    assert score == pytest.approx(distance.jensenshannon(p, q) ** 2 / math.log(2), rel=1e-12)


def test_js_divergence_with_the_same_edges_compares_bucket_by_bucket():
    ref, cur = np.arange(0.0, 10.5, 0.5), np.r_[np.arange(0.0, 10.5, 0.5), [9.9] * 21]
    p = np.histogram(ref, bins=10, range=(0, 10))[0] / 21
    q = np.histogram(cur, bins=10, range=(0, 10))[0] / 42
    score = TESTS["js_divergence"].fn(num(ref), num(cur))
    assert score == pytest.approx(distance.jensenshannon(p, q) ** 2 / math.log(2), rel=1e-12)


def test_js_divergence_treats_a_constant_side_as_its_own_point_bucket():
    spread = num(np.linspace(0, 10, 50))
    assert TESTS["js_divergence"].fn(num([5.0] * 20), spread) == pytest.approx(1.0)
    assert TESTS["js_divergence"].fn(num([5.0] * 20), num([5.0] * 3)) == 0.0
    assert TESTS["js_divergence"].fn(num([5.0] * 20), num([6.0] * 3)) == pytest.approx(1.0)


# --- degenerate inputs -------------------------------------------------------------------------------------

NUMERICAL_TESTS = ["ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi", "js_divergence"]
CATEGORICAL_TESTS = ["chisquare", "z", "jensenshannon", "psi", "linf"]


@pytest.mark.parametrize("name", NUMERICAL_TESTS)
def test_a_constant_column_on_both_sides_is_no_drift(name):
    test = TESTS[name]
    score = test.fn(num([2.0] * 30), num([2.0] * 7))
    assert score == (1.0 if test.score_is == "p_value" else 0.0)
    assert not test.drifted(score)


@pytest.mark.parametrize("name", CATEGORICAL_TESTS)
def test_one_category_on_both_sides_is_no_drift(name):
    test = TESTS[name]
    score = test.fn(cat({"x": 30}), cat({"x": 7}))
    assert score == (1.0 if test.score_is == "p_value" else 0.0) and not test.drifted(score)


@pytest.mark.parametrize("name", CATEGORICAL_TESTS)
def test_one_side_all_one_value_the_other_not_is_drift(name):
    test = TESTS[name]
    score = test.fn(cat({"x": 200}), cat({"x": 20, "y": 180}))
    assert math.isfinite(score) and test.drifted(score)


@pytest.mark.parametrize("name", NUMERICAL_TESTS)
def test_a_side_without_values_gives_the_no_drift_value(name):
    test = TESTS[name]
    full = num([1.0, 2.0, 3.0, 4.0])
    for ref, cur in ((EMPTY_NUM, full), (full, EMPTY_NUM)):
        score = test.fn(ref, cur)
        assert score == (1.0 if test.score_is == "p_value" else 0.0) and not test.drifted(score)


@pytest.mark.parametrize("name", CATEGORICAL_TESTS)
def test_a_categorical_side_without_values_gives_the_no_drift_value(name):
    test = TESTS[name]
    assert not test.drifted(test.fn(EMPTY_CAT, cat({"a": 3}))) and not test.drifted(test.fn(cat({"a": 3}), EMPTY_CAT))


# --- the registry ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,threshold,at_threshold,kinds", [
    ("ks", 0.05, True, {"numerical"}),  # p <= 0.05
    ("chisquare", 0.05, False, {"numerical", "categorical"}),  # p < 0.05
    ("z", 0.05, False, {"numerical", "categorical"}),  # p < 0.05
    ("wasserstein", 0.1, True, {"numerical"}),  # score >= 0.1
    ("jensenshannon", 0.1, True, {"numerical", "categorical"}),  # score >= 0.1
    ("psi", 0.1, True, {"numerical", "categorical"}),  # score >= 0.1
    ("linf", 0.3, False, {"categorical"}),  # score > 0.3
    ("js_divergence", 0.3, False, {"numerical"}),  # score > 0.3
])
def test_defaults_and_the_comparison_at_the_threshold(name, threshold, at_threshold, kinds):
    test = get_test(name)
    assert (test.name, test.threshold, set(test.kinds)) == (name, threshold, kinds)
    assert test.drifted(threshold) is at_threshold
    small, large = threshold * 0.99, threshold * 1.01
    assert test.drifted(small) is (test.score_is == "p_value")
    assert test.drifted(large) is (test.score_is == "distance")
    assert test.drifted(0.5, threshold=0.5) is at_threshold  # an override uses the same comparison
    assert test.drifted(float("nan")) is False


def test_unknown_test_names_the_valid_ones():
    with pytest.raises(InvalidInput) as error:
        get_test("kolmogorov")
    assert error.value.message == ("unknown test 'kolmogorov'; valid tests: chisquare, jensenshannon, "
                                   "js_divergence, ks, linf, psi, wasserstein, z")
    assert error.value.http_status == 400
