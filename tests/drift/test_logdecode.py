"""Both ways of decoding a page of the log's columnar JSON give the same columns."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from modelrun.drift import logdecode
from modelrun.drift.profile import category_counts

PAGES = {
    "typical": [{"age": [31.5], "rooms": [3], "city": ["lyon"], "garden": [True]},
                {"age": [40.0, None], "rooms": [2, 4], "city": ["rome", None], "garden": [False, True]}],
    "an output of shape [n, 3]": [{"probs": [[0.1, 0.2, 0.7]]}, {"probs": [[0.3, 0.3, 0.4], [1.0, 0.0, 0.0]]}],
    "a column absent from one request": [{"a": [1.0], "b": ["x"]}, {"a": [2.0, 3.0]}],
    "a scalar input": [{"s": 5.0}, {"s": 6.0}],
    "mixed types in one column": [{"m": ["x"]}, {"m": [3]}],
    "a column of nulls": [{"n": [None]}, {"n": [None, None]}],
}
BATCHES = {"typical": [1, 2], "an output of shape [n, 3]": [1, 2], "a column absent from one request": [1, 2],
           "a scalar input": [1, 1], "mixed types in one column": [1, 1], "a column of nulls": [1, 2]}


def comparable(values):
    if isinstance(values, pd.Categorical):
        return sorted(category_counts(values, "string")[0].items()), category_counts(values, "string")[1]
    array = np.asarray(values)
    if array.dtype == object:
        return sorted(category_counts(array, "string")[0].items()), category_counts(array, "string")[1]
    return np.where(np.isnan(array), -999.0, array).tolist()


@pytest.mark.parametrize("name", PAGES)
def test_the_fast_and_the_general_way_agree(name):
    texts = [orjson.dumps(doc).decode() for doc in PAGES[name]]
    batch = np.array(BATCHES[name])
    fast = logdecode.columns_of(texts, batch, "p:")
    general = logdecode._columns(orjson.loads("[" + ",".join(texts) + "]"), batch, "p:")
    assert list(fast) == list(general)
    for column in fast:
        assert len(fast[column]) == batch.sum()
        assert comparable(fast[column]) == comparable(general[column]), column


def test_the_typical_page_takes_the_fast_way():
    texts = [orjson.dumps(doc).decode() for doc in PAGES["typical"]]
    columns = logdecode._arrow_columns(texts, np.array([1, 2]), "")
    assert isinstance(columns["city"], pd.Categorical) and list(columns["city"].codes) == [0, 1, -1]
    assert columns["rooms"].dtype == np.float64 and columns["garden"].tolist() == [1.0, 0.0, 1.0]
    assert np.isnan(columns["age"][2])
