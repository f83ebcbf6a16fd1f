"""Reference profiles: the training data (and the model's outputs on it), frozen at deploy time.

Per column: its kind (numerical / categorical / text, by `coltypes.column_kind`), how many values it
has and how many are missing, summary statistics, frozen histogram bin edges with their counts (numerical)
or category counts (categorical), and for numerical columns a bounded sample of the values for the exact
tests (every value up to `sample_rows`, a seeded uniform sample of rows beyond).

Production windows are later counted into the same bins and compared with this profile; the same
`values_of` / `category_key` rules turn production values into numbers and category keys, so training
and production data are read alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modelrun.drift.coltypes import column_kind

SAMPLE_ROWS = 100_000  # reference rows kept for the exact tests
HIST_BINS = 20  # equal-width bins over the reference's min..max, for charts and out-of-range counts
COUNT_CAP = 64  # a numerical column's distinct values are counted exactly up to this many
CATEGORY_CAP = 1000  # categories kept per column; the rest are summed into `other`
OUTPUT_PREFIX = "output:"  # how model outputs are keyed among the columns, apart from features of the same name
NUMERIC_SHARE = 0.9  # an object column whose non-null values are at least this share numbers is numerical


@dataclass
class ColumnProfile:
    """One column of the reference. `counts` keys are floats (numerical) or strings (categorical)."""

    name: str
    kind: str  # "numerical" | "categorical" | "text"
    dtype: str  # "float" | "int" | "bool" | "string"
    total: int  # rows
    missing: int  # null, NaN, ±inf, and values that are not numbers in a numerical column
    invalid: int = 0  # of `missing`: values that are not numbers in a numerical column
    mean: float | None = None
    std: float | None = None  # population standard deviation (ddof 0)
    minimum: float | None = None
    maximum: float | None = None
    median: float | None = None
    edges: list[float] | None = None
    hist: list[int] | None = None
    counts: dict | None = None
    other: int = 0  # categorical values beyond CATEGORY_CAP categories
    distinct: int = 0
    sample: np.ndarray | None = field(default=None, repr=False)  # numerical: non-missing values (bounded)

    @property
    def n(self) -> int:
        return self.total - self.missing

    def to_meta(self) -> dict:
        """JSON-able form without the sample (stored apart: it can be large)."""
        meta = {k: getattr(self, k) for k in ("name", "kind", "dtype", "total", "missing", "invalid", "mean", "std",
                                              "minimum", "maximum", "median", "edges", "hist", "other", "distinct")}
        if self.counts is not None:
            meta["counts"] = [[key, count] for key, count in self.counts.items()]
        return meta

    @classmethod
    def from_meta(cls, meta: dict, sample: np.ndarray | None = None) -> ColumnProfile:
        values = dict(meta)
        counts = values.pop("counts", None)
        if counts is not None:
            numeric = values["kind"] == "numerical"
            counts = {(float(k) if numeric else str(k)): int(c) for k, c in counts}
        return cls(**values, counts=counts, sample=sample)


@dataclass
class Profile:
    """Every monitored column of one side of the model: the features, or the outputs."""

    rows: int
    columns: list[ColumnProfile]
    sampled_rows: int  # rows behind the numerical samples (== rows unless the data had more than the cap)

    def column(self, name: str) -> ColumnProfile | None:
        return next((c for c in self.columns if c.name == name), None)

    def to_meta(self) -> dict:
        return {"rows": self.rows, "sampled_rows": self.sampled_rows, "columns": [c.to_meta() for c in self.columns]}

    @classmethod
    def from_meta(cls, meta: dict, samples: dict[str, np.ndarray]) -> Profile:
        columns = [ColumnProfile.from_meta(c, samples.get(c["name"])) for c in meta["columns"]]
        return cls(rows=meta["rows"], columns=columns, sampled_rows=meta["sampled_rows"])


def sample_rows(frame: pd.DataFrame, limit: int = SAMPLE_ROWS, seed: int = 0) -> pd.DataFrame:
    """Every row up to `limit`, else a seeded uniform sample of `limit` rows in their original order.
    The model server calls this too, so the outputs' reference comes from the same rows."""
    if len(frame) <= limit:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=limit, replace=False))
    return frame.iloc[keep]


def build_profile(frame: pd.DataFrame, columns: list[str] | None = None, *, limit: int = SAMPLE_ROWS,
                  seed: int = 0) -> Profile:
    """Profile `columns` of `frame` (all of them by default): statistics over every row, samples over
    `sample_rows(frame, limit, seed)`."""
    columns = list(frame.columns) if columns is None else columns
    sampled = sample_rows(frame, limit, seed)
    profiles = [_column(str(name), frame[name], sampled[name]) for name in columns]
    return Profile(rows=len(frame), columns=profiles, sampled_rows=len(sampled))


def _column(name: str, series: pd.Series, sampled: pd.Series) -> ColumnProfile:
    dtype = dtype_of(series)
    kind = column_kind(series)
    if dtype == "string" and kind != "numerical" and _looks_numeric(series):
        numbers, invalid = values_of(series.to_numpy(dtype=object))
        if _mostly_numbers(series, invalid):  # a numeric column with stray text ("n/a"): numbers + invalid
            return numerical(name, numbers, values_of(sampled.to_numpy(dtype=object))[0], "float", invalid)
    if kind == "numerical":
        numbers, invalid = values_of(series.to_numpy())
        return numerical(name, numbers, values_of(sampled.to_numpy())[0], dtype, invalid)
    return categorical(name, series.to_numpy(dtype=object), dtype, kind)


def _looks_numeric(series: pd.Series, probe: int = 200) -> bool:
    """A cheap first look (the first `probe` non-null values) before coercing a whole text column."""
    head = series.dropna().head(probe)
    return len(head) > 0 and pd.to_numeric(head, errors="coerce").notna().mean() >= NUMERIC_SHARE - 0.2


def _mostly_numbers(series: pd.Series, invalid: int) -> bool:
    present = int(series.notna().sum())
    return present > 0 and (present - invalid) / present >= NUMERIC_SHARE


def dtype_of(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def values_of(raw) -> tuple[np.ndarray, int]:
    """Any values as float64 (NaN for null, ±inf and what is not a number) and how many were not numbers."""
    try:
        values = np.asarray(raw, dtype=np.float64)
        invalid = 0
    except (TypeError, ValueError):
        series = pd.Series(np.asarray(raw, dtype=object))
        coerced = pd.to_numeric(series.map(_number_or_text), errors="coerce")
        values = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
        invalid = int((coerced.isna() & series.notna()).sum())
    values = values.reshape(-1) if values.ndim else values.reshape(1)
    return np.where(np.isfinite(values), values, np.nan), invalid


def _number_or_text(value):
    return float(value) if isinstance(value, bool | np.bool_) else value


def numerical(name: str, values: np.ndarray, sample: np.ndarray, dtype: str, invalid: int = 0) -> ColumnProfile:
    present = values[~np.isnan(values)]
    profile = ColumnProfile(name=name, kind="numerical", dtype=dtype, total=len(values),
                            missing=len(values) - len(present), invalid=invalid,
                            sample=np.ascontiguousarray(sample[~np.isnan(sample)]))
    if not len(present):
        profile.edges, profile.hist, profile.counts = [0.0, 1.0], [0], {}
        return profile
    low, high = float(present.min()), float(present.max())
    profile.mean, profile.std = float(present.mean()), float(present.std())
    profile.minimum, profile.maximum, profile.median = low, high, float(np.median(present))
    profile.edges = histogram_edges(low, high)
    profile.hist = np.histogram(present, bins=profile.edges)[0].tolist()
    distinct, counts = np.unique(present, return_counts=True)
    profile.distinct = len(distinct)
    if len(distinct) <= COUNT_CAP:
        profile.counts = {float(v): int(c) for v, c in zip(distinct, counts)}
    return profile


def histogram_edges(low: float, high: float, bins: int = HIST_BINS) -> list[float]:
    if low == high:  # a constant column: one bin around its value
        return [low - 0.5, high + 0.5]
    return np.linspace(low, high, bins + 1).tolist()


def categorical(name: str, raw: np.ndarray, dtype: str, kind: str = "categorical") -> ColumnProfile:
    counts, missing = category_counts(raw, dtype)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ordered[:CATEGORY_CAP])
    return ColumnProfile(name=name, kind=kind, dtype=dtype, total=len(raw), missing=missing, counts=kept,
                         other=sum(c for _, c in ordered[CATEGORY_CAP:]), distinct=len(counts))


def category_counts(raw, dtype: str) -> tuple[dict[str, int], int]:
    """Counts per category key of any values (a pandas Series is counted as it is, Arrow-backed strings
    included; hashing in pandas, keys made once per distinct value), and how many were missing."""
    if isinstance(raw, pd.Categorical):
        tally = np.bincount(raw.codes + 1, minlength=len(raw.categories) + 1)  # code -1 (missing) at 0
        pairs = zip([None, *raw.categories], tally.tolist())
    else:
        series = raw if isinstance(raw, pd.Series) else pd.Series(np.asarray(raw, dtype=object).reshape(-1))
        pairs = series.value_counts(dropna=False, sort=False).items()
    counts: dict[str, int] = {}
    missing = 0
    for value, count in pairs:
        if not count:
            continue
        key = category_key(value, dtype)
        if key is None:
            missing += int(count)
        else:
            counts[key] = counts.get(key, 0) + int(count)
    return counts, missing


def category_key(value, dtype: str = "string") -> str | None:
    """The key a categorical value is counted under, the same for training and production data:
    3, 3.0 and "3" are one category of an integer column; true/1 are one of a boolean column."""
    if value is None or (isinstance(value, float | np.floating) and not math.isfinite(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        key = str(int(value))
    elif isinstance(value, float | np.floating):
        key = str(int(value)) if float(value).is_integer() else repr(float(value))
    elif isinstance(value, bytes):
        key = value.decode("utf-8", "backslashreplace")
    else:
        key = str(value)
    if dtype == "bool" and key in ("0", "1"):
        return "true" if key == "1" else "false"
    return key
