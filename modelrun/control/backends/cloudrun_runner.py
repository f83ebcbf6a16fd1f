"""Runner on Cloud Run: one service per deployment, one Cloud Run revision per modelrun revision.

- Service `modelrun-NAME` (labels managed-by=modelrun, modelrun-deployment=NAME), revision
  `modelrun-NAME-rN` running the revision's image (`rev.artifact`, made by the builder) with the bundle at
  /srv/bundle; gRPC end to end (container port named `h2c`), startup and liveness probes on gRPC health.
- Traffic is pinned by revision name: `start` deploys a new revision with the traffic left where it is;
  only `serve` moves it (all of it, or a canary share under the tag `canary`).
- Private: `roles/run.invoker` goes only to the `run_invokers` setting's members.
- `start` does not wait for Cloud Run's operation; `probe` reads the revision's Ready condition.
- Google API errors are mapped once (`_call`): transient ones are retried with backoff for
  `run_api_timeout` seconds, then Unavailable; refusals (permission, invalid, precondition) are
  Unprocessable with Cloud Run's message.

google-cloud-run is imported when the runner is built.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from datetime import timedelta
from collections.abc import Callable
from pathlib import PurePosixPath

import grpc

from modelrun.control.backends import Probe, Started, TensorSpec, server_environment
from modelrun.control.models import Revision
from modelrun.control.run_config import RunConfig, run_config
from modelrun.errors import InvalidInput, NotFound, Unavailable, Unprocessable
from modelrun.settings import Settings

log = logging.getLogger(__name__)

BUNDLE = PurePosixPath("/srv/bundle")  # where the image's per-revision layer puts the bundle
PREFIX = "modelrun-"
MANAGED = {"managed-by": "modelrun"}
INVOKER = "roles/run.invoker"
CANARY_TAG = "canary"


class CloudRunRunner:
    detached = True  # services outlive the control plane: shutting it down stops nothing

    def __init__(self, settings: Settings):
        if not settings.gcp_project:
            raise InvalidInput("the cloudrun runner needs MODELRUN_GCP_PROJECT (the Google Cloud project)")
        from google.api_core import exceptions, retry
        from google.cloud import run_v2
        from google.cloud.run_v2.services.revisions import transports as revision_transports
        from google.cloud.run_v2.services.services import transports as service_transports

        self.settings = settings
        self.run_v2 = run_v2
        self.exceptions = exceptions
        self.parent = f"projects/{settings.gcp_project}/locations/{settings.gcp_region}"
        if settings.run_endpoint:  # tests: a fake Cloud Run API on a cleartext channel
            self._channel = grpc.insecure_channel(settings.run_endpoint)
            self.services = run_v2.ServicesClient(
                transport=service_transports.ServicesGrpcTransport(channel=self._channel))
            self.revisions = run_v2.RevisionsClient(
                transport=revision_transports.RevisionsGrpcTransport(channel=self._channel))
        else:
            self._channel = None
            self.services = run_v2.ServicesClient()
            self.revisions = run_v2.RevisionsClient()
        transient = (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.TooManyRequests,
                     exceptions.InternalServerError)  # ResourceExhausted is TooManyRequests (429)
        self._transient = transient
        self._retry = retry.Retry(predicate=retry.if_exception_type(*transient), initial=0.25, maximum=5.0,
                                  multiplier=2.0, timeout=settings.run_api_timeout)
        self._swept_at = 0.0

    # ---- Runner ----------------------------------------------------------------------------------

    def start(self, rev: Revision, features: list[str], address: str | None = None) -> Started:
        # `address` needs no care: every revision of a deployment is in its one service, at its one URL
        run = self.run_v2
        config = run_config(rev.config)
        service_id = f"{PREFIX}{rev.name}"
        name = f"{self.parent}/services/{service_id}"
        revision_id = f"{service_id}-r{rev.revision}"
        template = self._template(rev, features, config, revision_id)
        labels = {**MANAGED, "modelrun-deployment": rev.name}
        current = self._get_service(name)
        if current is None:
            service = run.Service(labels=labels, template=template, traffic=[_target(run, revision_id, 100)])
            self._call(f"create service {service_id}", self.services.create_service,
                       parent=self.parent, service=service, service_id=service_id)
        elif current.latest_created_revision.rsplit("/", 1)[-1] != revision_id:
            current.template = template
            current.labels.update(labels)
            current.traffic = _pinned(run, current)  # the new revision gets traffic only in `serve`
            self._call(f"update service {service_id}", self.services.update_service, service=current)
        self._set_invokers(name)
        uri = self._uri(name)
        log.info("deploying %s revision %d as Cloud Run revision %s", rev.name, rev.revision, revision_id)
        return Started({"service": name, "revision": f"{name}/revisions/{revision_id}", "uri": uri}, uri)

    def probe(self, runtime: dict) -> Probe:
        short = runtime["revision"].rsplit("/", 1)[-1]
        try:
            revision = self._call(f"read revision {short}", self.revisions.get_revision, name=runtime["revision"])
        except NotFound:
            return self._probe_missing(runtime, short)
        except (Unavailable, Unprocessable) as exc:  # the API did not answer: look again next pass
            log.warning("could not read Cloud Run revision %s: %s", short, exc.message)
            return Probe("starting")
        ready = next((c for c in revision.conditions if c.type_ == "Ready"), None)
        state = self.run_v2.Condition.State
        if ready is not None and ready.state == state.CONDITION_SUCCEEDED:
            return Probe("serving")
        if ready is not None and ready.state == state.CONDITION_FAILED:
            return Probe("exited", f"Cloud Run revision {short} failed: {ready.message or ready.reason}")
        return Probe("starting")

    def model_inputs(self, runtime: dict, name: str) -> list[TensorSpec]:
        from modelrun.proto import inference_pb2, inference_pb2_grpc

        uri = runtime["uri"]
        last = ""
        for attempt in range(4):  # a cold instance may need a moment behind the front end
            channel = _channel(uri)
            try:
                reply = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                    inference_pb2.ModelMetadataRequest(name=name), timeout=30.0)
                return [TensorSpec(i.name, i.datatype, list(i.shape)) for i in reply.inputs]
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    break
                time.sleep(0.5 * 2 ** attempt)
            finally:
                channel.close()
        raise Unprocessable(f"the model server at {uri} did not describe its model: {last}")

    def serve(self, runtime: dict, previous: dict | None = None, percent: int = 100) -> None:
        run = self.run_v2
        if not 0 < percent <= 100:
            raise InvalidInput(f"a revision's share of traffic must be 1 to 100 percent, not {percent}")
        short = runtime["revision"].rsplit("/", 1)[-1]
        other = previous["revision"].rsplit("/", 1)[-1] if previous and previous.get("revision") else None
        if percent == 100 or other is None or other == short:
            traffic = [_target(run, short, 100)]
        else:
            traffic = [_target(run, short, percent, CANARY_TAG), _target(run, other, 100 - percent)]
        service = self._get_service(runtime["service"])
        if service is None:
            raise Unprocessable(f"the Cloud Run service {_short(runtime['service'])} no longer exists")
        if _traffic_key(service.traffic) == _traffic_key(traffic):
            return
        service.traffic = traffic
        operation = self._call(f"move traffic to {short}", self.services.update_service, service=service)
        self._wait(operation, f"moving traffic to {short}", fail=True)
        log.info("Cloud Run service %s: %d%% of traffic to %s", _short(runtime["service"]), percent, short)

    def stop(self, runtime: dict) -> None:
        run = self.run_v2
        name, short = runtime["service"], runtime["revision"].rsplit("/", 1)[-1]
        service = self._get_service(name)
        if service is None:
            return
        traffic = _pinned(run, service)
        mine = sum(t.percent for t in traffic if t.revision == short)
        if mine >= 100:  # it serves everything: the deployment goes (deleted, or its only revision failed)
            try:
                operation = self._call(f"delete service {_short(name)}", self.services.delete_service, name=name)
            except NotFound:
                return
            self._wait(operation, f"deleting service {_short(name)}")
            return
        if mine > 0:  # a canary going away: its share goes back to the others first
            rest = [t for t in traffic if t.revision != short]
            rest[0].percent += mine
            service.traffic = rest
            operation = self._call(f"move traffic off {short}", self.services.update_service, service=service)
            self._wait(operation, f"moving traffic off {short}", fail=True)
        try:
            operation = self._call(f"delete revision {short}", self.revisions.delete_revision,
                                   name=runtime["revision"])
        except NotFound:
            return
        self._wait(operation, f"deleting revision {short}")

    def sweep(self, owned: Callable[[], tuple[list[tuple[str, int, dict]], set[str]]]) -> None:
        now = time.monotonic()
        if self._swept_at and now - self._swept_at < self.settings.run_sweep_interval:
            return
        self._swept_at = now
        pager = self._call("list services", self.services.list_services, parent=self.parent)
        ours = [s for s in pager if s.labels.get("managed-by") == MANAGED["managed-by"]]
        live, busy = owned()
        keep = {name for name, _, _ in live} | set(busy)
        for service in ours:
            deployment = service.labels.get("modelrun-deployment")
            if deployment in keep:
                continue
            log.warning("deleting Cloud Run service %s: no deployment owns it", _short(service.name))
            try:
                operation = self._call(f"delete service {_short(service.name)}", self.services.delete_service,
                                       name=service.name)
            except NotFound:
                continue
            self._wait(operation, f"deleting service {_short(service.name)}")

    # ---- helpers ---------------------------------------------------------------------------------

    def _template(self, rev: Revision, features: list[str], config: RunConfig, revision_id: str):
        run = self.run_v2
        env = {**server_environment(self.settings, rev, features),
               "MODELRUN_MODEL_URI": str(BUNDLE)}  # the bundle's bundle.json names its model and training data
        period = min(10, config.startup_timeout)
        startup = run.Probe(grpc=run.GRPCAction(service=""), period_seconds=period, timeout_seconds=min(5, period),
                            failure_threshold=-(-config.startup_timeout // period))
        liveness = run.Probe(grpc=run.GRPCAction(service=""), period_seconds=30, timeout_seconds=5,
                             failure_threshold=3)
        container = run.Container(
            name="model-server", image=rev.artifact, ports=[run.ContainerPort(name="h2c", container_port=8080)],
            env=[run.EnvVar(name=k, value=v) for k, v in env.items()],
            resources=run.ResourceRequirements(limits={"cpu": config.cpu, "memory": config.memory},
                                               # CPU always allocated: the prediction log is written
                                               # after the answer, from a background thread
                                               cpu_idle=False, startup_cpu_boost=config.startup_cpu_boost),
            startup_probe=startup, liveness_probe=liveness)
        return run.RevisionTemplate(
            revision=revision_id, labels={**MANAGED, "modelrun-deployment": rev.name,
                                          "modelrun-revision": str(rev.revision)},
            scaling=run.RevisionScaling(min_instance_count=config.min_instances,
                                        max_instance_count=config.max_instances),
            max_instance_request_concurrency=config.concurrency, timeout=timedelta(seconds=config.request_timeout),
            service_account=config.service_account or self.settings.run_service_account or "",
            execution_environment=run.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2, containers=[container],
            vpc_access=self._vpc_access())

    def _vpc_access(self):
        """Private-range traffic (Cloud SQL on a private IP) through the connector, when one is set."""
        if not self.settings.run_vpc_connector:
            return None
        run = self.run_v2
        return run.VpcAccess(connector=self.settings.run_vpc_connector,
                             egress=run.VpcAccess.VpcEgress.PRIVATE_RANGES_ONLY)

    def _set_invokers(self, name: str) -> None:
        """Only `run_invokers` may call the service (nobody when empty: private)."""
        policy = self._call(f"read the IAM policy of {_short(name)}", self.services.get_iam_policy,
                            request={"resource": name})
        wanted = sorted(set(self.settings.run_invokers))
        current = sorted(m for b in policy.bindings if b.role == INVOKER for m in b.members)
        if current == wanted:
            return
        kept = [b for b in policy.bindings if b.role != INVOKER]
        del policy.bindings[:]
        policy.bindings.extend(kept)
        if wanted:
            policy.bindings.add(role=INVOKER, members=wanted)
        self._call(f"set the IAM policy of {_short(name)}", self.services.set_iam_policy,
                   request={"resource": name, "policy": policy})

    def _uri(self, name: str) -> str:
        """The service's URL; Cloud Run assigns it as soon as the service exists."""
        deadline = time.monotonic() + self.settings.run_wait
        while True:
            service = self._get_service(name)
            if service is not None and service.uri:
                return service.uri
            if time.monotonic() > deadline:
                raise Unavailable(f"Cloud Run gave service {_short(name)} no URL within {self.settings.run_wait:.0f} s")
            time.sleep(0.5)

    def _get_service(self, name: str):
        try:
            return self._call(f"read service {_short(name)}", self.services.get_service, name=name)
        except NotFound:
            return None

    def _probe_missing(self, runtime: dict, short: str) -> Probe:
        service = self._get_service(runtime["service"])
        if service is None:
            return Probe("exited", f"the Cloud Run service {_short(runtime['service'])} no longer exists")
        if service.reconciling:
            return Probe("starting")  # the revision is about to be created
        return Probe("exited", f"the Cloud Run revision {short} no longer exists")

    def _wait(self, operation, what: str, fail: bool = False) -> None:
        """Wait up to `run_wait` seconds for a Cloud Run operation; a failed one is Unprocessable when `fail`."""
        try:
            operation.result(timeout=self.settings.run_wait)
        except concurrent.futures.TimeoutError:
            if fail:
                raise Unavailable(f"Cloud Run is still {what} after {self.settings.run_wait:.0f} s") from None
            log.warning("Cloud Run is still %s after %.0f s; going on", what, self.settings.run_wait)
        except self.exceptions.NotFound:
            pass
        except self.exceptions.GoogleAPICallError as exc:
            if fail:
                raise Unprocessable(f"Cloud Run failed {what}: {exc.message}") from None
            log.warning("Cloud Run failed %s: %s", what, exc.message)

    def _call(self, what: str, method, **kwargs):
        """One Admin API call: transient errors retried with backoff, errors mapped to modelrun's."""
        exc_ = self.exceptions
        try:
            return method(**kwargs, retry=self._retry, timeout=30.0)
        except exc_.NotFound as exc:
            raise NotFound(f"Cloud Run could not {what}: {exc.message}") from None
        except exc_.RetryError as exc:
            cause = getattr(exc.cause, "message", None) or str(exc.cause or exc)
            raise Unavailable(f"Cloud Run API unavailable (tried to {what} for "
                              f"{self.settings.run_api_timeout:.0f} s): {cause}") from None
        except self._transient as exc:
            raise Unavailable(f"Cloud Run API unavailable (tried to {what}): {exc.message}") from None
        except exc_.GoogleAPICallError as exc:
            raise Unprocessable(f"Cloud Run refused to {what}: {exc.message}") from None
        except exc_.GoogleAPIError as exc:  # no credentials and the like
            raise Unprocessable(f"Cloud Run API: could not {what}: {exc}".splitlines()[0]) from None


def _target(run, revision: str, percent: int, tag: str = ""):
    return run.TrafficTarget(type_=run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                             revision=revision, percent=percent, tag=tag)


def _pinned(run, service) -> list:
    """The service's traffic with `LATEST` replaced by the revision it means now (the latest ready one)."""
    latest = run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    ready = service.latest_ready_revision.rsplit("/", 1)[-1]
    pinned = []
    for t in service.traffic:
        if t.type_ == latest:
            if ready:
                pinned.append(_target(run, ready, t.percent, t.tag))
        else:
            pinned.append(_target(run, t.revision, t.percent, t.tag))
    return pinned


def _traffic_key(traffic) -> list:
    return sorted((int(t.type_), t.revision, t.percent, t.tag) for t in traffic)


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _channel(uri: str) -> grpc.Channel:
    """A channel to a Cloud Run service URL: https with an ID token (audience: the URL), else cleartext."""
    if uri.startswith("https://"):
        from modelrun.idtoken import IdTokens, audience, call_credentials

        host = uri.removeprefix("https://").split("/")[0]
        credentials = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(),
                                                         call_credentials(IdTokens(), audience(uri)))
        return grpc.secure_channel(host if ":" in host else f"{host}:443", credentials)
    return grpc.insecure_channel(uri.removeprefix("http://").rstrip("/"))
