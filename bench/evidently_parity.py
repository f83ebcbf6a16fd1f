"""Writes tests/drift/fixtures/evidently_parity.json: what real Evidently 0.7.23 says about fixed, seeded frames.

Runs only in bench/.venv-evidently (make it with bench/evidently_env.sh):

    bench/.venv-evidently/bin/python bench/evidently_parity.py [OUT.json]

Our `evidently` drift method promises the same test, score, threshold and verdict as Evidently's
DataDriftPreset with default settings. The fixture lets the project's tests check that promise without
Evidently installed. Each case is a pair of small frames built with numpy's default_rng from a fixed seed, chosen
to walk through Evidently's test choice:
- reference size: <= 1000 non-missing values (KS / chi-square / Z) and > 1000 (Wasserstein / Jensen-Shannon),
  including a reference of exactly 1000 rows and one whose 1100 rows drop below 1000 once NaN are removed;
- float columns with many distinct values; float columns with few distinct values over reference + current
  (u = 2, u = 3..5, and u = 6 reached only through values the current side adds);
- integer columns with <= 10 distinct values (categorical by type) and with many (numerical); a bool column;
- string columns with 2 and with more categories, one with a category the reference never saw;
- NaN / None in float and string columns; columns that drift and columns that do not;
- one case whose integer columns cross the 10-distinct-values line between reference and current, which shows
  that Evidently takes column types from the current frame.

Fixture format:
    {"evidently_version", "generated_by", "cases": [{
        "name", "description",
        "reference": {col: [values, null for NaN/None]}, "current": {...},
        "dtypes": {col: pandas dtype used to build both frames ("float64", "int64", "object", "bool")},
        "column_types": {col: Evidently's inferred type on the current frame: "num" | "cat"},
        "expected": {"dataset_drift": bool, "drifted_share": float,
                     "columns": {col: {"test": Evidently's display name, e.g. "K-S p_value",
                                       "method": its registry name, e.g. "ks",
                                       "score": float, full precision, "threshold": float, "drifted": bool}}}}]}

How the expected values are read out of Evidently: `drift_results` and `column_types` in bench/evidently_run.py
(Report([DataDriftPreset()], include_tests=True).run(current, reference).dict(): ValueDrift metrics give the
test name, threshold and score; the tests' FAIL/SUCCESS statuses give the verdicts; DriftedColumnsCount gives the
drifted share). Floats in the frames are rounded to 3 decimals before Evidently sees them, so the JSON holds
exactly the values Evidently computed on and stays small. The script re-runs itself with PYTHONHASHSEED=0: for
string columns Evidently's scores vary in their last bits (relative ~1e-15) with the hash seed, since it sums
over categories in set order, so compare against the fixture with a small relative tolerance, not bit for bit.
Before writing, every score is checked for sanity (p-values in 0..1, distances >= 0, Jensen-Shannon <=
sqrt(ln 2), each verdict agrees with its threshold rule, the drifted share and dataset verdict agree with the
column verdicts).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidently_run import column_types, drift_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "drift" / "fixtures" / "evidently_parity.json"

# Verdict rule per Evidently registry name: drifted when score <op> threshold.
RULES = {"ks": "le", "chisquare": "lt", "z": "lt", "wasserstein": "ge", "jensenshannon": "ge", "psi": "ge"}
P_VALUES = {"ks", "chisquare", "z"}


def _floats(rng, n, loc=0.0, scale=1.0, nan=0.0):
    values = np.round(rng.normal(loc, scale, n), 3)
    if nan:
        values[rng.random(n) < nan] = np.nan
    return values


def _pick(rng, n, choices, p=None, nan=0.0):
    values = rng.choice(np.array(choices, dtype=object), n, p=p)
    if nan:
        values[rng.random(n) < nan] = None
    return values


def _side(rng, n: int, drift: bool) -> dict:
    """One side of the standard column set; `drift` moves the columns named *_drift and s_unseen."""
    d = drift
    return {
        "f_drift": _floats(rng, n, 0.4 if d else 0.0, 1.3 if d else 1.0),
        "f_same": _floats(rng, n, 5.0, 2.0),
        "f_nan": _floats(rng, n, 1.0, 1.0, nan=0.08),
        "f_u2_drift": rng.choice([0.0, 1.0], n, p=[0.55, 0.45] if d else [0.7, 0.3]),
        "f_u3_same": rng.choice([0.5, 1.5, 2.5], n, p=[0.2, 0.5, 0.3]),
        "f_u5_drift": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.1, 0.1, 0.2, 0.3, 0.3] if d else [0.2] * 5),
        "i_u8": rng.choice(np.arange(8), n, p=[0.2, 0.2, 0.15, 0.15, 0.1, 0.1, 0.05, 0.05]),
        "i_u2_drift": rng.choice([3, 7], n, p=[0.4, 0.6] if d else [0.6, 0.4]),
        "i_many": rng.integers(0, 60, n) + (4 if d else 0),
        "b_flag": rng.random(n) < 0.3,
        "s_u2": _pick(rng, n, ["no", "yes"], p=[0.65, 0.35], nan=0.05),
        "s_u4_drift": _pick(rng, n, ["lisbon", "lyon", "porto", "turin"],
                            p=[0.1, 0.3, 0.3, 0.3] if d else [0.25] * 4, nan=0.03),
        "s_unseen": _pick(rng, n, ["red", "green", "blue", "violet"] if d else ["red", "green", "blue"],
                          p=[0.3, 0.3, 0.3, 0.1] if d else [1 / 3] * 3),
    }


def _frame(columns: dict) -> pd.DataFrame:
    return pd.DataFrame(columns)


def standard_case(name, seed, n_ref, n_cur, drift, description):
    rng = np.random.default_rng(seed)
    return name, description, _frame(_side(rng, n_ref, False)), _frame(_side(rng, n_cur, drift))


def branch_case(seed):
    """References of exactly 1000 rows, and of 1100 rows that fall to <= 1000 non-missing values; u = 6 via current."""
    rng = np.random.default_rng(seed)

    def side(n, extra_values):
        few = rng.choice([1.0, 2.0, 3.0, 4.0], n)
        few[: len(extra_values)] = extra_values  # values the reference never has: u = 6 over both sides
        nan_heavy = _floats(rng, n, 0.0, 1.0)
        nan_heavy[rng.permutation(n)[: n - 950]] = np.nan  # 950 non-missing values whatever n is
        return {"f_plain": _floats(rng, n, 0.1, 1.0), "f_nan_heavy": nan_heavy, "f_u6_via_current": few}

    exact = ("branch_ref_1000", "Reference of exactly 1000 rows: still the small-reference tests.",
             _frame(side(1000, [])), _frame(side(400, [0.0, 9.0])))
    dropped = ("branch_ref_1100_nan", "Reference of 1100 rows: f_nan_heavy has 950 non-missing values there, so "
               "it gets the small-reference test while the full columns get the large-reference ones.",
               _frame(side(1100, [])), _frame(side(500, [0.0, 9.0])))
    return [exact, dropped]


def types_from_current_case(seed):
    """Integer columns whose distinct count crosses 10 between the sides: the current frame decides the type."""
    rng = np.random.default_rng(seed)
    ref = _frame({"i_cat_in_ref": rng.integers(0, 8, 800), "i_num_in_ref": rng.integers(0, 14, 800),
                  "f_x": _floats(rng, 800)})
    cur = _frame({"i_cat_in_ref": rng.integers(0, 14, 500), "i_num_in_ref": rng.integers(0, 8, 500),
                  "f_x": _floats(rng, 500)})
    return ("types_from_current", "i_cat_in_ref has 8 distinct values in the reference and 14 in the current "
            "frame; i_num_in_ref the other way round. Evidently types each by the current frame.", ref, cur)


def cases():
    yield standard_case("small_ref_drift", 11, 800, 300, True,
                        "Reference 800 rows, current 300, several columns drift: KS, chi-square, Z tests.")
    yield standard_case("small_ref_calm", 12, 800, 600, False,
                        "Reference 800 rows, current 600, same distributions; sampling alone still "
                        "puts three columns past their p-value thresholds.")
    yield standard_case("large_ref_drift", 13, 1500, 1200, True,
                        "Reference 1500 rows, current 1200, several columns drift: Wasserstein, Jensen-Shannon.")
    yield standard_case("large_ref_calm_small_current", 14, 1500, 300, False,
                        "Reference 1500 rows, current 300, same distributions (distance tests on a small current).")
    yield from branch_case(15)
    yield types_from_current_case(16)


def _jsonable(series: pd.Series) -> list:
    out = []
    for value in series.tolist():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(None)
        else:
            out.append(value)
    return out


def _check(case_name: str, expected: dict) -> None:
    """Fail loudly when a score or verdict from Evidently is not what its documented rule gives."""
    ops = {"lt": lambda s, t: s < t, "le": lambda s, t: s <= t, "gt": lambda s, t: s > t, "ge": lambda s, t: s >= t}
    drifted = 0
    for col, r in expected["columns"].items():
        where = f"{case_name}/{col} ({r['method']})"
        assert math.isfinite(r["score"]), where
        if r["method"] in P_VALUES:
            assert 0.0 <= r["score"] <= 1.0, where
        else:
            assert r["score"] >= 0.0, where
        if r["method"] == "jensenshannon":
            assert r["score"] <= math.sqrt(math.log(2)) + 1e-12, where
        assert ops[RULES[r["method"]]](r["score"], r["threshold"]) == r["drifted"], where
        drifted += r["drifted"]
    share = drifted / len(expected["columns"])
    assert math.isclose(share, expected["drifted_share"]), case_name
    assert (share >= 0.5) == expected["dataset_drift"], case_name


def build() -> dict:
    import evidently

    out = {"evidently_version": evidently.__version__, "generated_by": "bench/evidently_parity.py", "cases": []}
    for name, description, ref, cur in cases():
        assert list(ref.columns) == list(cur.columns) and list(ref.dtypes) == list(cur.dtypes), name
        expected = drift_results(ref, cur)
        _check(name, expected)
        out["cases"].append({
            "name": name,
            "description": description,
            "reference": {col: _jsonable(ref[col]) for col in ref.columns},
            "current": {col: _jsonable(cur[col]) for col in cur.columns},
            "dtypes": {col: str(ref[col].dtype) for col in ref.columns},
            "column_types": column_types(cur),
            "expected": expected,
        })
    return out


def main(argv: list[str]) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Evidently gathers category keys in a Python set, so for string columns the order of its sums, and with it
        # the last bits of a score, follow the string hash seed. A fixed seed makes the fixture byte-reproducible.
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "PYTHONHASHSEED": "0"})
    target = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    data = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n")
    for case in data["cases"]:
        exp = case["expected"]
        print(f"{case['name']}: dataset_drift={exp['dataset_drift']} share={exp['drifted_share']:.3f}")
        for col, r in exp["columns"].items():
            print(f"  {col:18} {case['column_types'][col]:4} {r['method']:13} {r['score']:.6g} "
                  f"thr={r['threshold']} drifted={r['drifted']}")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
