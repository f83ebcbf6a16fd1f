"""Column kinds inferred from the training data, by Evidently 0.7's rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelrun.drift.coltypes import column_kind


@pytest.mark.parametrize("series,kind", [
    (pd.Series([1.0, 2.0, 2.0]), "numerical"),
    (pd.Series([1.0, 1.0, np.nan]), "numerical"),  # floats with few values stay numerical
    (pd.Series([np.nan, np.nan]), "numerical"),
    (pd.Series(np.arange(10).repeat(3)), "categorical"),  # 10 distinct integers
    (pd.Series(np.arange(11).repeat(3)), "numerical"),  # 11 distinct integers
    (pd.Series(np.arange(5, dtype=np.uint8)), "categorical"),
    (pd.Series(pd.array([1, 2, None] * 3, dtype="Int64")), "categorical"),
    (pd.Series(pd.array(list(range(20)) + [None], dtype="Int64")), "numerical"),
    (pd.Series([True, False, True]), "categorical"),
    (pd.Series([True, None, False, True]), "categorical"),  # object column of booleans
    (pd.Series(pd.array([True, None, False], dtype="boolean")), "categorical"),
    (pd.Series([f"id{i}" for i in range(30)], dtype="category"), "categorical"),
])
def test_kind_by_dtype(series, kind):
    assert column_kind(series) == kind


@pytest.mark.parametrize("dtype", [object, "string", "str"])
def test_strings_are_text_when_more_than_half_of_the_values_are_distinct(dtype):
    half = pd.Series(["a", "b", "c", "a", "b", "c"], dtype=dtype)  # 3 distinct of 6: not more than half
    more = pd.Series(["a", "b", "c", "d", "a", "b"], dtype=dtype)  # 4 distinct of 6
    assert column_kind(half) == "categorical"
    assert column_kind(more) == "text"


def test_missing_values_do_not_count_in_the_text_rule():
    # 2 distinct of 4 present values: categorical, however many missing values there are
    assert column_kind(pd.Series(["a", "b", "a", "b", None, None, None, None], dtype=object)) == "categorical"
    assert column_kind(pd.Series(["a", "b", "c", None, None, None, None], dtype=object)) == "text"


def test_other_dtypes_are_read_as_strings():
    stamps = pd.Series(pd.date_range("2026-01-01", periods=10, freq="h"))
    assert column_kind(stamps) == "text"
    assert column_kind(pd.Series(pd.to_datetime(["2026-01-01", "2026-01-02"] * 5))) == "categorical"
