"""Model-server benchmark: perf_analyzer's closed-loop ModelInfer load against modelrun, a no-model protocol
ceiling and MLServer 1.7.1.

Starts the servers as subprocesses on free loopback ports: the ceiling (bench/ceiling.py); `python -m serving`
for the 8-feature model `Input(8) -> Dense(64, relu) -> Dense(1)` with prediction logging off and on (SQLite);
and MLServer 1.7.1 serving the same .keras file with a small TensorFlow runtime (bench/mlserver_runtime.py) in
its own virtualenv (bench/mlserver_env.sh). For every repetition, concurrency and server (interleaved, so
machine noise hits all alike) a fresh perf_analyzer process (bench/perf_client.py; `--client loadgen`: the
Python bench/loadgen.py) measures rps, p50 and p99; the server's CPU time (its whole process tree) and the
client's are divided by the requests answered. Each row of the table is the median over repetitions. Then it
checks that the prediction log holds exactly one row per answered request, and writes the table to
docs/benchmarks.md. It reports the targets; it never fails on speed.

    .venv/bin/python bench/serving.py            # full run (~8 min), writes docs/benchmarks.md
    .venv/bin/python bench/serving.py --quick    # smoke run: short windows, concurrency 1 and 8, no MLServer
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))
import perf_client  # noqa: E402
import report  # noqa: E402
from modelrun.proto import inference_pb2 as pb  # noqa: E402
from modelrun.proto import inference_pb2_grpc as pb_grpc  # noqa: E402

MODEL_NAME = "dense8"
LABELS = {"ceiling": "ceiling", "off": "modelrun, logging off", "on": "modelrun, logging on",
          "mlserver": "MLServer 1.7.1, TF runtime"}
MLSERVER_PYTHON = BENCH / ".venv-mlserver" / "bin" / "python"
CLIENT_LIMIT = 0.85  # a client using more than this share of one core may be what limits the row


@dataclass
class Server:
    key: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    model: str
    database_url: str | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(path: Path) -> Path:
    """The benchmark's own 8-feature model, seeded, saved as a .keras file (independent of the tests)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="features")
    outputs = keras.layers.Dense(1, name="prediction")(keras.layers.Dense(64, activation="relu")(inputs))
    keras.Model(inputs, outputs, name="dense8").save(path)
    return path


def mlserver_model_config() -> str:
    """Triton's ModelConfigResponse for dense8 as MLServer serves it (hex): what perf_analyzer asks first."""
    config = pb.ModelConfig(name=MODEL_NAME, platform="mlserver", max_batch_size=256,
                            input=[pb.ModelInput(name="features", data_type=pb.TYPE_FP32, dims=[8])],
                            output=[pb.ModelOutput(name="prediction", data_type=pb.TYPE_FP32, dims=[1])])
    return pb.ModelConfigResponse(config=config).SerializeToString().hex()


def mlserver_missing() -> str | None:
    """Make MLServer's virtualenv when missing (bench/mlserver_env.sh); why it cannot run, or None."""
    try:
        made = subprocess.run(["bash", str(BENCH / "mlserver_env.sh")], cwd=ROOT, capture_output=True, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        return "bench/mlserver_env.sh took more than 15 min"
    if made.returncode != 0 or not MLSERVER_PYTHON.exists():
        lines = (made.stderr.strip() or "no output").splitlines()
        return f"bench/mlserver_env.sh failed: {lines[-1][:160]}"
    return None


def start(key: str, workdir: Path, model_path: Path) -> Server:
    port, log_path = free_port(), workdir / f"server-{key}.log"
    env, url, model = dict(os.environ), None, MODEL_NAME
    if key == "ceiling":
        cmd, model = [sys.executable, str(BENCH / "ceiling.py"), "--port", str(port)], "ceiling"
    elif key == "mlserver":
        cmd = [str(MLSERVER_PYTHON), str(BENCH / "mlserver_runtime.py"), "--model", str(model_path),
               "--name", MODEL_NAME, "--port", str(port), "--http-port", str(free_port()),
               "--model-config", mlserver_model_config()]
        env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}  # not this venv's packages
    else:
        url = f"sqlite:///{workdir / f'predictions-{key}.db'}"
        cmd = [sys.executable, "-m", "serving", "--model", str(model_path), "--name", MODEL_NAME,
               "--port", str(port), "--host", "127.0.0.1"]
        env.update(MODELRUN_DATABASE_URL=url, MODELRUN_LOG_PREDICTIONS="true" if key == "on" else "false",
                   MODELRUN_HOME=str(workdir / f"home-{key}"), MODELRUN_JOURNAL_DIR=str(workdir / f"journal-{key}"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(key, port, proc, log_path, model, url)


def wait_ready(server: Server, timeout: float = 180.0) -> None:
    """Block until the server says its model is ready (V2 ModelReady); fail with its log if it dies first."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{LABELS[server.key]} exited with {server.proc.returncode}:\n{tail(server)}")
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=server.model), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{LABELS[server.key]} not ready after {timeout:.0f}s:\n{tail(server)}")


def tail(server: Server, lines: int = 30) -> str:
    try:
        return "\n".join(server.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(server: Server, grace: float = 15.0) -> None:
    """SIGTERM (the server flushes its prediction log), then SIGKILL after `grace` seconds."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants, all threads (Linux /proc); children that
    already exited count once reaped (cutime/cstime)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if fields := stats.get(current):
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            todo.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


def measure_row(server: Server, concurrency: int, opts: argparse.Namespace, workdir: Path, seed: int) -> dict:
    """One measured row by a fresh client process, with the server's CPU time per answered request (a figure
    that other work on the machine disturbs much less than rps) and the client's."""
    server_cpu = lambda: tree_cpu_seconds(server.proc.pid)  # noqa: E731
    if opts.client == "perf_analyzer":
        result = perf_client.run(server.target, server.model, concurrency, window_ms=opts.window_ms,
                                 stability=opts.stability, max_trials=opts.max_trials, workdir=workdir,
                                 server_cpu=server_cpu)
    else:
        cmd = [sys.executable, str(BENCH / "loadgen.py"), "--target", server.target, "--model", server.model,
               "--concurrency", str(concurrency), "--warmup", str(opts.warmup), "--duration", str(opts.duration),
               "--seed", str(seed)]
        cpu_before = server_cpu()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=opts.warmup + opts.duration + 120)
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed against {LABELS[server.key]}:\n{done.stderr[-3000:]}")
        result = {**json.loads(done.stdout.strip().splitlines()[-1]), "unstable": False}
        result["server_cpu_us"] = (server_cpu() - cpu_before) * 1e6 / max(result["ok_total"], 1)
    # The share of one core the client used while it ran: CPU per request times requests per second.
    result["client_core"] = (result["client_cpu_us"] * result["rps"] / 1e6
                             if result["client_cpu_us"] is not None and result["rps"] else None)
    return result


def count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        try:
            from modelrun.db.predictions import count_predictions
        except ImportError:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT COUNT(*) FROM predictions")).scalar_one()
        return count_predictions(engine, MODEL_NAME)
    finally:
        engine.dispose()


def batch_stats(server: Server) -> dict | None:
    """Requests per model call over the whole run, from the line the server logs when it stops (if any)."""
    found = re.search(r"served (\d+) requests \((\d+) rows\) in (\d+) model calls(?: \((\d+) waited the whole "
                      r"batching wait\))?", tail(server, 200))
    if not found:
        return None
    requests, calls = int(found[1]), int(found[3])
    return {"requests": requests, "calls": calls, "per_call": requests / max(calls, 1),
            "waits_expired": int(found[4]) if found[4] is not None else None}


def served_requests(server: Server) -> int:
    """Requests the server says it answered successfully (Triton's ModelStatistics, which modelrun implements)."""
    with grpc.insecure_channel(server.target) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=server.model), timeout=10)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def check_log(server: Server, settle: float = 20.0) -> dict:
    """Wait for the log to catch up with the requests the server answered (until equal, or no progress for
    `settle` s). The server's count, as perf_analyzer's exports miss the requests in flight when it stops
    and every request of a run that did not settle."""
    served = served_requests(server)
    seen, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < settle:
        rows = count_rows(server.database_url)
        if rows == served:
            break
        if rows != seen:
            seen, last_change = rows, time.monotonic()
        time.sleep(0.25)
    return {"answered": served, "rows_while_running": rows}


def measure(servers: list[Server], opts: argparse.Namespace, workdir: Path) -> list:
    results = []
    for rep in range(opts.reps):
        for c in opts.concurrencies:
            order = servers[rep % len(servers):] + servers[:rep % len(servers)]  # rotate who goes first
            for server in order:
                r = measure_row(server, c, opts, workdir, seed=len(results))
                results.append({"server": server.key, "rep": rep, **r})
                say(f"  rep {rep + 1}/{opts.reps}  c={c:<3} {LABELS[server.key]:<27} {report.progress_line(r)}")
    return results


def drift_section(path: Path) -> str:
    """The section bench/drift.py keeps in the same file (between its markers), so rewriting the file keeps it."""
    old = path.read_text() if path.exists() else ""
    found = re.search(r"<!-- drift-benchmark:start -->.*?<!-- drift-benchmark:end -->\n?", old, re.S)
    return "\n" + found.group(0) if found else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: concurrency 1 and 8, one rep, short windows, no MLServer")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--client", choices=["perf_analyzer", "loadgen"], default="perf_analyzer",
                        help="load generator (default perf_analyzer; loadgen: the Python bench/loadgen.py)")
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,8,32,64)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 3)")
    parser.add_argument("--servers", default=None, help="subset of ceiling,off,on,mlserver (default all; "
                                                        "--quick: ceiling,off,on)")
    parser.add_argument("--window-ms", type=int, default=None, help="perf_analyzer's window (default 1000)")
    parser.add_argument("--stability", type=float, default=None,
                        help="perf_analyzer's stability percentage (default 20; --quick: 999, any 3 windows)")
    parser.add_argument("--max-trials", type=int, default=5, help="perf_analyzer's windows before unstable")
    parser.add_argument("--duration", type=float, default=None, help="loadgen: measured seconds (default 1.5)")
    parser.add_argument("--warmup", type=float, default=None, help="loadgen: unmeasured seconds (default 0.4)")
    parser.add_argument("--output", default=None, help="markdown file (default docs/benchmarks.md; none with --quick)")
    opts = parser.parse_args(argv)
    quick = opts.quick
    opts.concurrencies = [int(c) for c in (opts.concurrency or ("1,8" if quick else "1,8,32,64")).split(",")]
    opts.reps = opts.reps or (1 if quick else 3)
    opts.window_ms = opts.window_ms or (300 if quick else 1000)
    opts.stability = opts.stability or (999 if quick else 20)
    opts.duration = opts.duration or (1.0 if quick else 1.5)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.3 if quick else 0.4)
    output = opts.output or (None if quick else str(ROOT / "docs" / "benchmarks.md"))
    wanted = (opts.servers or ("ceiling,off,on" if quick else ",".join(LABELS))).split(",")
    keys = [k for k in LABELS if k in wanted]
    if opts.client == "perf_analyzer" and (reason := perf_client.missing()):
        say(f"perf_analyzer cannot run: {reason}")
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a TERM stops the servers too (finally below)
    servers: list[Server] = []
    not_run: dict[str, str] = {}
    if "mlserver" in keys and (reason := mlserver_missing()):
        not_run["mlserver"] = reason
    with tempfile.TemporaryDirectory(prefix="modelrun-bench-") as tmp:
        workdir = Path(tmp)
        try:
            model_path = build_model(workdir / "dense8.keras") if keys != ["ceiling"] else None
            for key in keys:
                if key not in not_run:
                    servers.append(start(key, workdir, model_path))
            for server in list(servers):
                try:
                    wait_ready(server)
                except RuntimeError as exc:
                    if server.key != "mlserver":
                        raise
                    said = [line for line in str(exc).splitlines() if line.strip()]  # what happened; its log's end
                    log_end = f" ({said[-1].strip()[:160]})" if len(said) > 1 else ""
                    not_run["mlserver"] = said[0].rstrip(":") + log_end
                    stop(server)
                    servers.remove(server)
            say(f"servers up; {opts.reps} rep(s) x concurrency {opts.concurrencies} x {len(servers)} server(s), "
                f"client {opts.client}" + "".join(f"; {LABELS[k]} not run: {why}" for k, why in not_run.items()))
            results = measure(servers, opts, workdir)
            logged = next((s for s in servers if s.key == "on"), None)
            log_check = check_log(logged) if logged else None
        finally:
            for server in servers:
                stop(server)
        if log_check:
            log_check["rows_after_stop"] = count_rows(logged.database_url)
            log_check["match"] = log_check["rows_after_stop"] == log_check["answered"]
        batching = {s.key: stats for s in servers if (stats := batch_stats(s))}

    rows = report.summarize(results, LABELS, CLIENT_LIMIT)
    settings = ({"client": "perf_analyzer", "window_ms": opts.window_ms, "stability": opts.stability,
                 "max_trials": opts.max_trials} if opts.client == "perf_analyzer" else
                {"client": "loadgen", "duration_s": opts.duration, "warmup_s": opts.warmup})
    doc = {"environment": report.environment(ROOT), "quick": quick, "reps": opts.reps, "measurement": settings,
           "client_limit": CLIENT_LIMIT, "rows": rows, "not_run": {LABELS[k]: why for k, why in not_run.items()},
           "targets": report.targets(rows), "prediction_log": log_check, "batching": batching, "runs": results}
    say("\n".join(report.table_lines(doc)))
    if output:
        Path(output).write_text(report.markdown(doc) + drift_section(Path(output)))
        say(f"wrote {output}")
    if opts.json:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
