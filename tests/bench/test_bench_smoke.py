"""The model-server benchmark runs end to end (`bench/serving.py --quick --json`). No timing assertions:
speed is reported by the benchmark, never asserted by a test."""

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

    rows = {(row["server"], row["concurrency"]) for row in doc["rows"]}
    assert rows == {(server, c) for server in ("ceiling", "off", "on") for c in (1, 8)}
    for row in doc["rows"]:
        assert row["rps"] > 0, row
        assert row["errors"] == 0, row

    log = doc["prediction_log"]
    assert log["answered"] > 0
    assert log["rows_after_stop"] == log["answered"], log
