"""Real model servers for tests: `python -m serving` as a subprocess on a free loopback port.

Reusable from any test package:

    from tests.serving.conftest import start_server
    with start_server(model_path, "dense8", env={"MODELRUN_LOG_PREDICTIONS": "false"}) as server:
        client = tritonclient.grpc.InferenceServerClient(server.address)

`start_server` waits until gRPC health reports SERVING (or the process dies, which fails with its log),
and on exit sends SIGTERM, then SIGKILL after a timeout. Each server gets its own MODELRUN_HOME unless
`env` sets one. `launch` starts one without waiting (the caller stops it: `server.stop()` returns the exit
code); `start_servers` starts several at once so their TensorFlow imports overlap. A ServerProcess has
`.address`, `.port`, `.proc`, `.home`, `.log()`, `.health(service)`, `.wait_serving()`, `.stop()`.
Fixtures: `model_files` (session: every test model saved once), `dense8_server` and `tabular_server`
(module-scoped, prediction logging off).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serving import models
from tests.util import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
STARTUP_TIMEOUT = 120.0  # TensorFlow's import on a busy 2-core machine


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    address: str  # "127.0.0.1:PORT"
    port: int
    home: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self, service: str = "", timeout: float = 2.0) -> int | None:
        """The health status for `service`, or None when the server does not answer."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError:
                return None
        return reply.status

    def wait_serving(self, timeout: float = STARTUP_TIMEOUT) -> None:
        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} before SERVING:\n{self.log()}")
            return self.health() == SERVING

        wait_until(serving, timeout=timeout, interval=0.1, what=f"server on {self.address} to report SERVING")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(model_path, name: str, *, env: dict | None = None, extra_args=(), home: Path | None = None) -> ServerProcess:
    """Start `python -m serving` without waiting for it. The caller stops it."""
    port = free_port()
    home = Path(home or tempfile.mkdtemp(prefix="modelrun-serving-"))
    home.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "MODELRUN_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("PORT", None)
    args = [sys.executable, "-m", "serving", "--model", str(model_path), "--name", name,
            "--port", str(port), "--host", "127.0.0.1", *extra_args]
    log_path = home / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServerProcess(proc=proc, address=f"127.0.0.1:{port}", port=port, home=home, log_path=log_path)


@contextlib.contextmanager
def start_server(model_path, name: str, *, env: dict | None = None, extra_args=(), home: Path | None = None,
                 wait: bool = True) -> Iterator[ServerProcess]:
    """A running server (SERVING unless wait=False); stopped with SIGTERM on exit."""
    server = launch(model_path, name, env=env, extra_args=extra_args, home=home)
    try:
        if wait:
            server.wait_serving()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def start_servers(specs: dict[str, tuple], *, env: dict | None = None) -> Iterator[dict[str, ServerProcess]]:
    """Several servers started at once (their TensorFlow imports overlap): {key: (model_path, name)}."""
    servers: dict[str, ServerProcess] = {}
    try:
        for key, (path, name) in specs.items():
            servers[key] = launch(path, name, env=env)
        for server in servers.values():
            server.wait_serving()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


NO_LOG = {"MODELRUN_LOG_PREDICTIONS": "false"}


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Every test model, saved once per session: dense8(.keras, savedmodel), sequential8.keras,
    tabular(.keras, savedmodel), and dtype_<DT>.keras for each datatype in models.DTYPE_MODELS."""
    folder = tmp_path_factory.mktemp("models")
    files = {"dense8": models.save_dense8(folder), "sequential8": models.save_sequential8(folder),
             "tabular": models.save_tabular(folder)}
    files["dense8_savedmodel"] = models.export_savedmodel(models.load_keras(files["dense8"]), folder)
    files["tabular_savedmodel"] = models.export_savedmodel(models.load_keras(files["tabular"]), folder)
    for datatype in models.DTYPE_MODELS:
        files[f"dtype_{datatype}"] = models.save_dtype_model(folder, datatype)
    return files


@pytest.fixture(scope="module")
def dense8_server(model_files) -> Iterator[ServerProcess]:
    with start_server(model_files["dense8"], "dense8", env=NO_LOG) as server:
        yield server


@pytest.fixture(scope="module")
def tabular_server(model_files) -> Iterator[ServerProcess]:
    with start_server(model_files["tabular"], "tabular", env=NO_LOG) as server:
        yield server
