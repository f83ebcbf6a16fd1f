"""Statistical drift tests: a registry of pure functions, each with its default threshold (design 3.4).

Every test compares two `Column`s, the reference (training data) and the production window, and returns
one float: a p-value (drift when it is small) or a distance (drift when it is large). `StatTest.drifted`
applies the threshold with the comparison the original tool uses (`<=`, `<`, `>=` or `>`).

The Evidently tests (ks, chisquare, z, wasserstein, jensenshannon, psi) reproduce Evidently 0.7's numbers
on the same non-missing values; the Vertex tests (linf, js_divergence) reproduce Vertex AI Model
Monitoring's skew scores. Where a test is undefined (a side with no values, a single value in the union
for a chi-square test) it returns the no-drift value of its kind, 1.0 for p-values and 0.0 for distances;
callers report "not enough data" themselves.
"""

from __future__ import annotations

import functools
import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats
from scipy.spatial import distance

from modelrun.errors import InvalidInput

NUMERICAL, CATEGORICAL = "numerical", "categorical"
BOTH = frozenset({NUMERICAL, CATEGORICAL})


@dataclass(frozen=True)
class Column:
    """One side (reference or production) of one feature, as the tests see it. Missing values (None/NaN/±inf)
    are already excluded from everything below."""

    kind: str  # "numerical" | "categorical"
    n: int  # number of non-missing values, exact
    values: np.ndarray | None = None  # numerical: float64 values, all of them or a uniform sample (len <= n)
    counts: dict | None = None  # exact count per distinct value (categorical: str keys; numerical: float keys,
    #                             None when the numerical side has more distinct values than are counted)
    minimum: float | None = None  # numerical: exact min / max of all non-missing values
    maximum: float | None = None


_OPS = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}


@dataclass(frozen=True)
class StatTest:
    name: str
    title: str
    kinds: frozenset
    threshold: float
    drift_when: str  # "lt" | "le" | "gt" | "ge": drifted when score <op> threshold
    score_is: str  # "p_value" | "distance"
    fn: Callable[[Column, Column], float]

    def drifted(self, score: float, threshold: float | None = None) -> bool:
        """Whether `score` means drift against `threshold` (the test's default when None). NaN never does."""
        limit = self.threshold if threshold is None else threshold
        return not math.isnan(score) and bool(_OPS[self.drift_when](score, limit))


def _no_drift_when_empty(value: float):
    """A side without values carries no evidence: return the no-drift `value` instead of failing."""

    def wrap(fn):
        @functools.wraps(fn)
        def test(ref: Column, cur: Column) -> float:
            return value if ref.n == 0 or cur.n == 0 else float(fn(ref, cur))

        return test

    return wrap


def _value_counts(col: Column) -> tuple[dict, int]:
    """Counts per distinct value and their total: the exact `counts`, or those of `values` when the side had
    too many distinct values to count (exact again when `values` holds every value)."""
    if col.counts is not None:
        return col.counts, sum(col.counts.values())
    if col.values is None:
        raise ValueError(f"a {col.kind} column needs counts or values")
    return Counter(col.values.tolist()), len(col.values)


def _ordered(keys) -> list:
    """Keys in ascending order: numerically when every key reads as a number (categorical integer columns
    arrive as strings), otherwise as strings."""
    try:
        return sorted(keys, key=float)
    except (TypeError, ValueError):
        return sorted(keys, key=str)


def _shares_per_value(ref: Column, cur: Column) -> tuple[np.ndarray, np.ndarray]:
    """One bucket per distinct value of the union; share = count / side total."""
    (rc, rn), (cc, cn) = _value_counts(ref), _value_counts(cur)
    keys = _ordered(set(rc) | set(cc))
    return (np.array([rc.get(k, 0) / rn for k in keys], dtype=float),
            np.array([cc.get(k, 0) / cn for k in keys], dtype=float))


def _sturges_edges(ref: Column, cur: Column) -> np.ndarray:
    """numpy's "sturges" bin edges over the combined values. With every value present this is
    `np.histogram_bin_edges(concat, "sturges")` itself; with samples, the same formula on the exact
    combined min, max and count."""
    if len(ref.values) == ref.n and len(cur.values) == cur.n:
        return np.histogram_bin_edges(np.concatenate([ref.values, cur.values]), bins="sturges")
    low, high = min(ref.minimum, cur.minimum), max(ref.maximum, cur.maximum)
    width = (high - low) / (np.log2(ref.n + cur.n) + 1.0)
    return np.linspace(low, high, int(np.ceil((high - low) / width)) + 1)


def evidently_buckets(ref: Column, cur: Column) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's buckets for PSI and Jensen-Shannon: a numerical column with more than 20 distinct reference
    values gets equal-width Sturges bins over the combined min..max (numpy convention: half-open bins, the last
    one closed); anything else gets one bucket per distinct value of reference+current. Returns the shares
    (count / side length) of reference and current, unfilled."""
    if ref.kind == NUMERICAL and (ref.counts is None or len(ref.counts) > 20):
        edges = _sturges_edges(ref, cur)
        return (np.histogram(ref.values, edges)[0] / len(ref.values),
                np.histogram(cur.values, edges)[0] / len(cur.values))
    return _shares_per_value(ref, cur)


def _fill_empty(shares: np.ndarray) -> np.ndarray:
    """Evidently's PSI filling, per side and without renormalising: empty buckets get min(non-zero share)/1e6
    when that minimum is <= 1e-4, else 1e-4."""
    smallest = shares[shares > 0].min()
    return np.where(shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, shares)


@_no_drift_when_empty(1.0)
def ks(ref: Column, cur: Column) -> float:
    """Two-sample Kolmogorov-Smirnov test, two-sided: scipy `ks_2samp(ref, cur).pvalue`."""
    return stats.ks_2samp(ref.values, cur.values).pvalue


@_no_drift_when_empty(1.0)
def chisquare(ref: Column, cur: Column) -> float:
    """Chi-square goodness of fit of the current counts against the reference scaled to the current size: over
    the union of values, expected = ref_count * n_cur / n_ref, observed = cur_count, p from scipy `chisquare`.
    A value never seen in the reference has expected 0: scipy's statistic is then infinite and p is 0.0
    (returned directly). A union of one value leaves no degree of freedom (scipy: NaN); returns 1.0."""
    (rc, rn), (cc, cn) = _value_counts(ref), _value_counts(cur)
    keys = list(set(rc) | set(cc))
    if len(keys) == 1:
        return 1.0
    scale = cn / rn
    expected = [rc.get(k, 0) * scale for k in keys]
    observed = [cc.get(k, 0) for k in keys]
    if any(e == 0 and o > 0 for e, o in zip(expected, observed)):
        return 0.0
    return stats.chisquare(observed, expected).pvalue


@_no_drift_when_empty(1.0)
def z(ref: Column, cur: Column) -> float:
    """Pooled two-proportion Z test on the indicator "value != the smallest value of the union", two-sided:
    p = 2 * (1 - Phi(|z|)). Both sides holding one and the same value gives 1.0."""
    (rc, rn), (cc, cn) = _value_counts(ref), _value_counts(cur)
    keys = _ordered(set(rc) | set(cc))
    if len(keys) == 1:
        return 1.0
    p1 = float(rn - rc.get(keys[0], 0)) / rn
    p2 = float(cn - cc.get(keys[0], 0)) / cn
    pooled = float(p1 * rn + p2 * cn) / (rn + cn)
    statistic = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / rn + 1.0 / cn))
    return 2 * (1 - stats.norm.cdf(np.abs(statistic)))


@_no_drift_when_empty(0.0)
def wasserstein(ref: Column, cur: Column) -> float:
    """First Wasserstein distance in units of the reference's spread: scipy `wasserstein_distance(ref, cur)`
    / max(population std of ref (ddof 0), 0.001)."""
    return wasserstein_distance(ref.values, cur.values) / max(float(np.std(ref.values)), 0.001)


def wasserstein_distance(u: np.ndarray, v: np.ndarray) -> float:
    """The first Wasserstein distance of two samples, the integral of |F_u - F_v|, as scipy's
    `wasserstein_distance` defines it (equal to it up to rounding), in one merge of the sorted samples:
    a stable sort of two sorted runs costs little more than reading them, where scipy sorts the union and
    binary-searches it twice. It matters for a million production values."""
    u, v = np.sort(np.asarray(u, dtype=np.float64)), np.sort(np.asarray(v, dtype=np.float64))
    both = np.concatenate([u, v])
    order = np.argsort(both, kind="stable")
    from_u = order < len(u)
    steps = np.diff(both[order])
    u_cdf = np.cumsum(from_u[:-1]) / len(u)
    v_cdf = np.cumsum(~from_u[:-1]) / len(v)
    return float(np.dot(np.abs(u_cdf - v_cdf), steps))


@_no_drift_when_empty(0.0)
def jensenshannon(ref: Column, cur: Column) -> float:
    """Jensen-Shannon distance (the square root of the divergence, natural log, 0..sqrt(ln 2) = 0.833) of
    Evidently's buckets, no filling: scipy `spatial.distance.jensenshannon(ref_share, cur_share)`."""
    return distance.jensenshannon(*evidently_buckets(ref, cur))


@_no_drift_when_empty(0.0)
def psi(ref: Column, cur: Column) -> float:
    """Population stability index over Evidently's buckets, empty buckets filled (see `_fill_empty`):
    sum((ref - cur) * ln(ref / cur))."""
    ref_share, cur_share = (_fill_empty(s) for s in evidently_buckets(ref, cur))
    return np.sum((ref_share - cur_share) * np.log(ref_share / cur_share))


@_no_drift_when_empty(0.0)
def linf(ref: Column, cur: Column) -> float:
    """L-infinity distance (Vertex, categorical): max over values of |p_ref(v) - p_cur(v)|, each side
    normalised by its own total; 0..1."""
    return float(np.max(np.abs(np.subtract(*_shares_per_value(ref, cur)))))


def _tfdv_histogram(col: Column, buckets: int = 10) -> list[tuple[float, float, float]]:
    """(low, high, count) buckets: `buckets` equal-width ones over the side's own min..max (numpy convention:
    the last one closed), or a single point bucket (low == high) for a constant side."""
    low = col.minimum if col.minimum is not None else float(np.min(col.values))
    high = col.maximum if col.maximum is not None else float(np.max(col.values))
    if low == high:
        return [(low, high, float(len(col.values)))]
    counts, edges = np.histogram(col.values, bins=buckets, range=(low, high))
    return [(float(a), float(b), float(c)) for a, b, c in zip(edges[:-1], edges[1:], counts)]


def _rebucket(histogram, bounds: list[float]) -> list[float]:
    """Counts of `histogram` on the intervals between consecutive `bounds` (which contain every bucket edge),
    each bucket's count spread evenly over its width."""
    index = {b: i for i, b in enumerate(bounds)}
    out = [0.0] * (len(bounds) - 1)
    for low, high, count in histogram:
        for i in range(index[low], index[high]):
            out[i] += (bounds[i + 1] - bounds[i]) / (high - low) * count
    return out


def _aligned(first, second) -> tuple[np.ndarray, np.ndarray]:
    """TFDV's alignment of two histograms: point buckets come out as separate buckets per value; the others
    are rebucketed onto the union of both sides' edges when their edges differ."""
    parts = []
    for histogram in (first, second):
        spans = [b for b in histogram if b[0] != b[1]]
        points = Counter()
        for low, high, count in histogram:
            if low == high:
                points[low] += count
        parts.append((spans, points))
    (spans1, points1), (spans2, points2) = parts
    edges1 = {e for b in spans1 for e in b[:2]}
    edges2 = {e for b in spans2 for e in b[:2]}
    if edges1 == edges2:
        counts1, counts2 = [b[2] for b in spans1], [b[2] for b in spans2]
    else:
        bounds = sorted(edges1 | edges2)
        counts1, counts2 = _rebucket(spans1, bounds), _rebucket(spans2, bounds)
    at = sorted(set(points1) | set(points2))
    return (np.array(counts1 + [points1.get(v, 0.0) for v in at], dtype=float),
            np.array(counts2 + [points2.get(v, 0.0) for v in at], dtype=float))


@_no_drift_when_empty(0.0)
def js_divergence(ref: Column, cur: Column) -> float:
    """Jensen-Shannon divergence, log base 2, capped at 1.0 (Vertex, numerical): 10-bucket equal-width
    histograms of each side over its own min..max, aligned as TFDV does (see `_aligned`), normalised;
    JSD = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, summing only where both terms are positive.
    Equals the natural-log JS distance squared / ln 2 on the same buckets."""
    p, q = _aligned(_tfdv_histogram(ref), _tfdv_histogram(cur))
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    kl_p = np.sum(p[p > 0] * np.log2(p[p > 0] / m[p > 0]))
    kl_q = np.sum(q[q > 0] * np.log2(q[q > 0] / m[q > 0]))
    return min((kl_p + kl_q) / 2, 1.0)


TESTS: dict[str, StatTest] = {t.name: t for t in (
    StatTest("ks", "K-S p-value", frozenset({NUMERICAL}), 0.05, "le", "p_value", ks),
    StatTest("chisquare", "chi-square p-value", BOTH, 0.05, "lt", "p_value", chisquare),
    StatTest("z", "Z-test p-value", BOTH, 0.05, "lt", "p_value", z),
    StatTest("wasserstein", "Wasserstein distance (normed)", frozenset({NUMERICAL}), 0.1, "ge", "distance",
             wasserstein),
    StatTest("jensenshannon", "Jensen-Shannon distance", BOTH, 0.1, "ge", "distance", jensenshannon),
    StatTest("psi", "PSI", BOTH, 0.1, "ge", "distance", psi),
    StatTest("linf", "L-infinity distance", frozenset({CATEGORICAL}), 0.3, "gt", "distance", linf),
    StatTest("js_divergence", "Jensen-Shannon divergence", frozenset({NUMERICAL}), 0.3, "gt", "distance",
             js_divergence),
)}


def get_test(name: str) -> StatTest:
    """The registered test called `name`; InvalidInput naming the valid tests otherwise."""
    try:
        return TESTS[name]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown test {name!r}; valid tests: {', '.join(sorted(TESTS))}") from None
