"""One measured row with Triton's perf_analyzer (the C++ load generator shipped in the tritonclient wheel).

perf_analyzer runs a closed loop of C synchronous gRPC clients sending `ModelInfer` ([1, 8] FP32, random
data) and measures in its own time windows until three in a row agree within `stability` percent (rps and
p50 latency), or gives up after `max_trials` windows. Its CSV (`--verbose-csv`) gives rps, p50 and p99 of the
stable windows; its profile export lists every request it sent (warm-up and unstable windows too), which
gives what the server answered in total and over how long — the basis of CPU per request. Its own CPU time
is this process's children's resource usage before and after it ran.

A row that never stabilizes is measured again with any three windows accepted, and marked unstable.
perf_analyzer needs libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel; no GPU is used) and libb64.so.0d
(Debian's libb64-0d).
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"
UNSTABLE = "Failed to obtain stable measurement"


def cuda_runtime_lib() -> Path | None:
    """The folder of libcudart.so.12 inside the nvidia-cuda-runtime-cu12 wheel, if it is installed."""
    try:
        import nvidia.cuda_runtime
    except ImportError:
        return None
    folder = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return folder if (folder / "libcudart.so.12").exists() else None


def missing() -> str | None:
    """Why perf_analyzer cannot run here, or None."""
    if not PERF_ANALYZER.exists():
        return f"{PERF_ANALYZER} missing (it comes with the tritonclient wheel)"
    if cuda_runtime_lib() is None:
        return "libcudart.so.12 missing: pip install nvidia-cuda-runtime-cu12 (see requirements.txt)"
    return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(target: str, model: str, concurrency: int, window_ms: int, stability: float, max_trials: int,
              workdir: Path, server_cpu: Callable[[], float]) -> tuple[subprocess.CompletedProcess, float, float]:
    csv_path, export_path = workdir / "perf.csv", workdir / "perf-export.json"
    for stale in (csv_path, export_path):
        stale.unlink(missing_ok=True)
    cmd = [str(PERF_ANALYZER), "-m", model, "-u", target, "-i", "grpc", "-b", "1", "--input-data", "random",
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-mode", "time_windows",
           "-p", str(window_ms), "-s", str(stability), "-r", str(max_trials), "--percentile", "50",
           "-f", str(csv_path), "--verbose-csv", "--profile-export-file", str(export_path)]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        filter(None, [str(cuda_runtime_lib()), os.environ.get("LD_LIBRARY_PATH")]))}
    cpu_before, server_before = _children_cpu(), server_cpu()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=60 + max_trials * window_ms / 1000 * 3)
    except subprocess.TimeoutExpired as exc:  # a hung server: a failed row, not a failed benchmark
        done = subprocess.CompletedProcess(cmd, -9, "", f"timed out after {exc.timeout:.0f} s")
    return done, _children_cpu() - cpu_before, server_cpu() - server_before


def run(target: str, model: str, concurrency: int, *, window_ms: int, stability: float, max_trials: int,
        workdir: Path, server_cpu: Callable[[], float]) -> dict:
    """Measure one row. `server_cpu()` gives the server's CPU seconds so far. Returns rps, p50/p99 ms,
    `ok_total` (every answered request of the run), `client_cpu_us` and `server_cpu_us` per answered request,
    `unstable`, and `errors` (a failed run: {"perf_analyzer: <last line>": 1})."""
    args = (target, model, concurrency, window_ms)
    done, client_cpu, server_cpu_s = _run_once(*args, stability, max_trials, workdir, server_cpu)
    unstable = UNSTABLE in done.stdout + done.stderr
    if unstable:  # perf_analyzer writes nothing then: take any three windows (CPU from this run only), say so
        done, client_cpu, server_cpu_s = _run_once(*args, 999, 3, workdir, server_cpu)
    csv_path, export_path = workdir / "perf.csv", workdir / "perf-export.json"
    result = {"concurrency": concurrency, "unstable": unstable, "errors": {}, "rps": None, "p50_ms": None,
              "p99_ms": None, "ok_total": 0, "client_cpu_us": None, "server_cpu_us": None}
    if done.returncode != 0 or not csv_path.exists():
        last = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        result["errors"] = {f"perf_analyzer: {last[:200]}": 1}
        return result
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    requests = json.loads(export_path.read_text())["experiments"][0]["requests"]
    answered = [r for r in requests if r.get("response_timestamps")]
    result.update(rps=float(row["Inferences/Second"]), p50_ms=float(row["p50 latency"]) / 1000,
                  p99_ms=float(row["p99 latency"]) / 1000, ok_total=len(answered),
                  client_cpu_us=client_cpu * 1e6 / max(len(answered), 1),
                  server_cpu_us=server_cpu_s * 1e6 / max(len(answered), 1))
    if len(answered) < len(requests):
        result["errors"] = {"no response": len(requests) - len(answered)}
    return result
