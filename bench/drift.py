"""Drift benchmark: a full drift refresh over a large prediction log, an incremental one, and the in-memory
`evidently` method against Evidently 0.7.23's DataDriftPreset itself.

Synthetic, seeded data: 15 features (10 numerical floats, three of them shifted in production and two holding
float32 values; 5 categorical strings of 4-12 categories, one shifted) and one model output, `score`.
A 100k-row reference is profiled and stored as the deployment's reference (features and outputs), then 1M
production rows are written to the prediction log as a model server writes them: mostly one-row requests
(`encode_row`), spread over the last 20 hours so hourly, daily and whole-life buckets are all filled. Loading
is not measured. For each database (a fresh SQLite file, a fresh MariaDB database):

- full run: a fresh process builds `Refresher(engine)` and calls `refresh()` once over the whole log; its wall
  time, CPU time and peak RSS (getrusage ru_maxrss: the process's imports included);
- refresh after 10k new rows, in that same process (warm: profiles and code loaded, as in the control plane),
  and again after 10k more rows in a new process (cold: imports and profile loading included).

In memory: the same reference frame (100k) and production frame (1M) as pandas frames, `inmemory.compare` in
its own process against bench/evidently_run.py in Evidently's own virtualenv (bench/evidently_env.sh), both
reading the same parquet files: time ratio, peak memories, and the largest score difference over the columns
where both ran the same test. The issue's targets are reported met / not met; nothing fails on speed.

    .venv/bin/python bench/drift.py                       # full run (~10 min), updates docs/benchmarks.md
    .venv/bin/python bench/drift.py --quick --databases sqlite --skip-evidently --output /tmp/drift.md

docs/benchmarks.md is shared with bench/serving.py: this writes only the section between DRIFT_START and
DRIFT_END (appending it when missing), and bench/serving.py keeps that section when it rewrites the file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DRIFT_START = "<!-- drift-benchmark:start -->"
DRIFT_END = "<!-- drift-benchmark:end -->"
DEPLOYMENT = "bench-drift"
MARIADB_URL = os.environ.get("MODELRUN_BENCH_MARIADB",
                             os.environ.get("MODELRUN_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"))
POSTGRES_URL = os.environ.get("MODELRUN_BENCH_POSTGRES", os.environ.get(
    "MODELRUN_TEST_POSTGRES", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"))
LABELS = {"sqlite": "SQLite", "mariadb": "MariaDB", "postgresql": "PostgreSQL"}
HOURS = 20  # the production rows' timestamps span the last HOURS hours
INSERT_CHUNK = 2000  # log rows per insert_ignoring_duplicates call (loading is not measured)
TRANSACTION_ROWS = 50_000
SCORE_TOLERANCE = 1e-9

# Targets (issue text), on a 2-core machine.
FULL_SECONDS, FULL_MB, REFRESH_SECONDS, SPEEDUP = 10.0, 500.0, 1.0, 10.0


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def high_water_mb() -> float | None:
    """VmHWM, the peak RSS of this process's memory since its execve: a cross-check of `peak_mb`."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the measured processes (`bench/drift.py --child ...`) ---------------------------------------------------

def child_refresh(url: str) -> int:
    """One refresh over everything new in the log, printed as a JSON line; then one more per "refresh" line
    read from stdin (the parent appends rows in between), until stdin closes."""
    from modelrun.db import make_engine
    from modelrun.drift.refresh import Refresher, Target

    engine = make_engine(url)
    target = Target(name=DEPLOYMENT, status="READY", revision=1, serving_revision=1, config={})
    refresher = Refresher(engine)
    before = peak_mb()
    while True:
        cpu, started = cpu_seconds(), time.perf_counter()
        reports = refresher.refresh([target])[DEPLOYMENT]
        seconds = time.perf_counter() - started
        whole = next(r for r in reports if r["window"]["id"] == "all")
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu, "peak_rss_mb": peak_mb(),
                          "vm_hwm_mb": high_water_mb(), "rss_before_mb": before,
                          "production_rows": whole["rows"]["production"],
                          "windows": [r["window"]["id"] for r in reports], "status": whole["status"],
                          "drifted": whole["drifted_features"]}), flush=True)
        if sys.stdin.readline().strip() != "refresh":
            return 0


def child_inmemory(reference_path: str, current_path: str, out_path: str) -> int:
    """`inmemory.compare` on the two parquet frames; its time, peak RSS and per-column results to `out_path`."""
    import pandas as pd

    from modelrun.drift.inmemory import compare

    reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
    cpu, started = cpu_seconds(), time.perf_counter()
    report = compare(reference, current)
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu, "peak_rss_mb": peak_mb(),
           "vm_hwm_mb": high_water_mb(),
           "columns": {c["name"]: {"test": c["test"], "score": c["score"], "threshold": c["threshold"],
                                   "drifted": c["drifted"], "type": c["type"]} for c in report["features"]},
           "dataset_drift": report["dataset_drift"], "drifted_share": report["drifted_share"]}
    Path(out_path).write_text(json.dumps(out, indent=1))
    return 0


# ---- data -----------------------------------------------------------------------------------------------------

CATEGORIES = {"c0": 4, "c1": 6, "c2": 8, "c3": 10, "c4": 12}
SHIFTED = ["n1", "n5", "n7", "c3"]  # what production moves (n2 moves a little, below the threshold)
FLOAT32 = ["n8", "n9"]  # float32 values (logged from FP32 tensors)


def features(n: int, seed: int, *, production: bool):
    """n rows of the 15 features; `production` shifts SHIFTED."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    shift = 1.0 if production else 0.0
    cols = {
        "n0": rng.normal(0.0, 1.0, n),
        "n1": rng.normal(50.0 + 3.0 * shift, 10.0, n),
        "n2": rng.lognormal(0.0, 0.5 + 0.02 * shift, n),
        "n3": rng.uniform(0.0, 100.0, n),
        "n4": rng.exponential(2.0, n),
        "n5": rng.gamma(2.0, 2.0 + 0.6 * shift, n),
        "n6": np.round(rng.normal(20.0, 5.0, n), 1),  # a measurement with one decimal
        "n7": rng.beta(2.0 + shift, 5.0, n),
        "n8": rng.normal(0.0, 1.0, n).astype(np.float32).astype(np.float64),
        "n9": rng.uniform(-1.0, 1.0, n).astype(np.float32).astype(np.float64),
    }
    base = np.random.default_rng(12345)  # the categories' frequencies, the same on both sides
    for name, count in CATEGORIES.items():
        weights = base.dirichlet(np.ones(count) * 2.0)
        if production and name in SHIFTED:
            weights = np.roll(weights, 1) * 0.6 + weights * 0.4
        labels = np.array([f"{name}-{k:02d}" for k in range(count)], dtype=object)
        cols[name] = labels[rng.choice(count, size=n, p=weights / weights.sum())]
    return pd.DataFrame(cols)


def score_of(frame):
    """The model's output: a float32 score in (0, 1)."""
    import numpy as np

    z = (0.04 * (frame["n1"] - 50) - 0.3 * frame["n0"] + 0.2 * frame["n5"] - 0.8
         + 0.5 * (frame["c3"] == "c3-01") + 0.3 * frame["n8"])
    return (1.0 / (1.0 + np.exp(-z.to_numpy()))).astype(np.float32)


def request_sizes(rows: int, seed: int):
    """Rows per logged request: 95% one-row requests, the rest 2-8 rows; summing to `rows`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(rows) < 0.95, 1, rng.integers(2, 9, rows))
    ends = np.cumsum(sizes)
    count = int(np.searchsorted(ends, rows)) + 1
    sizes = sizes[:count].copy()
    sizes[-1] -= int(ends[count - 1] - rows)
    return sizes


def encode_log(frame, scores, sizes, start: datetime, end: datetime, prefix: str) -> list[dict]:
    """Log rows of `frame` cut into requests of `sizes` rows, their timestamps evenly from `start` to `end`."""
    import numpy as np

    from modelrun.db.predictions import encode_row

    arrays = {name: (frame[name].to_numpy(np.float32) if name in FLOAT32 else frame[name].to_numpy())
              for name in frame.columns}
    stamps = np.linspace(0.0, (end - start).total_seconds(), len(sizes))
    rows, at = [], 0
    for index, (size, offset) in enumerate(zip(sizes.tolist(), stamps.tolist())):
        stop = at + size
        rows.append(encode_row(DEPLOYMENT, 1, f"{prefix}{index:09d}", "", start + timedelta(seconds=offset),
                               {name: values[at:stop] for name, values in arrays.items()},
                               {"score": scores[at:stop]}, 1.0))
        at = stop
    return rows


def insert(engine, rows: list[dict]) -> None:
    from modelrun.db.predictions import insert_ignoring_duplicates

    for first in range(0, len(rows), TRANSACTION_ROWS):
        with engine.begin() as conn:
            part = rows[first:first + TRANSACTION_ROWS]
            for at in range(0, len(part), INSERT_CHUNK):
                insert_ignoring_duplicates(conn, part[at:at + INSERT_CHUNK])


# ---- databases ------------------------------------------------------------------------------------------------

def fresh_database(backend: str, tmp: Path):
    """(url, drop) of an empty database."""
    import sqlalchemy as sa

    if backend == "sqlite":
        return f"sqlite:///{tmp / 'drift-bench.db'}", lambda: None
    server = sa.make_url(MARIADB_URL if backend == "mariadb" else POSTGRES_URL)
    name = f"mr_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if backend == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()

    return server.set(database=name).render_as_string(hide_password=False), drop


def server_version(engine) -> str:
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            return "SQLite " + conn.exec_driver_sql("select sqlite_version()").scalar()
        return conn.exec_driver_sql("select version()").scalar().split("-")[0]


def server_pid(backend: str) -> int | None:
    """The local database server's pid (its CPU time is read from /proc), when it runs on this machine."""
    names = {"mariadb": ("mariadbd", "mysqld"), "postgresql": ()}.get(backend, ())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    return int(entry.name)
            except OSError:
                continue
    return None


def process_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measured(*command: str) -> list[str]:
    """`command`, started through a small trampoline process (`--child run`), so that its getrusage peak RSS
    is its own: Linux carries the peak RSS of the memory a process leaves at execve into its ru_maxrss, and a
    child of this process would start from this process's (the whole encoded log, over 1 GB)."""
    return [sys.executable, str(Path(__file__).resolve()), "--child", "run", *command]


def ourselves(*args: str) -> list[str]:
    return measured(sys.executable, str(Path(__file__).resolve()), "--child", *args)


def spawn(*args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(ourselves(*args), cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, text=True)


def result_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"the refresh process exited ({proc.returncode}) without a result")
    return json.loads(line)


def run_database(backend: str, tmp: Path, data: dict, new_rows: int) -> dict:
    """Load the log into a fresh database, then the full run, the warm refresh and the cold one."""
    import pandas as pd

    import modelrun.db.predictions  # noqa: F401  (puts `predictions` in the metadata create_schema creates)
    from modelrun.db import create_schema, make_engine
    from modelrun.drift import store
    from modelrun.drift.profile import build_profile

    url, drop = fresh_database(backend, tmp)
    engine = make_engine(url)
    try:
        create_schema(engine)
        with engine.begin() as conn:
            store.save_profile(conn, DEPLOYMENT, 1, "features", build_profile(data["reference"]), data["created"])
            store.save_profile(conn, DEPLOYMENT, 1, "outputs",
                               build_profile(pd.DataFrame({"score": data["reference_scores"]})), data["created"])
        started = time.perf_counter()
        insert(engine, data["log"])
        say(f"{LABELS[backend]}: {len(data['log'])} log rows loaded in {time.perf_counter() - started:.0f} s "
            f"(not measured)")
        version = server_version(engine)
        pid = server_pid(backend) if backend != "sqlite" and sa_host(url) in ("127.0.0.1", "localhost") else None

        server_before, started = process_cpu(pid), time.perf_counter()
        proc = spawn("refresh", url, stdin=subprocess.PIPE)
        try:
            full = result_line(proc)
            full["process_seconds"] = time.perf_counter() - started
            server_after = process_cpu(pid)
            full["server_cpu_seconds"] = None if server_before is None or server_after is None else \
                server_after - server_before
            say(f"{LABELS[backend]}: full run {full['seconds']:.2f} s, peak {full['peak_rss_mb']:.0f} MB, "
                f"{full['production_rows']} rows counted")
            insert(engine, encode_new(data["new"][0], "w"))
            proc.stdin.write("refresh\n")
            proc.stdin.flush()
            warm = result_line(proc)
            say(f"{LABELS[backend]}: refresh after {new_rows} new rows (warm process) {warm['seconds']:.3f} s")
        finally:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            proc.wait(timeout=600)
        insert(engine, encode_new(data["new"][1], "c"))
        started = time.perf_counter()
        proc = spawn("refresh", url, stdin=subprocess.DEVNULL)
        cold = result_line(proc)
        proc.wait(timeout=600)
        cold["process_seconds"] = time.perf_counter() - started
        say(f"{LABELS[backend]}: refresh after {new_rows} more rows (new process) {cold['seconds']:.3f} s, "
            f"{cold['process_seconds']:.2f} s with the process start")
    finally:
        engine.dispose()
        drop()
    return {"database": backend, "version": version, "log_rows": len(data["log"]), "full": full, "warm": warm,
            "cold": cold}


def sa_host(url: str) -> str | None:
    import sqlalchemy as sa

    return sa.make_url(url).host


def encode_new(batch: tuple, prefix: str) -> list[dict]:
    """New production rows, stamped over the last minute (they arrive now)."""
    frame, scores, sizes = batch
    now = datetime.now(UTC).replace(tzinfo=None)
    return encode_log(frame, scores, sizes, now - timedelta(minutes=1), now, prefix)


# ---- in memory against Evidently --------------------------------------------------------------------------------

def run_inmemory(tmp: Path, reference, current, skip_evidently: bool) -> dict:
    ref_path, cur_path = tmp / "reference.parquet", tmp / "current.parquet"
    reference.to_parquet(ref_path, index=False)
    current.to_parquet(cur_path, index=False)
    ours_path = tmp / "modelrun.json"
    subprocess.run(ourselves("inmemory", str(ref_path), str(cur_path), str(ours_path)), cwd=ROOT, check=True,
                   timeout=1800)
    ours = json.loads(ours_path.read_text())
    say(f"in memory: modelrun {ours['seconds']:.2f} s, peak {ours['peak_rss_mb']:.0f} MB")
    result = {"modelrun": ours, "evidently": None, "evidently_skipped": None}
    if skip_evidently:
        result["evidently_skipped"] = "skipped (--skip-evidently)"
        return result
    made = subprocess.run(["bash", str(BENCH / "evidently_env.sh")], cwd=ROOT, capture_output=True, text=True)
    python = made.stdout.strip().splitlines()[-1] if made.returncode == 0 and made.stdout.strip() else None
    if python is None:
        result["evidently_skipped"] = ("skipped: bench/evidently_env.sh could not make Evidently's virtualenv: "
                                       + (made.stderr.strip().splitlines() or ["no output"])[-1])
        say(result["evidently_skipped"])
        return result
    theirs_path = tmp / "evidently.json"
    say("in memory: Evidently's DataDriftPreset (its own virtualenv)...")
    subprocess.run(measured(python, str(BENCH / "evidently_run.py"), str(ref_path), str(cur_path), str(theirs_path)),
                   cwd=ROOT, check=True, timeout=3600)
    theirs = json.loads(theirs_path.read_text())
    say(f"in memory: Evidently {theirs['seconds']:.2f} s, peak {theirs['peak_rss_mb']:.0f} MB")
    result["evidently"] = theirs
    result["comparison"] = compare_scores(ours, theirs)
    return result


def compare_scores(ours: dict, theirs: dict) -> dict:
    """Score differences over the columns where both ran the same test, and the verdicts' agreement."""
    same, other = [], []
    for name, mine in ours["columns"].items():
        them = theirs["columns"].get(name)
        if them is None:
            continue
        if mine["test"] == them["method"]:
            same.append({"column": name, "test": mine["test"], "ours": mine["score"], "evidently": them["score"],
                         "difference": abs(mine["score"] - them["score"]),
                         "same_verdict": mine["drifted"] == them["drifted"]})
        else:
            other.append({"column": name, "ours": mine["test"], "evidently": them["method"]})
    largest = max(same, key=lambda c: c["difference"]) if same else None
    return {"same_test": same, "different_test": other, "largest": largest,
            "verdicts_agree": all(c["same_verdict"] for c in same),
            "dataset_drift_agrees": ours["dataset_drift"] == theirs["dataset_drift"]}


# ---- the table ------------------------------------------------------------------------------------------------

def git_revision() -> str:
    """The commit measured, marked when the code measured here differs from it (a shared working tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [path for path in ("modelrun/drift", "modelrun/db") if git("status", "--porcelain", "--", path)]
    return commit + (f" + uncommitted changes in {', '.join(p + '/' for p in dirty)}" if dirty else "")


def environment() -> dict:
    from importlib.metadata import version

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_revision(),
            "nproc": len(os.sched_getaffinity(0)), "loadavg_1m": round(os.getloadavg()[0], 1),
            "machine": platform.machine(), "python": platform.python_version(),
            "versions": {name: version(name) for name in ("numpy", "pandas", "scipy", "SQLAlchemy", "orjson")}}


def targets(doc: dict) -> list[dict]:
    found = []
    by = {r["database"]: r for r in doc["databases"]}
    if lite := by.get("sqlite"):
        full = lite["full"]
        found.append({"target": f"full run from SQLite <= {FULL_SECONDS:g} s", "value": f"{full['seconds']:.1f} s",
                      "met": full["seconds"] <= FULL_SECONDS})
        found.append({"target": f"full run from SQLite <= {FULL_MB:g} MB peak",
                      "value": f"{full['peak_rss_mb']:.0f} MB", "met": full["peak_rss_mb"] <= FULL_MB})
    for r in doc["databases"]:
        found.append({"target": f"refresh after {doc['new_rows'] // 1000}k new rows ({LABELS[r['database']]}, warm "
                                f"process) <= {REFRESH_SECONDS:g} s",
                      "value": f"{r['warm']['seconds']:.2f} s (new process: {r['cold']['seconds']:.2f} s)",
                      "met": r["warm"]["seconds"] <= REFRESH_SECONDS})
    memory = doc["inmemory"]
    if memory and memory.get("evidently"):
        ratio = memory["evidently"]["seconds"] / memory["modelrun"]["seconds"]
        found.append({"target": f">= {SPEEDUP:g}x faster than Evidently's DataDriftPreset (in memory)",
                      "value": f"{ratio:.1f}x", "met": ratio >= SPEEDUP})
        comparison = memory["comparison"]
        largest = comparison["largest"]
        found.append({"target": f"scores equal to {SCORE_TOLERANCE:g} where both run the same test",
                      "value": "no column ran the same test" if largest is None else
                      f"largest difference {largest['difference']:.1e} ({largest['column']}, {largest['test']}) over "
                      f"{len(comparison['same_test'])} of {len(memory['modelrun']['columns'])} columns",
                      "met": largest is not None and largest["difference"] <= SCORE_TOLERANCE})
    return found


def fmt(value, digits: int = 2, none: str = "-") -> str:
    return none if value is None else f"{value:.{digits}f}"


def agreement(ours: dict, theirs: dict, comparison: dict) -> str:
    """The in-memory comparison in words: time and memory ratios, per-column score differences, verdicts."""
    different = comparison["different_test"]
    tests = f"Same test on {len(comparison['same_test'])} of {len(ours['columns'])} columns"
    if different:
        tests += " (not on: " + ", ".join(f"{c['column']} ours {c['ours']}, Evidently {c['evidently']}"
                                          for c in different) + ")"
    per_column = ", ".join(f"{c['column']} {c['test']} {c['difference']:.1e}" for c in comparison["same_test"])
    return (f"Evidently / modelrun time: **{theirs['seconds'] / ours['seconds']:.1f}x**; peak memory "
            f"{theirs['peak_rss_mb']:.0f} MB / {ours['peak_rss_mb']:.0f} MB. {tests}; per column |ours - Evidently|: "
            f"{per_column}. Column verdicts {'all agree' if comparison['verdicts_agree'] else 'DIFFER'}, dataset drift "
            f"{'agrees' if comparison['dataset_drift_agrees'] else 'DIFFERS'} (ours: {ours['dataset_drift']}, "
            f"drifted share {ours['drifted_share']:.2f}).")


def table_lines(doc: dict) -> list[str]:
    k = f"{doc['new_rows'] // 1000}k" if doc["new_rows"] >= 1000 else str(doc["new_rows"])
    lines = [f"| database | production rows (log rows) | full run s | full run, whole process s | peak MB | CPU s "
             f"| database server CPU s | refresh after {k} new rows, warm process s | after {k} more, new process s "
             f"(whole process) |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in doc["databases"]:
        full, warm, cold = r["full"], r["warm"], r["cold"]
        server_cpu = "in process" if r["database"] == "sqlite" else fmt(full["server_cpu_seconds"], 1, "n/a")
        lines.append(f"| {LABELS[r['database']]} ({r['version']}) | {full['production_rows']:,} ({r['log_rows']:,}) "
                     f"| {full['seconds']:.2f} | {full['process_seconds']:.2f} | {full['peak_rss_mb']:.0f} "
                     f"| {full['cpu_seconds']:.2f} | {server_cpu} "
                     f"| {warm['seconds']:.3f} | {cold['seconds']:.3f} ({cold['process_seconds']:.2f}) |")
    memory = doc["inmemory"]
    if memory:
        ours, theirs = memory["modelrun"], memory.get("evidently")
        lines += ["", f"| in memory: {doc['rows']:,} production rows against {doc['reference_rows']:,} | seconds "
                  "| CPU s | peak MB |", "|---|--:|--:|--:|",
                  f"| modelrun `inmemory.compare` (method `evidently`) | {ours['seconds']:.2f} "
                  f"| {ours['cpu_seconds']:.2f} | {ours['peak_rss_mb']:.0f} |"]
        if theirs:
            lines.append(f"| Evidently {theirs['evidently_version']} `DataDriftPreset` (own virtualenv) "
                         f"| {theirs['seconds']:.2f} | - | {theirs['peak_rss_mb']:.0f} |")
            lines += ["", agreement(ours, theirs, memory["comparison"])]
        else:
            lines += ["", f"Evidently: {memory['evidently_skipped']}."]
    lines.append("")
    for t in doc["targets"]:
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"- {t['target']}: {t['value']} — **{verdict}**")
    return lines


def section(doc: dict) -> str:
    env = doc["environment"]
    versions = " · ".join(f"{name} {v}" for name, v in env["versions"].items())
    baseline = "/".join(f"{r['full']['rss_before_mb']:.0f}" for r in doc["databases"]) or "-"
    return "\n".join([
        DRIFT_START,
        "## Drift monitoring",
        "",
        *textwrap.wrap(
            "Generated by `make bench-drift` (`bench/drift.py`; see `bench/README.md`). Seeded synthetic data: 15 "
            "features (10 numerical floats, 3 shifted in production, 2 holding float32 values; 5 categorical strings "
            f"of 4-12 categories, 1 shifted) and one output, `score`. A {doc['reference_rows']:,}-row reference "
            f"profile; {doc['rows']:,} production rows logged as a model server logs them (95% one-row requests, the "
            f"rest 2-8 rows; {HOURS} hours of timestamps, so hourly, daily and whole-life buckets are all filled). "
            "*Full run*: a fresh process makes a `Refresher` and calls `refresh()` once over the whole log (every "
            "window's report included); seconds and CPU are that call's, *whole process* adds the interpreter start "
            f"and imports, *peak MB* is the process's peak RSS (imports included: {baseline} MB before the refresh "
            "starts), *database server CPU* what the local database server spent meanwhile (a shared server: other "
            f"sessions' queries count too). Then {doc['new_rows']:,} new rows and a refresh in the same process "
            "(warm: code and reference loaded, as in the control plane), and "
            f"{doc['new_rows']:,} more and a refresh in a new process (the call; in parentheses the whole process). "
            "*In memory*: the same frames as pandas frames, each tool in its own process reading the same parquet "
            "files; seconds exclude reading them, peak MB include it. The machine is shared and has 2 cores; "
            "the numbers move from run to run.", 115),
        "",
        f"{env['date']} · commit {env['commit']} · nproc {env['nproc']} ({env['machine']}), load average "
        f"{env['loadavg_start']} before, {env['loadavg_1m']} at the end · Python {env['python']} · {versions}",
        "",
        *table_lines(doc),
        DRIFT_END,
        "",
    ])


def write_section(path: Path, text: str) -> None:
    """Replace the drift section of `path` (or append it; or create the file with only it)."""
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(DRIFT_START) + r".*?" + re.escape(DRIFT_END) + r"\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old, count=1)
    elif old:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        new = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


# ---- main -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if argv[1] == "run":
            return subprocess.run(argv[2:]).returncode
        if argv[1] == "refresh":
            return child_refresh(argv[2])
        if argv[1] == "inmemory":
            return child_inmemory(*argv[2:5])
        raise SystemExit(f"unknown child mode {argv[1]!r}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="production rows (default 1,000,000; --quick 100,000)")
    parser.add_argument("--reference-rows", type=int, default=None,
                        help="reference rows (default 100,000; --quick 20,000)")
    parser.add_argument("--new-rows", type=int, default=None,
                        help="rows added before each incremental refresh (default 10,000; --quick 1,000)")
    parser.add_argument("--databases", default="sqlite,mariadb", help="comma list of sqlite, mariadb, postgresql")
    parser.add_argument("--skip-evidently", action="store_true", help="leave out Evidently (its virtualenv)")
    parser.add_argument("--skip-inmemory", action="store_true", help="leave out the in-memory comparison entirely")
    parser.add_argument("--quick", action="store_true", help="smoke run: smaller defaults")
    parser.add_argument("--output", default=None, help="markdown file whose drift section is replaced "
                        "(default docs/benchmarks.md; with --quick nothing is written unless asked)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    reference_rows = args.reference_rows or (20_000 if args.quick else 100_000)
    new_rows = args.new_rows or (1_000 if args.quick else 10_000)
    backends = [b for b in args.databases.split(",") if b]
    unknown = [b for b in backends if b not in LABELS]
    if unknown:
        parser.error(f"unknown database {unknown[0]!r}; valid: {', '.join(LABELS)}")
    output = args.output or (None if args.quick else str(ROOT / "docs" / "benchmarks.md"))
    loadavg_start = round(os.getloadavg()[0], 1)

    started = time.perf_counter()
    reference = features(reference_rows, 1, production=False)
    production = features(rows + 2 * new_rows, 2, production=True)
    scores = score_of(production)
    current = production.iloc[:rows]
    now = datetime.now(UTC).replace(tzinfo=None)
    first = now - timedelta(hours=HOURS)
    data = {"reference": reference, "reference_scores": score_of(reference), "created": first - timedelta(hours=1),
            "log": encode_log(current, scores[:rows], request_sizes(rows, 3), first, now - timedelta(minutes=2), "q"),
            "new": [(production.iloc[rows + k * new_rows: rows + (k + 1) * new_rows],
                     scores[rows + k * new_rows: rows + (k + 1) * new_rows], request_sizes(new_rows, 4 + k))
                    for k in range(2)]}
    say(f"data: {reference_rows:,} reference rows, {rows:,} production rows in {len(data['log']):,} log rows "
        f"({time.perf_counter() - started:.0f} s, not measured)")

    with tempfile.TemporaryDirectory(prefix="modelrun-drift-bench-") as tmp:
        results = [run_database(backend, Path(tmp), data, new_rows) for backend in backends]
        del data
        inmemory = None if args.skip_inmemory else run_inmemory(Path(tmp), reference, current, args.skip_evidently)

    env = environment()
    env["loadavg_start"] = loadavg_start
    doc = {"environment": env, "rows": rows, "reference_rows": reference_rows, "new_rows": new_rows,
           "databases": results, "inmemory": inmemory}
    doc["targets"] = targets(doc)
    say("\n".join(table_lines(doc)))
    if output:
        write_section(Path(output), section(doc))
        say(f"wrote the drift section of {output}")
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
