"""Model-server benchmark: closed-loop ModelInfer load against modelrun and a no-model protocol ceiling.

Starts three servers as subprocesses on free loopback ports: the ceiling (bench/ceiling.py), and
`python -m serving` for the 8-feature model `Input(8) -> Dense(64, relu) -> Dense(1)` with prediction logging
off and on (SQLite). For every repetition, concurrency and server (interleaved, so machine noise hits all
alike) a separate load-generator process (bench/loadgen.py) measures rps, p50 and p99; each row of the table is
the median over repetitions. Then it checks that the prediction log holds exactly one row per answered
request, and writes the table to docs/benchmarks.md. It reports the targets; it never fails on speed.

    .venv/bin/python bench/serving.py            # full run (~3 min), writes docs/benchmarks.md
    .venv/bin/python bench/serving.py --quick    # smoke run: 1 s rows, concurrency 1 and 8
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
from grpc_health.v1 import health_pb2, health_pb2_grpc

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import report  # noqa: E402

MODEL_NAME = "dense8"
LABELS = {"ceiling": "ceiling", "off": "modelrun, logging off", "on": "modelrun, logging on"}


@dataclass
class Server:
    key: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    model: str
    database_url: str | None = None
    answered: int = 0  # requests the load generators got an OK answer for (warm-up included)

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


def start(key: str, workdir: Path, model_path: Path) -> Server:
    port, log_path = free_port(), workdir / f"server-{key}.log"
    env = dict(os.environ)
    if key == "ceiling":
        cmd, model, url = [sys.executable, str(BENCH / "ceiling.py"), "--port", str(port)], "ceiling", None
    else:
        url = f"sqlite:///{workdir / f'predictions-{key}.db'}"
        cmd = [sys.executable, "-m", "serving", "--model", str(model_path), "--name", MODEL_NAME,
               "--port", str(port), "--host", "127.0.0.1"]
        model = MODEL_NAME
        env.update(MODELRUN_DATABASE_URL=url, MODELRUN_LOG_PREDICTIONS="true" if key == "on" else "false",
                   MODELRUN_HOME=str(workdir / f"home-{key}"), MODELRUN_JOURNAL_DIR=str(workdir / f"journal-{key}"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(key, port, proc, log_path, model, url)


def wait_serving(server: Server, timeout: float = 180.0) -> None:
    """Block until the server's grpc.health.v1 status is SERVING; fail with its log if it dies first."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{LABELS[server.key]} exited with {server.proc.returncode}:\n{tail(server)}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{LABELS[server.key]} not SERVING after {timeout:.0f}s:\n{tail(server)}")


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
            server.proc.kill()
            server.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(server: Server, concurrency: int, warmup: float, duration: float, seed: int) -> dict:
    """One measured row: a fresh load-generator process against one server. Also the server's CPU time per
    answered request, a figure that other work on the machine disturbs much less than rps."""
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--target", server.target, "--model", server.model,
           "--concurrency", str(concurrency), "--warmup", str(warmup), "--duration", str(duration),
           "--seed", str(seed)]
    cpu_before = cpu_seconds(server.proc.pid)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=warmup + duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed against {LABELS[server.key]}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_us"] = (cpu_seconds(server.proc.pid) - cpu_before) * 1e6 / max(result["ok_total"], 1)
    server.answered += result["ok_total"]
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
    found = re.search(r"served (\d+) requests \((\d+) rows\) in (\d+) model calls", tail(server, 200))
    if not found:
        return None
    requests, calls = int(found[1]), int(found[3])
    return {"requests": requests, "calls": calls, "per_call": requests / max(calls, 1)}


def check_log(server: Server, settle: float = 20.0) -> dict:
    """Wait for the log to catch up with what was answered (until equal, or no progress for `settle` s)."""
    seen, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < settle:
        rows = count_rows(server.database_url)
        if rows == server.answered:
            break
        if rows != seen:
            seen, last_change = rows, time.monotonic()
        time.sleep(0.25)
    return {"answered": server.answered, "rows_while_running": rows}


def measure(servers: list[Server], concurrencies: list[int], reps: int, warmup: float, duration: float) -> list:
    results = []
    for rep in range(reps):
        for c in concurrencies:
            order = servers[rep % len(servers):] + servers[:rep % len(servers)]  # rotate who goes first
            for server in order:
                r = load(server, c, warmup, duration, seed=len(results))
                results.append({"server": server.key, "rep": rep, **r})
                say(f"  rep {rep + 1}/{reps}  c={c:<3} {LABELS[server.key]:<22} {r['rps']:8.0f} rps  "
                    f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  CPU us/req server {r['server_cpu_us']:.0f} "
                    f"client {r['client_cpu_us']:.0f}  "
                    f"errors {sum(r['errors'].values())}")
    return results


def drift_section(path: Path) -> str:
    """The section bench/drift.py keeps in the same file (between its markers), so rewriting the file keeps it."""
    old = path.read_text() if path.exists() else ""
    found = re.search(r"<!-- drift-benchmark:start -->.*?<!-- drift-benchmark:end -->\n?", old, re.S)
    return "\n" + found.group(0) if found else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s rows, concurrency 1 and 8, one rep")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,8,32,64)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per row (default 1.5)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per row (default 0.4)")
    parser.add_argument("--servers", default="ceiling,off,on", help="subset of ceiling,off,on")
    parser.add_argument("--output", default=None, help="markdown file (default docs/benchmarks.md; none with --quick)")
    args = parser.parse_args(argv)
    quick = args.quick
    concurrencies = [int(c) for c in (args.concurrency or ("1,8" if quick else "1,8,32,64")).split(",")]
    reps = args.reps or (1 if quick else 5)
    duration = args.duration or (1.0 if quick else 1.5)
    warmup = args.warmup if args.warmup is not None else (0.3 if quick else 0.4)
    output = args.output or (None if quick else str(ROOT / "docs" / "benchmarks.md"))
    keys = [k for k in LABELS if k in args.servers.split(",")]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a TERM stops the servers too (finally below)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="modelrun-bench-") as tmp:
        workdir = Path(tmp)
        try:
            model_path = build_model(workdir / "dense8.keras") if keys != ["ceiling"] else None
            for key in keys:
                servers.append(start(key, workdir, model_path))
            for server in servers:
                wait_serving(server)
            say(f"servers up; {reps} rep(s) x concurrency {concurrencies} x {len(servers)} server(s), "
                f"{warmup:g} s warm-up + {duration:g} s each")
            results = measure(servers, concurrencies, reps, warmup, duration)
            logged = next((s for s in servers if s.key == "on"), None)
            log_check = check_log(logged) if logged else None
        finally:
            for server in servers:
                stop(server)
        if log_check:
            log_check["rows_after_stop"] = count_rows(logged.database_url)
            log_check["match"] = log_check["rows_after_stop"] == log_check["answered"]
        batching = {s.key: stats for s in servers if (stats := batch_stats(s))}

    rows = report.summarize(results, LABELS)
    doc = {"environment": report.environment(ROOT), "quick": quick, "reps": reps, "duration_s": duration,
           "warmup_s": warmup, "rows": rows, "targets": report.targets(rows), "prediction_log": log_check,
           "batching": batching, "runs": results}
    say("\n".join(report.table_lines(doc)))
    if output:
        Path(output).write_text(report.markdown(doc) + drift_section(Path(output)))
        say(f"wrote {output}")
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
