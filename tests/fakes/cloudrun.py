"""A fake Cloud Run Admin API v2 for tests: a gRPC server the real `google-cloud-run` client talks to.

It serves `google.cloud.run.v2.Services` (Create/Get/List/Update/DeleteService, Get/SetIamPolicy),
`google.cloud.run.v2.Revisions` (Get/List/DeleteRevision) and `google.longrunning.Operations`
(Get/WaitOperation), (de)serializing with the protobuf classes behind the proto-plus types.

Every revision runs for real: its container image must have been pushed to the FakeRegistry; the fake
starts `python -m serving` with the container's environment (BUNDLE_MOUNT paths mapped to the image's
folder, PORT set to a free loopback port) and watches gRPC health. SERVING within the startup probe's
budget makes the revision Ready; a server that exits first, or never gets healthy, fails it with a reason
like Cloud Run's (plus the last line of its log). A service's `uri` is `http://127.0.0.1:PORT` of a gRPC
byte proxy that sends each call to one of its revisions by the traffic split.

Create/Update/DeleteService and DeleteRevision return an Operation that is done once the work is
(the new revision Ready or failed, the processes stopped), with Service/Revision packed as Any.

For assertions: `requests` (method, request message) in arrival order, `calls(method)`; for failures:
`fail_next(method, code, times)`, `never_ready = True` (revisions are started but never become healthy).
`close()` stops every process the fake started.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fakes.registry import FakeRegistry

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

Service = run_v2.Service.pb()
Revision = run_v2.Revision.pb()
SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED
RECONCILING = run_v2.Condition.State.CONDITION_RECONCILING
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
NOT_LISTENING = ("The user-provided container failed to start and listen on the port defined provided by the "
                 "PORT={port} environment variable within the allocated timeout.")


def _pb(proto_plus_type):
    return proto_plus_type.pb()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Running:
    """One revision's model server and what the fake knows of it."""

    def __init__(self, name: str, port: int, proc: subprocess.Popen | None, log_path: Path, budget: float):
        self.name, self.port, self.proc, self.log_path, self.budget = name, port, proc, log_path, budget
        self.ready = threading.Event()
        self.finished = threading.Event()  # ready or failed
        self.stopping = False

    def last_line(self) -> str:
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""


class FakeCloudRun:
    def __init__(self, registry: FakeRegistry, workdir: Path, *, port: int = 0, cwd: Path = REPO):
        self.registry = registry
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.never_ready = False
        self.requests: list[tuple[str, object]] = []
        self.services: dict[str, object] = {}
        self.revisions: dict[str, object] = {}
        self.policies: dict[str, policy_pb2.Policy] = {}
        self.operations: dict[str, operations_pb2.Operation] = {}
        self._running: dict[str, _Running] = {}
        self._proxies: dict[str, tuple[grpc.Server, int]] = {}
        self._failures: dict[str, list[tuple[grpc.StatusCode, str]]] = {}
        self._lock = threading.RLock()
        self._closed = False
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers(self._handlers())
        self.port = self.server.add_insecure_port(f"{HOST}:{port}")
        self.address = f"{HOST}:{self.port}"
        self.server.start()

    # ---- test controls ---------------------------------------------------------------------------

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1, message: str | None = None) -> None:
        """The next `times` calls of `method` ("CreateService", "GetRevision", ...) fail with `code`."""
        with self._lock:
            self._failures.setdefault(method, []).extend(
                [(code, message or f"injected {code.name} for {method}")] * times)

    def calls(self, method: str) -> list:
        return [request for name, request in list(self.requests) if name == method]

    def running(self) -> dict[str, int]:
        """Live model-server processes by revision name: their pids."""
        return {name: r.proc.pid for name, r in self._running.items() if r.proc and r.proc.poll() is None}

    def add_service(self, service) -> None:
        """Put a service straight into the fake (as if created elsewhere), without running anything."""
        with self._lock:
            service.uri = f"http://{HOST}:{self._proxy(service.name)}"
            self.services[service.name] = service

    def close(self) -> None:
        self._closed = True
        with self._lock:
            running = list(self._running.values())
            self._running.clear()
            proxies = list(self._proxies.values())
            self._proxies.clear()
        for r in running:
            _stop_process(r)
        for proxy, _ in proxies:
            proxy.stop(0)
        self.server.stop(0).wait()

    # ---- gRPC plumbing ---------------------------------------------------------------------------

    def _handlers(self):
        R = run_v2
        services = {
            "CreateService": (R.CreateServiceRequest, operations_pb2.Operation, self._create_service),
            "GetService": (R.GetServiceRequest, Service, self._get_service),
            "ListServices": (R.ListServicesRequest, R.ListServicesResponse.pb(), self._list_services),
            "UpdateService": (R.UpdateServiceRequest, operations_pb2.Operation, self._update_service),
            "DeleteService": (R.DeleteServiceRequest, operations_pb2.Operation, self._delete_service),
            "GetIamPolicy": (iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy, self._get_iam),
            "SetIamPolicy": (iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy, self._set_iam),
        }
        revisions = {
            "GetRevision": (R.GetRevisionRequest, Revision, self._get_revision),
            "ListRevisions": (R.ListRevisionsRequest, R.ListRevisionsResponse.pb(), self._list_revisions),
            "DeleteRevision": (R.DeleteRevisionRequest, operations_pb2.Operation, self._delete_revision),
        }
        operations = {
            "GetOperation": (operations_pb2.GetOperationRequest, operations_pb2.Operation, self._get_operation),
            "WaitOperation": (operations_pb2.WaitOperationRequest, operations_pb2.Operation, self._wait_operation),
            "DeleteOperation": (operations_pb2.DeleteOperationRequest, empty_pb2.Empty, self._delete_operation),
        }
        return [grpc.method_handlers_generic_handler(service, {name: self._unary(name, *spec)
                                                               for name, spec in table.items()})
                for service, table in (("google.cloud.run.v2.Services", services),
                                       ("google.cloud.run.v2.Revisions", revisions),
                                       ("google.longrunning.Operations", operations))]

    def _unary(self, method, request_type, response_type, fn):
        request_pb = request_type if hasattr(request_type, "FromString") else _pb(request_type)

        def handle(request, context):
            with self._lock:
                self.requests.append((method, request))
                pending = self._failures.get(method)
                failure = pending.pop(0) if pending else None
            if failure:
                context.abort(*failure)
            try:
                return fn(request)
            except _Abort as exc:
                context.abort(exc.code, exc.message)

        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=request_pb.FromString,
                                                   response_serializer=response_type.SerializeToString)

    # ---- Services --------------------------------------------------------------------------------

    def _create_service(self, request):
        name = f"{request.parent}/services/{request.service_id}"
        if not request.service_id or "/locations/" not in request.parent:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "parent and service_id are required")
        with self._lock:
            if name in self.services:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{request.service_id}' already exists.")
            service = Service()
            service.CopyFrom(request.service)
            service.name = name
            service.uid = uuid.uuid4().hex
            service.generation = 1
            service.create_time.CopyFrom(_now())
            service.uri = f"http://{HOST}:{self._proxy(name)}"
            if not service.traffic:
                service.traffic.add(type_=LATEST, percent=100)
            self._check_traffic(service, {service.template.revision})
            self.services[name] = service
            return self._rollout(service, request.validate_only)

    def _update_service(self, request):
        with self._lock:
            current = self.services.get(request.service.name)
            if current is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.service.name}' was not found")
            if request.service.etag and request.service.etag != current.etag:
                raise _Abort(grpc.StatusCode.ABORTED, "etag mismatch: the service changed since it was read")
            service = Service()
            service.CopyFrom(request.service)
            for keep in ("uid", "create_time", "uri", "latest_ready_revision", "latest_created_revision"):
                field = getattr(current, keep)
                if isinstance(field, str):
                    setattr(service, keep, field)
                else:
                    getattr(service, keep).CopyFrom(field)
            service.generation = current.generation + 1
            changed = service.template.SerializeToString(deterministic=True) != \
                current.template.SerializeToString(deterministic=True)
            new = {service.template.revision} if changed else set()
            self._check_traffic(service, new | {n.rsplit("/", 1)[1] for n in self._revisions_of(service.name)})
            if changed and service.template.revision in self.revisions:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS,
                             f"Revision named '{service.template.revision}' with different configuration "
                             f"already exists.")
            self.services[service.name] = service
            if not changed:
                self._refresh(service)
                return self._operation(service, Service, done=True)
            return self._rollout(service, request.validate_only)

    def _get_service(self, request):
        with self._lock:
            service = self.services.get(request.name)
            if service is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            return service

    def _list_services(self, request):
        with self._lock:
            found = [s for name, s in sorted(self.services.items()) if name.startswith(request.parent + "/")]
        return run_v2.ListServicesResponse.pb()(services=found)

    def _delete_service(self, request):
        with self._lock:
            service = self.services.pop(request.name, None)
            if service is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            names = self._revisions_of(request.name)
            running = [self._running.pop(n) for n in names if n in self._running]
            for n in names:
                self.revisions.pop(n, None)
            proxy = self._proxies.pop(request.name, None)
            operation = self._operation(service, Service, done=False)
        for r in running:
            _stop_process(r)
        if proxy:
            proxy[0].stop(0)
        self._finish(operation.name, service)
        return operation

    def _get_iam(self, request):
        with self._lock:
            self._resource(request.resource)
            return self.policies.get(request.resource, policy_pb2.Policy())

    def _set_iam(self, request):
        with self._lock:
            self._resource(request.resource)
            policy = policy_pb2.Policy()
            policy.CopyFrom(request.policy)
            policy.etag = uuid.uuid4().bytes[:8]
            self.policies[request.resource] = policy
            return policy

    def _resource(self, name: str):
        if name not in self.services:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{name}' was not found")

    # ---- Revisions -------------------------------------------------------------------------------

    def _get_revision(self, request):
        with self._lock:
            revision = self.revisions.get(request.name)
            if revision is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            return revision

    def _list_revisions(self, request):
        with self._lock:
            found = [self.revisions[n] for n in self._revisions_of(request.parent)]
        return run_v2.ListRevisionsResponse.pb()(revisions=found)

    def _delete_revision(self, request):
        with self._lock:
            revision = self.revisions.get(request.name)
            if revision is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
            service = self.services.get(revision.service)
            short = request.name.rsplit("/", 1)[1]
            if service is not None and any(t.revision == short and t.percent for t in service.traffic_statuses):
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                             f"Revision '{short}' cannot be deleted because it is serving traffic.")
            self.revisions.pop(request.name)
            running = self._running.pop(request.name, None)
            operation = self._operation(revision, Revision, done=False)
        if running:
            _stop_process(running)
        self._finish(operation.name, revision)
        return operation

    # ---- Operations ------------------------------------------------------------------------------

    def _get_operation(self, request):
        with self._lock:
            operation = self.operations.get(request.name)
            if operation is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"operation '{request.name}' was not found")
            return operation

    def _wait_operation(self, request):
        deadline = time.monotonic() + (request.timeout.seconds or 10)
        while time.monotonic() < deadline:
            operation = self._get_operation(operations_pb2.GetOperationRequest(name=request.name))
            if operation.done:
                return operation
            time.sleep(0.1)
        return self._get_operation(operations_pb2.GetOperationRequest(name=request.name))

    def _delete_operation(self, request):
        with self._lock:
            self.operations.pop(request.name, None)
        return empty_pb2.Empty()

    def _operation(self, resource, kind, done: bool) -> operations_pb2.Operation:
        location = resource.name.split("/services/")[0]
        operation = operations_pb2.Operation(name=f"{location}/operations/{uuid.uuid4()}", done=done)
        operation.metadata.Pack(resource)
        if done:
            operation.response.Pack(resource)
        self.operations[operation.name] = operation
        return operation

    def _finish(self, name: str, resource=None, error: str | None = None, code: int = code_pb2.FAILED_PRECONDITION):
        with self._lock:
            operation = self.operations.get(name)
            if operation is None:
                return
            operation.done = True
            if error is not None:
                operation.error.CopyFrom(status_pb2.Status(code=code, message=error))
            else:
                operation.response.CopyFrom(_packed(resource))

    # ---- rollout: one new revision per template change -------------------------------------------

    def _rollout(self, service, validate_only: bool) -> operations_pb2.Operation:
        template = service.template
        short = template.revision or f"{service.name.rsplit('/', 1)[1]}-{uuid.uuid4().hex[:5]}"
        revision = Revision(name=f"{service.name}/revisions/{short}", uid=uuid.uuid4().hex, generation=1,
                            service=service.name, scaling=template.scaling, timeout=template.timeout,
                            service_account=template.service_account, containers=template.containers,
                            execution_environment=template.execution_environment,
                            max_instance_request_concurrency=template.max_instance_request_concurrency,
                            reconciling=True)
        revision.labels.update(template.labels)
        revision.create_time.CopyFrom(_now())
        revision.conditions.add(type_="Ready", state=RECONCILING, message="Deploying revision.")
        self.revisions[revision.name] = revision
        service.latest_created_revision = revision.name
        service.reconciling = True
        self._refresh(service)
        operation = self._operation(service, Service, done=False)
        threading.Thread(target=self._run_revision, args=(service.name, revision.name, operation.name),
                         name=f"fake-run-{short}", daemon=True).start()
        return operation

    def _run_revision(self, service_name: str, revision_name: str, operation: str) -> None:
        revision = self.revisions[revision_name]
        container = revision.containers[0]
        short = revision_name.rsplit("/", 1)[1]
        image = container.image
        if not self.registry.has(image):
            return self._settle(service_name, revision_name, operation, f"Image '{image}' not found.")
        probe = container.startup_probe
        budget = (probe.initial_delay_seconds + (probe.period_seconds or 10) * (probe.failure_threshold or 3)) \
            if probe.ByteSize() else 240.0
        port = _free_port()
        folder = self.workdir / short
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "container.log"
        env = self.registry.map_environment(image, {e.name: e.value for e in container.env})
        env = {**os.environ, **env, "PORT": str(port), "MODELRUN_HOST": HOST, "PYTHONUNBUFFERED": "1",
               "MODELRUN_HOME": str(folder / "home")}
        proc = None
        if not self.never_ready:
            with log_path.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port), *container.args],
                                        cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        running = _Running(revision_name, port, proc, log_path, budget)
        with self._lock:
            if self._closed or revision_name not in self.revisions:
                _stop_process(running)
                return
            self._running[revision_name] = running
        deadline = time.monotonic() + budget
        failure = None
        while True:
            if running.stopping:
                return
            if proc is not None and proc.poll() is not None:
                last = running.last_line()
                failure = (f"The user-provided container failed to start and listen on the port defined provided "
                           f"by the PORT={port} environment variable (exit code {proc.returncode}). "
                           f"Last log line: {last}")
                break
            if proc is not None and _healthy(port):
                break
            if time.monotonic() > deadline:
                failure = NOT_LISTENING.format(port=port) + f" (startup probe budget {budget:.0f} s)"
                break
            time.sleep(0.2)
        if failure:
            with self._lock:
                self._running.pop(revision_name, None)
            _stop_process(running)
            return self._settle(service_name, revision_name, operation, failure)
        running.ready.set()
        self._settle(service_name, revision_name, operation, None)
        while not running.stopping and proc.poll() is None:  # a crash after Ready fails the revision too
            time.sleep(0.3)
        if not running.stopping:
            self._settle(service_name, revision_name, None,
                         f"Container exited with code {proc.returncode}: {running.last_line()}")

    def _settle(self, service_name: str, revision_name: str, operation: str | None, failure: str | None) -> None:
        with self._lock:
            revision = self.revisions.get(revision_name)
            service = self.services.get(service_name)
            if revision is None:
                return
            del revision.conditions[:]
            revision.reconciling = False
            revision.conditions.add(type_="Ready", state=FAILED if failure else SUCCEEDED, message=failure or "",
                                    last_transition_time=_now())
            if service is not None:
                service.reconciling = False
                if not failure:
                    service.latest_ready_revision = revision_name
                self._refresh(service, failure)
        if operation:
            self._finish(operation, service, failure)

    def _refresh(self, service, failure: str | None = None) -> None:
        """Conditions and traffic statuses from the spec (LATEST resolves to the latest ready revision)."""
        del service.conditions[:]
        service.terminal_condition.Clear()
        service.terminal_condition.type_ = "Ready"
        if service.reconciling:
            service.terminal_condition.state = RECONCILING
        elif failure:
            service.terminal_condition.state = FAILED
            service.terminal_condition.message = failure
        else:
            service.terminal_condition.state = SUCCEEDED
        service.terminal_condition.last_transition_time.CopyFrom(_now())
        service.conditions.add(type_="RoutesReady", state=service.terminal_condition.state)
        del service.traffic_statuses[:]
        ready = service.latest_ready_revision.rsplit("/", 1)[-1]
        for target in service.traffic:
            revision = target.revision if target.type_ == BY_REVISION else ready
            if revision or target.tag:
                service.traffic_statuses.add(type_=target.type_, revision=revision, percent=target.percent,
                                             tag=target.tag)
        service.etag = uuid.uuid4().hex
        service.observed_generation = service.generation

    def _check_traffic(self, service, known: set[str]) -> None:
        total = sum(t.percent for t in service.traffic)
        if service.traffic and total != 100:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"traffic percentages must add up to 100, not {total}")
        for target in service.traffic:
            if target.type_ == BY_REVISION and target.revision not in known:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"Revision '{target.revision}' referenced in traffic not found.")

    def _revisions_of(self, service_name: str) -> list[str]:
        """Full names of the revisions of `service_name`."""
        return sorted(name for name, rev in self.revisions.items() if rev.service == service_name)

    # ---- the service URL: a gRPC byte proxy ------------------------------------------------------

    def _proxy(self, service_name: str) -> int:
        if service_name in self._proxies:
            return self._proxies[service_name][1]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers([_Forward(self, service_name)])
        port = server.add_insecure_port(f"{HOST}:0")
        server.start()
        self._proxies[service_name] = (server, port)
        return port

    def pick(self, service_name: str) -> _Running | None:
        """The running revision one call goes to, by the service's traffic split."""
        with self._lock:
            service = self.services.get(service_name)
            if service is None:
                return None
            targets = [(f"{service_name}/revisions/{t.revision}", t.percent) for t in service.traffic_statuses
                       if t.percent]
            targets = [(self._running.get(name), percent) for name, percent in targets]
            targets = [(r, p) for r, p in targets if r is not None and r.ready.is_set()]
        if not targets:
            return None
        return random.choices([r for r, _ in targets], weights=[p for _, p in targets])[0]


class _Forward(grpc.GenericRpcHandler):
    """Forwards any method as bytes to the revision `pick` chooses (stream-stream covers unary calls)."""

    def __init__(self, fake: FakeCloudRun, service_name: str):
        self.fake, self.service_name = fake, service_name
        self.channels: dict[int, grpc.Channel] = {}

    def service(self, details):
        method = details.method

        def forward(requests, context):
            target = self.fake.pick(self.service_name)
            if target is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, "no revision of this service is ready to serve")
            channel = self.channels.get(target.port)
            if channel is None:
                channel = self.channels[target.port] = grpc.insecure_channel(f"{HOST}:{target.port}")
            call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
            metadata = [(k, v) for k, v in context.invocation_metadata()
                        if not k.startswith(":") and k not in ("user-agent", "content-type", "te")]
            remaining = context.time_remaining()  # huge when the caller set no deadline
            responses = call(requests, metadata=metadata,
                             timeout=remaining if remaining is not None and remaining < 86400 else None)
            try:
                yield from responses
                context.set_trailing_metadata(responses.trailing_metadata() or ())
            except grpc.RpcError as exc:
                context.set_trailing_metadata(exc.trailing_metadata() or ())
                context.abort(exc.code(), exc.details() or "")

        return grpc.stream_stream_rpc_method_handler(forward)


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    if message is not None:
        packed.Pack(message)
    return packed


def _healthy(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _stop_process(running: _Running, timeout: float = 10.0) -> None:
    running.stopping = True
    proc = running.proc
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

