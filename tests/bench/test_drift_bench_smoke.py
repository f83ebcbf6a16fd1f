"""The drift benchmark runs end to end on a small log (`bench/drift.py --quick ...`) and writes its section of the
benchmarks page, keeping what else the page holds. No timing assertions: speed is reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- drift-benchmark:start -->", "<!-- drift-benchmark:end -->"


def run(output: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "drift.py"), "--quick", "--rows", "5000",
                           "--reference-rows", "2000", "--databases", "sqlite", "--skip-evidently",
                           "--output", str(output), "--json", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_quick_drift_benchmark_writes_its_table(tmp_path):
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\nthe model server's table\n")

    doc = run(output)

    (sqlite,) = doc["databases"]
    assert sqlite["database"] == "sqlite"
    assert sqlite["full"]["production_rows"] == 5000  # every logged row counted
    assert sqlite["warm"]["production_rows"] == 6000 and sqlite["cold"]["production_rows"] == 7000
    assert {"all", "last-24h"} <= set(sqlite["full"]["windows"])
    assert len(doc["inmemory"]["modelrun"]["columns"]) == 15 and doc["inmemory"]["evidently"] is None

    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nthe model server's table\n")  # the rest of the page is kept
    assert text.count(START) == 1 and text.count(END) == 1
    section = text[text.index(START):text.index(END)]
    assert "| SQLite" in section and "5,000" in section
    assert "full run from SQLite <= 10 s" in section and "skipped (--skip-evidently)" in section

    run(output)  # a second run replaces its section, not appends another
    again = output.read_text()
    assert again.count(START) == 1 and again.startswith("# Benchmarks\n\nthe model server's table\n")
