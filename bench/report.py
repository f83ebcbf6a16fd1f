"""The model-server benchmark's results: medians, targets, the environment, text and markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results: list[dict], labels: dict[str, str], client_limit: float) -> list[dict]:
    """One row per (server, concurrency): medians over repetitions, and the share of the ceiling's rps.
    A row is client-limited when the client used more than `client_limit` of a core in most repetitions."""
    rows = {}
    for r in results:
        rows.setdefault((r["server"], r["concurrency"]), []).append(r)
    summary = []
    for (key, c), runs in rows.items():
        limited = sum(1 for r in runs if (r.get("client_core") or 0) > client_limit)
        summary.append({"server": key, "label": labels[key], "concurrency": c,
                        "rps": _median(r["rps"] for r in runs),
                        "p50_ms": _median(r["p50_ms"] for r in runs),
                        "p99_ms": _median(r["p99_ms"] for r in runs),
                        "server_cpu_us": _median(r["server_cpu_us"] for r in runs),
                        "client_cpu_us": _median(r["client_cpu_us"] for r in runs),
                        "client_core": _median(r.get("client_core") for r in runs),
                        "client_limited": limited * 2 > len(runs),
                        "unstable": sum(1 for r in runs if r.get("unstable")),
                        "errors": sum(sum(r["errors"].values()) for r in runs),
                        "error_kinds": sorted({kind for r in runs for kind in r["errors"]}), "reps": len(runs)})
    # The share of the ceiling is taken per repetition (the two ran seconds apart), then the median.
    ceiling = {(r["rep"], r["concurrency"]): r["rps"] for r in results if r["server"] == "ceiling" and r["rps"]}
    for row in summary:
        shares = [r["rps"] / ceiling[r["rep"], r["concurrency"]] for r in rows[row["server"], row["concurrency"]]
                  if (r["rep"], r["concurrency"]) in ceiling and r["rps"]]
        row["vs_ceiling"] = statistics.median(shares) if shares else None
    order = list(labels)
    return sorted(summary, key=lambda row: (row["concurrency"], order.index(row["server"])))


def targets(rows: list[dict]) -> list[dict]:
    by = {(r["server"], r["concurrency"]): r for r in rows}
    on32, on8, seq, ceiling32 = by.get(("on", 32)), by.get(("on", 8)), by.get(("on", 1)), by.get(("ceiling", 32))

    def share(row, floor):
        ratio = row["vs_ceiling"] if row else None
        return (None, None) if ratio is None else (f"{ratio:.0%}", ratio >= floor)

    cpu = None
    if on32 and ceiling32 and on32["server_cpu_us"] and ceiling32["server_cpu_us"]:
        cpu = on32["server_cpu_us"] / ceiling32["server_cpu_us"]
    p50 = seq["p50_ms"] if seq else None
    found = [("c=32, logging on: rps >= 75% of the ceiling's", *share(on32, 0.75)),
             ("c=32, logging on: server CPU per request <= 1.33x the ceiling's",
              None if cpu is None
              else f"{cpu:.2f}x ({on32['server_cpu_us']:.0f} vs {ceiling32['server_cpu_us']:.0f} µs)",
              None if cpu is None else cpu <= 1.33),
             ("c=8, logging on: rps >= 60% of the ceiling's", *share(on8, 0.60)),
             ("c=1, logging on: p50 <= 1.3 ms", None if p50 is None else f"{p50:.2f} ms",
              None if p50 is None else p50 <= 1.3)]
    return [{"target": t, "value": v, "met": m} for t, v, m in found]


def progress_line(r: dict) -> str:
    """One measured repetition, for the progress output."""
    if r["rps"] is None:
        return "failed: " + "; ".join(r["errors"])
    cpu = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    return (f"{r['rps']:8.0f} rps  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  CPU µs/req server "
            f"{cpu(r['server_cpu_us'])} client {cpu(r['client_cpu_us'])} ({r['client_core'] or 0:.0%} of a core)"
            f"{'  unstable' if r.get('unstable') else ''}  errors {sum(r['errors'].values())}")


def git_revision(root: Path) -> str:
    """The commit measured, marked when the server's files differ from it (a shared working tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes in serving/" if git("status", "--porcelain", "--", "serving") else "")


def environment(root: Path) -> dict:
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_revision(root),
            "nproc": len(os.sched_getaffinity(0)), "loadavg_1m": round(os.getloadavg()[0], 1),
            "machine": platform.machine(), "python": platform.python_version(),
            "tensorflow": version("tensorflow-cpu"), "grpcio": version("grpcio"), "protobuf": version("protobuf")}


def _number(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table_lines(doc: dict) -> list[str]:
    lines = ["| server | concurrency | rps | p50 ms | p99 ms | vs ceiling | server CPU µs/req | client CPU µs/req "
             "| client-limited? | errors |",
             "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for r in doc["rows"]:
        limited = f"**yes** ({r['client_core']:.0%} of a core)" if r["client_limited"] else (
            "no" if r["client_core"] is None else f"no ({r['client_core']:.0%})")
        errors = str(r["errors"]) + (f" ({'; '.join(r['error_kinds'])})" if r["error_kinds"] else "")
        if r["unstable"]:
            errors += f", {r['unstable']}/{r['reps']} reps unstable"
        lines.append(f"| {r['label']} | {r['concurrency']} | {_number(r['rps'], '.0f')} "
                     f"| {_number(r['p50_ms'], '.2f')} "
                     f"| {_number(r['p99_ms'], '.2f')} | {_number(r['vs_ceiling'], '.0%')} "
                     f"| {_number(r['server_cpu_us'], '.0f')} | {_number(r['client_cpu_us'], '.0f')} | {limited} "
                     f"| {errors} |")
    for label, why in doc.get("not_run", {}).items():
        lines.append(f"| {label} | — | not run: {why} | | | | | | | |")
    lines.append("")
    for t in doc["targets"]:
        verdict = "n/a (not measured)" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"- {t['target']}: {t['value'] or '-'} — **{verdict}**")
    if log := doc["prediction_log"]:
        lines.append(f"- prediction log: {log['answered']} requests answered (the server's ModelStatistics), "
                     f"{log['rows_while_running']} rows while "
                     f"running, {log['rows_after_stop']} after SIGTERM — **{'match' if log['match'] else 'MISMATCH'}**")
    if batching := doc.get("batching"):
        lines.append("- adaptive batching over the whole run (from the server's log at stop): " + "; ".join(
            f"logging {key}: {b['requests']} requests in {b['calls']} model calls ({b['per_call']:.2f} per call"
            + (f", {b['waits_expired']} waited the whole batching wait" if b.get("waits_expired") is not None else "")
            + ")" for key, b in batching.items()))
    return lines


def markdown(doc: dict) -> str:
    env, m = doc["environment"], doc["measurement"]
    if m["client"] == "perf_analyzer":
        how = [f"Load: Triton's `perf_analyzer` (C++; concurrency C = C synchronous gRPC clients, random FP32 [1, 8]",
               f"per request), {m['window_ms']} ms time windows until three in a row agree within {m['stability']:g} %",
               f"(rps and p50), at most {m['max_trials']} windows; a row that never settles is measured again with any",
               "three windows and counted as *unstable*. rps, p50 and p99 are perf_analyzer's over its stable windows."]
    else:
        how = [f"Load: the Python `bench/loadgen.py` (grpc.aio, C tasks), {m['warmup_s']:g} s warm-up then "
               f"{m['duration_s']:g} s measured."]
    return "\n".join([
        "# Benchmarks", "",
        "Generated by `make bench` (`bench/serving.py`; see `bench/README.md`). Closed-loop gRPC `ModelInfer` load",
        "against the 8-feature model `Input(8) -> Dense(64, relu) -> Dense(1)` served by modelrun with prediction",
        "logging off and on (SQLite) and by MLServer 1.7.1 (a small TensorFlow runtime, `bench/mlserver_runtime.py`:",
        "one process, adaptive batching of up to 256 rows / 2 ms: it always waits the whole time, so it keeps",
        "this shorter wait rather than modelrun's 8 ms, which modelrun's calls cut short once they hold as many",
        "requests as recent calls did), and against the *protocol",
        "ceiling*: a minimal V2 server on modelrun's grpc.aio stack that answers without a model.", *how,
        f"Each row is the median of {doc['reps']} interleaved repetitions; *vs ceiling* is the median of each",
        "repetition's rps over the ceiling's in the same repetition. *Server CPU* is the server's CPU time (its",
        "whole process tree, all threads) and *client CPU* perf_analyzer's, each per answered request over the",
        "client's whole run; other load disturbs them much less than rps. *Client-limited*: the client used more",
        f"than {doc['client_limit']:.0%} of a core (client CPU per request x rps), so the row may measure the client.",
        "The machine is shared, so absolute numbers are noisy; the ratio to the ceiling is what counts.", "",
        f"{env['date']} · commit {env['commit']} · nproc {env['nproc']} ({env['machine']}), load average "
        f"{env['loadavg_1m']} at the end (the benchmark's own included) · Python {env['python']} · TensorFlow "
        f"{env['tensorflow']} · grpcio {env['grpcio']} · protobuf {env['protobuf']}", "",
        *table_lines(doc), "",
    ])
