"""Reference profiles: column kinds, missing and invalid values, bounded seeded samples, category keys."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelrun.drift.aggregate import Aggregate, priorities
from modelrun.drift.profile import Profile, build_profile, category_key, sample_rows


def test_kinds_counts_and_statistics():
    frame = pd.DataFrame({"area": [50.0, 70.0, np.nan, 90.0, 70.0, 70.0], "rooms": [1, 2, 2, 3, 2, 2],
                          "city": ["a", "b", None, "a", "a", "a"], "garden": [True, False, True, True, True, True],
                          "note": ["n1", "n2", "n3", "n4", "n5", "n1"]})
    profile = build_profile(frame)
    area, rooms, city, garden, note = profile.columns
    assert (area.kind, area.missing, area.mean, area.minimum, area.maximum) == ("numerical", 1, 70.0, 50.0, 90.0)
    assert area.std == pytest.approx(np.std([50.0, 70.0, 90.0, 70.0, 70.0]))
    assert sum(area.hist) == 5 and area.edges[0] == 50.0 and area.edges[-1] == 90.0
    assert (rooms.kind, rooms.counts) == ("categorical", {"1": 1, "2": 4, "3": 1})
    assert (city.kind, city.missing, city.counts) == ("categorical", 1, {"a": 4, "b": 1})
    assert (garden.kind, garden.counts) == ("categorical", {"true": 5, "false": 1})
    assert note.kind == "text"  # mostly distinct strings: described, not tested


def test_a_numeric_column_with_stray_text_stays_numerical_and_counts_the_text():
    values = [str(float(i)) for i in range(95)] + ["n/a"] * 5
    profile = build_profile(pd.DataFrame({"x": pd.Series(values, dtype=object)}))
    x = profile.columns[0]
    assert (x.kind, x.invalid, x.missing, x.n) == ("numerical", 5, 5, 95)


def test_a_constant_column_gets_one_bin_around_its_value():
    column = build_profile(pd.DataFrame({"c": [2.5] * 30})).columns[0]
    assert column.edges == [2.0, 3.0] and column.hist == [30] and column.std == 0.0


def test_the_sample_is_every_row_up_to_the_limit_then_a_seeded_uniform_sample():
    frame = pd.DataFrame({"x": np.arange(1000.0)})
    assert len(sample_rows(frame, 1000)) == 1000
    first, again = sample_rows(frame, 100, seed=0), sample_rows(frame, 100, seed=0)
    assert first.equals(again) and first.index.is_monotonic_increasing and len(set(first.index)) == 100
    profile = build_profile(frame, limit=100)
    assert (profile.rows, profile.sampled_rows, len(profile.columns[0].sample)) == (1000, 100, 100)
    assert profile.columns[0].mean == pytest.approx(499.5)  # statistics use every row


@pytest.mark.parametrize("value, dtype, key", [
    (3, "int", "3"), (3.0, "int", "3"), ("3", "int", "3"), (np.int64(3), "int", "3"), (2.5, "float", "2.5"),
    (True, "bool", "true"), (1.0, "bool", "true"), (0, "bool", "false"), ("lyon", "string", "lyon"),
    (None, "string", None), (float("nan"), "int", None), (b"caf\xc3\xa9", "string", "café"),
])
def test_training_and_production_values_share_category_keys(value, dtype, key):
    assert category_key(value, dtype) == key


def test_profiles_round_trip_through_their_stored_form():
    profile = build_profile(pd.DataFrame({"a": np.linspace(0, 1, 50), "b": ["x", "y"] * 25}))
    stored = Profile.from_meta(profile.to_meta(), {c.name: c.sample for c in profile.columns if c.sample is not None})
    assert stored.to_meta() == profile.to_meta()
    assert np.array_equal(stored.columns[0].sample, profile.columns[0].sample)


def test_an_aggregate_survives_storage_and_merging_in_any_order():
    profile = build_profile(pd.DataFrame({"a": np.random.default_rng(0).normal(size=500), "b": ["x", "y"] * 250}))
    parts = []
    for seed in range(3):
        agg = Aggregate(profile, capacity=200)
        ids = np.arange(seed * 1000, seed * 1000 + 300)
        rng = np.random.default_rng(seed)
        agg.add(profile, {"a": rng.normal(size=300), "b": rng.choice(["x", "y", "z"], 300)}, priorities(ids, ids * 0))
        parts.append(Aggregate.from_bytes(agg.to_bytes(), profile))
    forward, backward = Aggregate(profile, 200), Aggregate(profile, 200)
    for part in parts:
        forward.merge(part)
    for part in reversed(parts):
        backward.merge(part)
    assert forward.rows == backward.rows == 900
    assert np.array_equal(forward.prio, backward.prio) and np.array_equal(forward.sample["a"], backward.sample["a"])
    assert forward.columns["b"].counts == backward.columns["b"].counts and forward.columns["b"].unseen > 0
    assert forward.columns["a"].mean == pytest.approx(backward.columns["a"].mean, rel=1e-12)
