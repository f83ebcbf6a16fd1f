"""Runner on this machine: one `python -m serving` process per revision on a loopback port.

- A deployment keeps one port for its whole life (the control plane passes it as `address`): an update's
  new revision listens on the same port beside the old one (SO_REUSEPORT), takes every new connection
  from then on, and the old one's clients move over as their connections age (serving/handover.py), all
  within the drain period, before the old one is stopped. Each server also has an admin port of
  its own: probes go there, as a probe to the shared port could reach the old server. The server opens the
  shared port only once its model is warm. A canary (no `address`) gets a port of its own.
- Started in its own session (`start_new_session=True`), so it outlives a control-plane crash and is
  re-attached afterwards: a revision's runtime {pid, port, admin_port, started} is checked against /proc
  (same pid, same start time) and gRPC health before it is trusted.
- Output goes to $MODELRUN_HOME/logs/<name>-r<revision>.log; when the process exits, its last line
  (the server's one-line error) becomes the reason.
- Each server has a pidfile under $MODELRUN_HOME/run/; `sweep` stops any that no live revision owns,
  so a crash between starting a server and recording it leaves no orphan.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelrun.control.backends import Probe, Started, TensorSpec, procs, server_environment
from modelrun.control.backends.local_builder import read_manifest
from modelrun.control.models import Revision
from modelrun.errors import Unavailable, Unprocessable
from modelrun.proto import inference_pb2, inference_pb2_grpc
from modelrun.settings import Settings

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+ [A-Z]+ [\w.]+: ")  # "2026-01-01 10:00:00,123 ERROR serving: "


class LocalRunner:
    detached = False  # `modelrun up` stops the servers it started when it stops

    def __init__(self, settings: Settings):
        self.settings = settings
        self._children: dict[int, subprocess.Popen] = {}  # servers this object started, for exit codes

    def start(self, rev: Revision, features: list[str], address: str | None = None) -> Started:
        bundle = Path(rev.artifact)
        manifest = read_manifest(bundle)
        model = bundle / manifest["model"]
        port = self._public_port(rev.name, address)
        admin_port = _free_port()
        for folder in (self.settings.logs_dir, self.settings.run_dir, self.settings.journal_dir):
            folder.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.logs_dir / f"{rev.name}-r{rev.revision}.log"
        env = {**server_environment(self.settings, rev, features),
               "MODELRUN_JOURNAL_DIR": str(self.settings.journal_dir / f"{rev.name}-r{rev.revision}"),
               "MODELRUN_HOME": str(self.settings.home_dir),
               "MODELRUN_TRAINING_DATA": str(bundle / manifest["training_data"]),
               "MODELRUN_SHARE_PORT": "true"}
        command = [sys.executable, "-m", "serving", "--model", str(model), "--name", rev.name,
                   "--port", str(port), "--admin-port", str(admin_port), "--host", HOST]
        with log_path.open("ab") as out:
            out.write(f"--- modelrun: starting revision {rev.revision} on {HOST}:{port} (admin port {admin_port})\n"
                      .encode())
            out.flush()
            try:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.settings.home_dir,
                                         env=self.settings.server_environment(env))
            except OSError as exc:
                raise Unavailable(f"could not start the model server: {exc}") from None
        self._children[child.pid] = child
        runtime = {"pid": child.pid, "port": port, "admin_port": admin_port, "started": procs.start_time(child.pid),
                   "log": str(log_path)}
        pidfile = self.settings.run_dir / f"{rev.name}-r{rev.revision}-{child.pid}.pid"
        pidfile.write_text(json.dumps({**runtime, "name": rev.name, "revision": rev.revision}))
        log.info("started %s revision %d: pid %d on %s:%d", rev.name, rev.revision, child.pid, HOST, port)
        return Started(runtime, f"{HOST}:{port}")

    def probe(self, runtime: dict) -> Probe:
        exited = self._exit_reason(runtime)
        if exited is not None:
            return Probe("exited", exited)
        try:
            with grpc.insecure_channel(_admin(runtime)) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return Probe("starting")
        return Probe("serving" if reply.status == health_pb2.HealthCheckResponse.SERVING else "starting")

    def model_inputs(self, runtime: dict, name: str) -> list[TensorSpec]:
        try:
            with grpc.insecure_channel(_admin(runtime)) as channel:
                reply = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                    inference_pb2.ModelMetadataRequest(name=name), timeout=10.0)
        except grpc.RpcError as exc:
            raise Unprocessable(f"the model server did not describe its model: {exc.details()}") from None
        return [TensorSpec(i.name, i.datatype, list(i.shape)) for i in reply.inputs]

    def serve(self, runtime: dict, previous: dict | None = None, percent: int = 100) -> None:
        pass  # it listens on the deployment's port already; the previous server leaves it when stopped

    def stop(self, runtime: dict) -> None:
        pid = runtime["pid"]
        if self._owned(runtime):
            procs.terminate(pid, runtime.get("started"), self.settings.stop_timeout)
        child = self._children.pop(pid, None)
        if child is not None:
            child.poll()
        for pidfile in self.settings.run_dir.glob("*.pid"):
            if _read_json(pidfile).get("pid") == pid:
                pidfile.unlink(missing_ok=True)

    def sweep(self, owned: Callable[[], tuple[list[tuple[str, int, dict]], set[str]]]) -> None:
        pidfiles = sorted(self.settings.run_dir.glob("*.pid"))
        live, busy = owned()
        keep = {(name, revision, runtime.get("pid")) for name, revision, runtime in live}
        for pidfile in pidfiles:
            info = _read_json(pidfile)
            if (info.get("name"), info.get("revision"), info.get("pid")) in keep or info.get("name") in busy:
                continue
            if info.get("pid"):
                log.warning("stopping stray model server %s (pid %s)", pidfile.stem, info["pid"])
                self.stop(info)
            pidfile.unlink(missing_ok=True)

    # ---- helpers ---------------------------------------------------------------------------------

    def _owned(self, runtime: dict) -> bool:
        """Is `runtime` still the process we started (same pid and start time, our serving command)?"""
        pid = runtime["pid"]
        if not procs.is_alive(pid, runtime.get("started")):
            return False
        args = procs.cmdline(pid)
        return "serving" in args and str(runtime["port"]) in args

    def _public_port(self, name: str, address: str | None) -> int:
        """The port of `address`, the deployment's endpoint, or a free one without it (a new deployment's,
        a canary's). Another program listening there is refused: sharing is only for this deployment's
        own servers."""
        if not address:
            return _free_port()
        try:
            port = int(address.rpartition(":")[2])
        except ValueError:
            raise Unprocessable(f"{address!r} is no local endpoint (host:port)") from None
        if _listened_on(port) and not self._serves(name, port):
            raise Unavailable(f"{address}, the endpoint of deployment {name}, is taken by another program")
        return port

    def _serves(self, name: str, port: int) -> bool:
        """Does a model server of deployment `name` that this runner started listen on `port`?"""
        for pidfile in self.settings.run_dir.glob("*.pid"):
            info = _read_json(pidfile)
            if info.get("name") == name and info.get("port") == port and info.get("pid") and self._owned(info):
                return True
        return False

    def _exit_reason(self, runtime: dict) -> str | None:
        child = self._children.get(runtime["pid"])
        code = child.poll() if child is not None else None
        if code is None and (child is not None or self._owned(runtime)):
            return None
        log_path = Path(runtime.get("log", ""))
        last = _last_line(log_path)
        status = f"exited with code {code}" if code is not None else "is no longer running"
        reason = f"the model server {status}: {last}" if last else f"the model server {status}"
        return f"{reason} (log: {log_path})"


def _admin(runtime: dict) -> str:
    """Where to reach this server alone (servers started before admin ports: their own port)."""
    return f"{HOST}:{runtime.get('admin_port') or runtime['port']}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _listened_on(port: int) -> bool:
    """Does a socket listen on `port` (or hold it otherwise)? Connections in TIME_WAIT do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line and not line.startswith("--- modelrun:")]
    return _LOG_PREFIX.sub("", lines[-1])[:500] if lines else ""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
