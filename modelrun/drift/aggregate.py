"""Window aggregates: what a production window holds, in bounded memory, mergeable in any order.

Per reference column: row and missing counts, moments (Chan's parallel formulas), min/max, counts in the
reference's frozen histogram bins with below/above-range counts, exact value counts (categories, or a
numerical column's values while it has at most `COUNT_CAP` distinct ones), and for categorical columns the
count of values the reference never saw.

For the exact tests (KS, Wasserstein, binned PSI/JS), a reservoir keeps the numerical values of the rows
with the `capacity` smallest priorities, where a row's priority is a hash of its log position. Keeping
the smallest priorities of a union is the same as keeping the smallest of the parts' smallest, so
aggregating rows one chunk at a time, or merging hourly aggregates into a day, gives the very sample one
pass over all the rows would: incremental refreshes and a full recomputation agree exactly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from modelrun.drift.profile import COUNT_CAP, ColumnProfile, Profile, category_counts, values_of
from modelrun.drift.stattests import Column

RESERVOIR_ROWS = 20_000  # default capacity
RESERVOIR_BYTES = 4 * 1024 * 1024  # stored reservoirs stay well under every database's packet limit
CATEGORY_LIMIT = 1000  # production categories counted per column; the rest go to `other`


def priorities(row_ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """splitmix64 of (log row id, position in the request): uniform, deterministic 64-bit priorities."""
    x = (row_ids.astype(np.uint64) << np.uint64(20)) + index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class ColumnAggregate:
    kind: str
    total: int = 0
    missing: int = 0
    invalid: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    minimum: float | None = None
    maximum: float | None = None
    hist: list[int] | None = None
    below: int = 0
    above: int = 0
    counts: dict | None = None  # None: a numerical column with more than COUNT_CAP distinct values
    other: int = 0
    unseen: int = 0

    @property
    def n(self) -> int:
        return self.total - self.missing

    def add_numbers(self, values: np.ndarray, invalid: int, ref: ColumnProfile) -> None:
        present = values[~np.isnan(values)]
        self._count(len(values), len(values) - len(present), invalid)
        if not len(present):
            return
        self._moments(len(present), float(present.mean()), float(((present - present.mean()) ** 2).sum()))
        low, high = float(present.min()), float(present.max())
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)
        edges = ref.edges
        inside = present[(present >= edges[0]) & (present <= edges[-1])]
        self.hist = (np.asarray(self.hist) + np.histogram(inside, bins=edges)[0]).tolist()
        self.below += int((present < edges[0]).sum())
        self.above += int((present > edges[-1]).sum())
        if self.counts is not None and ref.counts is not None:  # else: many values, counts never needed
            distinct, counts = np.unique(present, return_counts=True)
            if len(distinct) > COUNT_CAP:
                self.counts = None
            else:
                self._merge_counts({float(v): int(c) for v, c in zip(distinct, counts)})

    def add_categories(self, raw, ref: ColumnProfile) -> None:
        counts, missing = category_counts(raw, ref.dtype)
        self._count(sum(counts.values()) + missing, missing, 0)
        known = ref.counts or {}
        self.unseen += sum(c for k, c in counts.items() if k not in known) if ref.other == 0 else 0
        self._merge_counts(counts)

    def _count(self, total: int, missing: int, invalid: int) -> None:
        self.total += total
        self.missing += missing
        self.invalid += invalid

    def _moments(self, n: int, mean: float, m2: float) -> None:
        before = self.n - n  # self.total/missing already include the new values
        if before <= 0:
            self.mean, self.m2 = mean, m2
            return
        delta = mean - self.mean
        total = before + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * before * n / total

    def _merge_counts(self, counts: dict) -> None:
        if self.counts is None:
            return
        merged = dict(self.counts)
        for key, count in counts.items():
            merged[key] = merged.get(key, 0) + count
        if self.kind == "numerical":
            self.counts = merged if len(merged) <= COUNT_CAP else None
            return
        if len(merged) > CATEGORY_LIMIT:  # keep the most frequent, fold the rest into `other`
            ordered = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
            self.other += sum(c for _, c in ordered[CATEGORY_LIMIT:])
            merged = dict(ordered[:CATEGORY_LIMIT])
        self.counts = merged

    def merge(self, other: ColumnAggregate) -> None:
        n_before = self.n
        self._count(other.total, other.missing, other.invalid)
        if other.n:
            if n_before:
                delta, total = other.mean - self.mean, n_before + other.n
                self.mean += delta * other.n / total
                self.m2 += other.m2 + delta * delta * n_before * other.n / total
            else:
                self.mean, self.m2 = other.mean, other.m2
        for attr, pick in (("minimum", min), ("maximum", max)):
            mine, theirs = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, theirs if mine is None else mine if theirs is None else pick(mine, theirs))
        if other.hist is not None:
            self.hist = other.hist if self.hist is None else (np.asarray(self.hist) + other.hist).tolist()
        self.below, self.above, self.unseen = self.below + other.below, self.above + other.above, self.unseen + other.unseen
        self.other += other.other
        if other.counts is None:
            self.counts = None
        else:
            self._merge_counts(other.counts)

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "counts"}
        data["counts"] = None if self.counts is None else [[k, c] for k, c in self.counts.items()]
        return data

    @classmethod
    def from_json(cls, data: dict) -> ColumnAggregate:
        values = dict(data)
        counts = values.pop("counts")
        if counts is not None:
            cast = float if values["kind"] == "numerical" else str
            counts = {cast(k): int(c) for k, c in counts}
        return cls(**values, counts=counts)

    @classmethod
    def empty(cls, ref: ColumnProfile) -> ColumnAggregate:
        kind = "numerical" if ref.kind == "numerical" else "categorical"
        hist = [0] * (len(ref.edges) - 1) if kind == "numerical" else None
        # A numerical reference with many distinct values makes any test per-value moot: no counts.
        counts = None if kind == "numerical" and ref.counts is None else {}
        return cls(kind=kind, hist=hist, counts=counts)


class Aggregate:
    """One window (or bucket) of production rows against one reference profile."""

    def __init__(self, profile: Profile, capacity: int = RESERVOIR_ROWS, *, bounded: bool = True):
        self.rows = 0
        self.columns = {c.name: ColumnAggregate.empty(c) for c in profile.columns}
        self.numeric = [c.name for c in profile.columns if c.kind == "numerical"]
        # Bounded by bytes too, so one stored aggregate always fits a database packet.
        self.bounded = bounded
        self.capacity = min(capacity, max(100, RESERVOIR_BYTES // (8 * (1 + len(self.numeric))))) if bounded else capacity
        self.prio = np.empty(0, dtype=np.uint64)
        self.sample = {name: np.empty(0) for name in self.numeric}

    def add(self, profile: Profile, columns: dict[str, object], prio: np.ndarray) -> None:
        """Add rows: `columns` maps a column name to its raw values (one per row, any type; a column absent
        from the rows counts as missing), `prio` their priorities."""
        rows = len(prio)
        self.rows += rows
        numbers = {}
        for ref in profile.columns:
            agg = self.columns[ref.name]
            raw = columns.get(ref.name)
            if raw is None:
                raw = np.full(rows, np.nan) if ref.kind == "numerical" else np.full(rows, None, dtype=object)
            if ref.kind == "numerical":
                values, invalid = values_of(raw)
                agg.add_numbers(values, invalid, ref)
                numbers[ref.name] = values
            else:
                agg.add_categories(raw, ref)
        self._keep(prio, numbers)

    def _keep(self, prio: np.ndarray, numbers: dict[str, np.ndarray]) -> None:
        """Keep the `capacity` rows of smallest priority, in priority order (one canonical sample, however
        the rows arrived)."""
        if not self.numeric:
            return
        if not len(self.prio) and len(prio) <= self.capacity and not self.bounded:
            self.prio, self.sample = prio, {name: numbers[name] for name in self.numeric}  # keeps everything
            return
        prio = np.concatenate([self.prio, prio])
        sample = {name: np.concatenate([self.sample[name], numbers[name]]) for name in self.numeric}
        if len(prio) > self.capacity:
            kept = np.argpartition(prio, self.capacity - 1)[:self.capacity]
            order = kept[np.argsort(prio[kept], kind="stable")]
        else:
            order = np.argsort(prio, kind="stable")
        self.prio = prio[order]
        self.sample = {name: values[order] for name, values in sample.items()}

    def merge(self, other: Aggregate) -> None:
        self.rows += other.rows
        for name, agg in self.columns.items():
            if name in other.columns:
                agg.merge(other.columns[name])
        if self.numeric:
            self._keep(other.prio, {name: other.sample.get(name, np.full(len(other.prio), np.nan))
                                    for name in self.numeric})

    def column(self, name: str) -> Column:
        """The production side of column `name` as the statistical tests take it."""
        agg = self.columns[name]
        if agg.kind == "numerical":
            values = self.sample[name]
            return Column(kind="numerical", n=agg.n, values=values[~np.isnan(values)], counts=agg.counts,
                          minimum=agg.minimum, maximum=agg.maximum)
        return Column(kind="categorical", n=agg.n, counts=agg.counts)

    # ---- storage --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        meta = {"rows": self.rows, "capacity": self.capacity,
                "columns": {name: agg.to_json() for name, agg in self.columns.items()}}
        arrays = {"prio": self.prio} | {f"s{i}": self.sample[name] for i, name in enumerate(self.numeric)}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, profile: Profile) -> Aggregate:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            agg = cls(profile, meta["capacity"], bounded=False)
            agg.rows = meta["rows"]
            for name, values in meta["columns"].items():
                if name in agg.columns:
                    agg.columns[name] = ColumnAggregate.from_json(values)
            agg.prio = stored["prio"]
            agg.sample = {name: stored[f"s{i}"] for i, name in enumerate(agg.numeric)}
        return agg
