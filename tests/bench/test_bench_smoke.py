"""The model-server benchmark runs end to end (`bench/serving.py --quick --json`): perf_analyzer for real
against the protocol ceiling and modelrun (MLServer, which needs its own virtualenv, is left to `make bench`).
No timing assertions: speed is reported by the benchmark, never asserted by a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout)

    assert doc["measurement"]["client"] == "perf_analyzer"
    rows = {(row["server"], row["concurrency"]) for row in doc["rows"]}
    assert rows == {(server, c) for server in ("ceiling", "off", "on") for c in (1, 8)}
    for row in doc["rows"]:
        assert row["rps"] > 0, row
        assert row["errors"] == 0, row
        assert row["server_cpu_us"] > 0 and row["client_cpu_us"] > 0, row
    assert doc["not_run"] == {}

    log = doc["prediction_log"]
    assert log["answered"] > 0
    assert log["rows_after_stop"] == log["answered"], log


@pytest.mark.slow
def test_quick_benchmark_with_the_python_load_generator():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", "--json",
                           "--client", "loadgen", "--servers", "ceiling,on", "--concurrency", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout)

    assert [(row["server"], row["concurrency"]) for row in doc["rows"]] == [("ceiling", 8), ("on", 8)]
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in doc["rows"]), doc["rows"]
    assert doc["prediction_log"]["rows_after_stop"] == doc["prediction_log"]["answered"]
