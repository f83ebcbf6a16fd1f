"""The Evidently side of the drift benchmark, and the one place that reads drift results out of Evidently.

Runs only in bench/.venv-evidently (make it with bench/evidently_env.sh):

    bench/.venv-evidently/bin/python bench/evidently_run.py REF.parquet CUR.parquet OUT.json

reads the two frames, runs Evidently's DataDriftPreset on them with default settings (plain pandas frames, so
Evidently infers the column types itself) and writes OUT.json:

    {"evidently_version": "0.7.23", "rows": {"reference": int, "current": int},
     "seconds": float,        # wall time of Report.run plus reading the results out of the snapshot
     "peak_rss_mb": float,    # peak resident memory of this process (getrusage ru_maxrss), parquet reading included
     "columns": {col: {"test": str, "method": str, "score": float, "threshold": float, "drifted": bool}},
     "column_types": {col: "num" | "cat" | "text" ...},
     "dataset_drift": bool, "drifted_share": float}

How the values come out of Evidently 0.7.23 (see `drift_results`): `Report([DataDriftPreset()],
include_tests=True).run(current, reference)` returns a snapshot whose `.dict()` has
- "metrics": one `DriftedColumnsCount` entry whose value is {"count", "share"} (share = drifted_share), and one
  `ValueDrift` entry per column whose "config" holds "column", "method" (the test's display name, e.g.
  "K-S p_value", resolved by Evidently when left to its default) and "threshold", and whose "value" is the score;
- "tests" (only with include_tests=True): per column a test with id "drift" pointing at the ValueDrift metric
  through metric_config.metric_id, status "FAIL" when the column drifted, "SUCCESS" when not; and one test with
  id "lt" on DriftedColumnsCount (share < drift_share 0.5), status "FAIL" when the dataset drifted.
"method" is Evidently's registry name for the test ("ks", "chisquare", ...), looked up from the display name in
Evidently's stattest registry. The column types are those Evidently infers on the current frame: in 0.7 the
report's data definition (the one that decides the type, and so the test, of each column) comes from the
current dataset only.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings

import pandas as pd


def _display_to_name() -> dict[str, str]:
    """Evidently's stattest display names ("K-S p_value") -> registry names ("ks")."""
    from evidently.legacy.calculations.stattests import registry

    mapping = {}
    for name, by_type in registry._registered_stat_tests.items():
        for stattest in by_type.values():
            mapping[stattest.display_name] = name
    return mapping


def column_types(frame: pd.DataFrame) -> dict[str, str]:
    """The type Evidently 0.7 infers for each column of one frame (its ColumnType values: "num", "cat", ...)."""
    from evidently import Dataset

    definition = Dataset.from_pandas(frame).data_definition
    return {col: definition.get_column_type(col).value for col in frame.columns}


def drift_results(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    """Run DataDriftPreset with defaults and return the per-column and dataset verdicts (format: module doc)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    with warnings.catch_warnings():
        # scipy warns (divide by zero) when a current category is absent from the reference; the p-value is 0.
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
        data = snapshot.dict()

    names = _display_to_name()
    by_id = {m["id"]: m for m in data["metrics"]}
    columns: dict[str, dict] = {}
    count_id = None
    share = None
    for metric in data["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            columns[config["column"]] = {
                "test": config["method"],
                "method": names.get(config["method"], config["method"]),
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": None,
            }
        elif config["type"].endswith(":DriftedColumnsCount"):
            count_id = metric["id"]
            share = float(metric["value"]["share"])
    dataset_drift = None
    for test in data["tests"]:
        metric = by_id[test["metric_config"]["metric_id"]]
        failed = {"FAIL": True, "SUCCESS": False}[test["status"]]
        if test["id"] == "drift":
            columns[metric["config"]["column"]]["drifted"] = failed
        elif metric["id"] == count_id:
            dataset_drift = failed
    # Evidently lists the columns grouped by type; give them in the frame's order.
    columns = {col: columns[col] for col in current.columns if col in columns}
    missing = [col for col, result in columns.items() if result["drifted"] is None]
    if missing or dataset_drift is None or share is None:
        raise RuntimeError(f"Evidently's snapshot lacks verdicts for {missing or 'the dataset'}")
    return {"columns": columns, "dataset_drift": dataset_drift, "drifted_share": share}


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: evidently_run.py REF.parquet CUR.parquet OUT.json (in bench/.venv-evidently)", file=sys.stderr)
        return 2
    import evidently

    reference = pd.read_parquet(argv[1])
    current = pd.read_parquet(argv[2])
    started = time.perf_counter()
    result = drift_results(reference, current)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {
        "evidently_version": evidently.__version__,
        "rows": {"reference": len(reference), "current": len(current)},
        "seconds": seconds,
        "peak_rss_mb": peak_kib / 1024,
        "columns": result["columns"],
        "column_types": column_types(current),
        "dataset_drift": result["dataset_drift"],
        "drifted_share": result["drifted_share"],
    }
    with open(argv[3], "w") as fh:
        json.dump(out, fh, indent=1, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
