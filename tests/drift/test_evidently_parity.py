"""The `evidently` method against Evidently 0.7.23 itself: scores, tests, verdicts and the dataset rule.

The fixture was made once by bench/evidently_parity.py in Evidently's own virtualenv (bench/evidently_env.sh):
fixed frames covering every branch of its test choice, and what Evidently computed on them. Here the same
frames go through our profile → aggregate → report path with every value kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from modelrun.drift.inmemory import compare

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "evidently_parity.json").read_text())
CASES = {case["name"]: case for case in FIXTURE["cases"]}
# Evidently takes column types from the current frame; we take them from the training data, once, so a
# column keeps its kind (and its test) across windows. This case is about that difference.
TYPES_FROM_CURRENT = "types_from_current"


def frame(case: dict, side: str) -> pd.DataFrame:
    data = pd.DataFrame(case[side])
    return data.astype({name: dtype for name, dtype in case["dtypes"].items() if dtype != "object"})


@pytest.mark.parametrize("name", [n for n in CASES if n != TYPES_FROM_CURRENT])
def test_scores_tests_and_verdicts_match_evidently(name):
    case = CASES[name]
    report = compare(frame(case, "reference"), frame(case, "current"))
    ours = {c["name"]: c for c in report["features"]}
    expected = case["expected"]
    assert set(ours) == set(expected["columns"])
    for column, theirs in expected["columns"].items():
        mine = ours[column]
        assert mine["test"] == theirs["method"], column
        assert mine["threshold"] == theirs["threshold"], column
        # Evidently sums categories in set order, so its last digits vary with PYTHONHASHSEED.
        assert mine["score"] == pytest.approx(theirs["score"], rel=1e-9, abs=1e-12), column
        assert mine["drifted"] == theirs["drifted"], column
    assert report["drifted_share"] == pytest.approx(expected["drifted_share"], abs=1e-12)
    assert report["dataset_drift"] == expected["dataset_drift"]


def test_column_kinds_come_from_the_training_data_where_evidently_looks_at_the_current_frame():
    case = CASES[TYPES_FROM_CURRENT]
    report = {c["name"]: c for c in compare(frame(case, "reference"), frame(case, "current"))["features"]}
    # 8 distinct integers in training, 14 in production: categorical for us (Evidently: numerical, KS) ...
    assert (report["i_cat_in_ref"]["type"], report["i_cat_in_ref"]["test"]) == ("categorical", "chisquare")
    assert case["column_types"]["i_cat_in_ref"] == "num"
    # ... and the other way round; both drift either way, and the float column agrees exactly.
    assert (report["i_num_in_ref"]["type"], report["i_num_in_ref"]["test"]) == ("numerical", "ks")
    assert report["i_cat_in_ref"]["drifted"] and report["i_num_in_ref"]["drifted"]
    assert report["f_x"]["score"] == pytest.approx(case["expected"]["columns"]["f_x"]["score"], rel=1e-9)
