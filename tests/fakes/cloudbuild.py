"""A fake Cloud Build v1 API over real gRPC, for the real `google-cloud-build` client.

Serves `google.devtools.cloudbuild.v1.CloudBuild` (CreateBuild, GetBuild, ListBuilds, CancelBuild) and
`google.longrunning.Operations/GetOperation`, (de)serializing with the raw protobuf classes behind the
client's proto-plus types. Each build's steps run for real where they can, one after another on a background
thread, in a workspace folder that stands for /workspace:

- a step whose image is the serving base image runs its entrypoint and args as a local subprocess (`python`
  is this interpreter, the worktree is on PYTHONPATH, STORAGE_EMULATOR_HOST passes through) with
  `$BUILDER_OUTPUT` set; what it writes to `$BUILDER_OUTPUT/output` becomes `results.build_step_outputs[i]`;
- a crane/gcrane `append -b BASE -f LAYER -t IMAGE` step is emulated: the layer tar is unpacked and the folder
  at /srv/bundle in it is pushed to the FakeRegistry as IMAGE; it prints `IMAGE@DIGEST` as crane does;
- any other step fails the build, saying the fake cannot run it.

Substitutions (`$PROJECT_ID`, `$BUILD_ID`, `${_X}`, `$$`) are applied as Cloud Build does. Status moves QUEUED
→ WORKING → SUCCESS / FAILURE / TIMEOUT (the build's timeout is enforced) / CANCELLED.

Test controls: `calls` records every request; `fail_next(n, code)` makes the next n calls fail; `force =
"TIMEOUT" | "FAILURE" | "INTERNAL_ERROR"` ends new builds that way without running their steps; `hold()` keeps
new builds WORKING until `release()`; `on_event(build)` is called with each status change (what Cloud Build
publishes to the `cloud-builds` topic); `pubsub_message(build)` makes the Pub/Sub message of one.

`FakeArtifactRegistryApi` answers the Artifact Registry REST deletes the builder makes, on the same FakeRegistry.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.cloud.devtools import cloudbuild_v1 as cb
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, json_format

from tests.fakes.registry import BUNDLE_MOUNT, FakeRegistry

REPO = Path(__file__).resolve().parents[2]
SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"

Build = cb.Build.pb()
Status = Build.Status
FINAL = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}


class FakeCloudBuild:
    def __init__(self, registry: FakeRegistry, workdir: Path, serving_image: str, project: str = "test-project"):
        self.registry = registry
        self.workdir = Path(workdir)
        self.serving_image = serving_image
        self.project = project
        self.calls: list[tuple[str, object]] = []
        self.builds: dict[str, object] = {}
        self.force: str | None = None
        self.on_event: Callable[[object], None] | None = None
        self._held = threading.Event()
        self._held.set()
        self._failures: list[grpc.StatusCode] = []
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._server: grpc.Server | None = None
        self.address = ""

    # ---- controls --------------------------------------------------------------------------------

    def start(self) -> str:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        unary = grpc.unary_unary_rpc_method_handler
        self._server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler(SERVICE, {
                "CreateBuild": unary(self._create, cb.CreateBuildRequest.pb().FromString,
                                     operations_pb2.Operation.SerializeToString),
                "GetBuild": unary(self._get, cb.GetBuildRequest.pb().FromString, Build.SerializeToString),
                "ListBuilds": unary(self._list, cb.ListBuildsRequest.pb().FromString,
                                    cb.ListBuildsResponse.pb().SerializeToString),
                "CancelBuild": unary(self._cancel, cb.CancelBuildRequest.pb().FromString, Build.SerializeToString),
            }),
            grpc.method_handlers_generic_handler("google.longrunning.Operations", {
                "GetOperation": unary(self._get_operation, operations_pb2.GetOperationRequest.FromString,
                                      operations_pb2.Operation.SerializeToString),
            }),
        ])
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        self.release()
        with self._lock:
            for proc in self._procs.values():
                proc.kill()
        for thread in self._threads:
            thread.join(30)
        if self._server is not None:
            self._server.stop(0).wait()

    def fail_next(self, n: int, code: grpc.StatusCode) -> None:
        """The next `n` calls (any method) fail with `code`."""
        with self._lock:
            self._failures.extend([code] * n)

    def hold(self) -> None:
        """New builds stay WORKING until `release()`."""
        self._held.clear()

    def release(self) -> None:
        self._held.set()

    def requests(self, method: str) -> list:
        return [request for name, request in self.calls if name == method]

    def wait(self, build_id: str, timeout: float = 120.0):
        """The build once it is final."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                build = self.builds[build_id]
                if Status.Name(build.status) in FINAL:
                    return _copy(build)
            time.sleep(0.05)
        raise AssertionError(f"fake Cloud Build {build_id} did not finish within {timeout} s")

    def workspace(self, build_id: str) -> Path:
        return self.workdir / build_id / "workspace"

    # ---- RPCs ------------------------------------------------------------------------------------

    def _enter(self, method: str, request, context) -> None:
        with self._lock:
            self.calls.append((method, request))
            code = self._failures.pop(0) if self._failures else None
        if code is not None:
            context.abort(code, f"injected by the fake: {code.name}")

    def _create(self, request, context):
        self._enter("CreateBuild", request, context)
        build = Build()
        build.CopyFrom(request.build)
        build.id = str(uuid.uuid4())
        build.project_id = request.project_id or self.project
        build.status = Status.QUEUED
        build.create_time.GetCurrentTime()
        build.log_url = f"https://console.cloud.google.com/cloud-build/builds/{build.id}?project={build.project_id}"
        if not build.HasField("timeout"):
            build.timeout.seconds = 600
        try:
            _substitute_all(build)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:
            self.builds[build.id] = build
            snapshot = _copy(build)
        self._publish(snapshot)
        thread = threading.Thread(target=self._run, args=(build.id,), daemon=True, name=f"fake-build-{build.id[:8]}")
        self._threads.append(thread)
        thread.start()
        return self._operation(snapshot)

    def _get(self, request, context):
        self._enter("GetBuild", request, context)
        return self._find(request.id or request.name.rsplit("/", 1)[-1], context)

    def _list(self, request, context):
        self._enter("ListBuilds", request, context)
        wanted = None
        if request.filter:
            match = re.fullmatch(r'\s*tags\s*=\s*"([^"]+)"\s*', request.filter)
            if not match:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the fake understands only tags=\"X\" filters, "
                                                                f"not {request.filter!r}")
            wanted = match.group(1)
        with self._lock:
            found = [_copy(b) for b in self.builds.values() if wanted is None or wanted in b.tags]
        found.sort(key=lambda b: b.create_time.ToNanoseconds(), reverse=True)
        return cb.ListBuildsResponse.pb()(builds=found)

    def _cancel(self, request, context):
        self._enter("CancelBuild", request, context)
        build_id = request.id or request.name.rsplit("/", 1)[-1]
        self._find(build_id, context)
        self._finish(build_id, Status.CANCELLED, "Build was cancelled")
        with self._lock:
            proc = self._procs.get(build_id)
        if proc is not None:
            proc.kill()
        with self._lock:
            return _copy(self.builds[build_id])

    def _get_operation(self, request, context):
        self._enter("GetOperation", request, context)
        build_id = base64.urlsafe_b64decode(request.name.rsplit("/", 1)[-1].encode()).decode()
        return self._operation(self._find(build_id, context))

    def _find(self, build_id: str, context):
        with self._lock:
            build = self.builds.get(build_id)
            if build is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"build {build_id} not found")
            return _copy(build)

    def _operation(self, build):
        metadata = any_pb2.Any()
        metadata.Pack(cb.BuildOperationMetadata.pb()(build=build))
        encoded = base64.urlsafe_b64encode(build.id.encode()).decode()
        operation = operations_pb2.Operation(name=f"operations/build/{build.project_id}/{encoded}",
                                             metadata=metadata, done=Status.Name(build.status) in FINAL)
        if operation.done:
            operation.response.Pack(build)
        return operation

    # ---- running a build -------------------------------------------------------------------------

    def _run(self, build_id: str) -> None:
        time.sleep(0.05)
        with self._lock:
            build = self.builds[build_id]
            if build.status != Status.QUEUED:
                return
            build.status = Status.WORKING
            build.start_time.GetCurrentTime()
            timeout = build.timeout.seconds + build.timeout.nanos / 1e9
            steps = [_copy_step(s) for s in build.steps]
            snapshot = _copy(build)
        self._publish(snapshot)
        self._held.wait()
        if self.force == "TIMEOUT":
            return self._finish(build_id, Status.TIMEOUT, f"Build timeout after {timeout:.0f} s")
        if self.force in ("FAILURE", "INTERNAL_ERROR"):
            return self._finish(build_id, getattr(Status, self.force),
                                "Build failed; check build logs for details (forced by the fake)")
        workspace = self.workspace(build_id)
        workspace.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        outputs: list[bytes] = []
        for index, step in enumerate(steps):
            out_dir = workspace.parent / "builder_output" / str(index)
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                if step.name == self.serving_image:
                    rc = self._subprocess(build_id, step, workspace, out_dir, deadline)
                elif "crane" in step.name.rsplit("/", 1)[-1]:
                    rc = self._crane(step, workspace, out_dir)
                else:
                    return self._finish(build_id, Status.FAILURE,
                                        f'Build step failure: build step {index} "{step.name}" is not supported by '
                                        f'the fake Cloud Build (it runs the serving image and crane append only)')
            except subprocess.TimeoutExpired:
                return self._finish(build_id, Status.TIMEOUT, f"Build timeout after {timeout:.0f} s")
            output = out_dir / "output"
            outputs.append(output.read_bytes()[:50_000] if output.is_file() else b"")
            with self._lock:
                if self.builds[build_id].status != Status.WORKING:
                    return  # cancelled meanwhile
                del self.builds[build_id].results.build_step_outputs[:]
                self.builds[build_id].results.build_step_outputs.extend(outputs)
            if rc != 0:
                detail = f'Build step failure: build step {index} "{step.name}" failed: step exited with ' \
                         f'non-zero status: {rc}'
                return self._finish(build_id, Status.FAILURE, detail, failed_step=True)
        self._finish(build_id, Status.SUCCESS, "")

    def _subprocess(self, build_id: str, step, workspace: Path, out_dir: Path, deadline: float) -> int:
        def local(arg: str) -> str:
            return arg.replace("/workspace", str(workspace))

        entry = step.entrypoint or "python"
        program = sys.executable if entry in ("python", "python3") else entry
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "STORAGE_EMULATOR_HOST", "TMPDIR")}
        env.update(dict(item.split("=", 1) for item in step.env))
        env.update({"PYTHONPATH": str(REPO), "BUILDER_OUTPUT": str(out_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
                    "CUDA_VISIBLE_DEVICES": ""})
        cwd = workspace / step.dir_.removeprefix("/workspace").lstrip("/") if step.dir_ else workspace
        with open(workspace.parent / "log.txt", "ab") as log:
            proc = subprocess.Popen([program, *map(local, step.args)], cwd=cwd, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            with self._lock:
                self._procs[build_id] = proc
            try:
                return proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            finally:
                with self._lock:
                    self._procs.pop(build_id, None)

    def _crane(self, step, workspace: Path, out_dir: Path) -> int:
        """`[g]crane append -b BASE -f LAYER -t IMAGE [> FILE]`, directly or through `sh -c`."""
        words = list(step.args)
        if step.entrypoint.endswith("sh") and words[:1] == ["-c"]:
            words = shlex.split(words[1])
        elif step.entrypoint:
            words = [step.entrypoint, *words]
        if words and "crane" in words[0]:
            words = words[1:]
        redirect = None
        if ">" in words:
            redirect = words[words.index(">") + 1]
            words = words[:words.index(">")]
        if words[:1] != ["append"]:
            raise AssertionError(f"the fake emulates only crane append, not: {' '.join(words)}")
        flags = dict(zip(words[1::2], words[2::2]))
        base, layer, image = flags.get("-b"), flags.get("-f"), flags.get("-t")
        log = workspace.parent / "log.txt"
        if base != self.serving_image:
            with open(log, "a") as f:
                f.write(f"crane: base image {base} not found (the registry has {self.serving_image})\n")
            return 1
        layer_path = Path(layer.replace("/workspace", str(workspace)))
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(layer_path) as tar:
                tar.extractall(tmp, filter="data")
            bundle = Path(tmp) / BUNDLE_MOUNT.strip("/")
            if not bundle.is_dir():
                with open(log, "a") as f:
                    f.write(f"crane: the layer has nothing at {BUNDLE_MOUNT}\n")
                return 1
            digest = self.registry.push(image, bundle)
        printed = f"{image.rsplit(':', 1)[0] if ':' in image.rsplit('/', 1)[-1] else image}@{digest}\n"
        if redirect:
            target = redirect.replace("$BUILDER_OUTPUT", str(out_dir)).replace("/workspace", str(workspace))
            Path(target).write_text(printed)
        return 0

    def _finish(self, build_id: str, status, detail: str, failed_step: bool = False) -> None:
        with self._lock:
            build = self.builds[build_id]
            if Status.Name(build.status) in FINAL:
                return
            build.status = status
            build.status_detail = detail
            build.finish_time.GetCurrentTime()
            if status == Status.FAILURE:
                build.failure_info.type_ = Build.FailureInfo.USER_BUILD_STEP if failed_step else \
                    Build.FailureInfo.FAILURE_TYPE_UNSPECIFIED
                build.failure_info.detail = detail
            snapshot = _copy(build)
        self._publish(snapshot)

    def _publish(self, build) -> None:
        if self.on_event is not None:
            self.on_event(build)


def pubsub_message(build) -> dict:
    """The Pub/Sub message Cloud Build publishes to `cloud-builds` for `build` (as in a CloudEvent's data)."""
    body = json_format.MessageToJson(build)
    return {"data": base64.b64encode(body.encode()).decode(), "messageId": str(uuid.uuid4().int)[:16],
            "attributes": {"buildId": build.id, "status": Status.Name(build.status)}}


# ---- Cloud Build's substitutions ---------------------------------------------------------------------

_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _substitute_all(build) -> None:
    values = {"PROJECT_ID": build.project_id, "BUILD_ID": build.id, **dict(build.substitutions)}
    loose = build.options.substitution_option == cb.BuildOptions.SubstitutionOption.ALLOW_LOOSE

    def one(text: str) -> str:
        def replace(match: re.Match) -> str:
            if match.group(1) == "$":
                return "$"
            key = match.group(2) or match.group(3)
            if key in values:
                return values[key]
            if loose:
                return ""
            raise ValueError(f"invalid build: key {key!r} in the template is not a substitution")
        return _VAR.sub(replace, text)

    for step in build.steps:
        step.args[:] = [one(a) for a in step.args]
        step.env[:] = [one(e) for e in step.env]
        step.name = one(step.name)
        step.dir_ = one(step.dir_)
        step.entrypoint = one(step.entrypoint)


def _copy(build):
    copy = Build()
    copy.CopyFrom(build)
    return copy


def _copy_step(step):
    copy = cb.BuildStep.pb()()
    copy.CopyFrom(step)
    return copy


# ---- Artifact Registry's REST deletes ----------------------------------------------------------------

class FakeArtifactRegistryApi:
    """`DELETE /v1/projects/P/locations/L/repositories/R/packages/PKG[/versions/DIGEST|/tags/TAG]` on a FakeRegistry
    whose images are named `L-docker.pkg.dev/P/R/PKG:TAG`. Records each path in `deletes`."""

    def __init__(self, registry: FakeRegistry):
        self.registry = registry
        self.deletes: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_DELETE(self):  # noqa: N802 (http.server's naming)
                status = fake._delete(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}" if status == 200 else b'{"error": {"code": 404}}')

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _delete(self, path: str) -> int:
        self.deletes.append(path)
        match = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/repositories/([^/]+)/packages/([^/]+)"
                             r"(?:/(versions|tags)/([^/]+))?", path)
        if not match:
            return 404
        project, location, repository, package, kind, which = match.groups()
        image = f"{location}-docker.pkg.dev/{project}/{repository}/{urllib.parse.unquote(package)}"
        stored = [json.loads(p.read_text()) for p in self.registry.root.glob("*.json")]
        mine = [s for s in stored if s["image"].split("@")[0].rsplit(":", 1)[0] == image]
        if kind == "versions":
            mine = [s for s in mine if s["digest"] == urllib.parse.unquote(which)]
        elif kind == "tags":
            mine = [s for s in mine if s["image"].endswith(f":{which}")]
        for s in mine:
            self.registry.delete(s["image"])
        return 200 if mine else 404
