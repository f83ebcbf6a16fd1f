"""The Cloud Run runner through the real google-cloud-run client, against the fake Cloud Run Admin API
whose revisions run real model servers: READY and a prediction through the service URL, what the
service spec asks Cloud Run for, updates that keep the old revision serving until the new one is
ready, canary traffic, failures with their reasons, API errors, delete and sweep.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.cloud import run_v2

from modelrun.control import build_control_plane
from modelrun.control.backends import BUILDERS
from modelrun.errors import InvalidInput
from modelrun.settings import Settings
from tests.cloudrun.conftest import INVOKERS, PROJECT, REGION, RUNTIME_SA
from tests.control.conftest import FEATURES8, wait_status
from tests.fakes.imagebuilder import ImageBuilder
from tests.util import wait_until

PARENT = f"projects/{PROJECT}/locations/{REGION}"
State = run_v2.Condition.State


def create(plane, name, models_dir, config=None):
    body = {"name": name, "model_uri": str(models_dir["dense8"]), "training_data_uri": str(models_dir["train8"]),
            "config": {"label": "target", **(config or {})}}
    return plane.deployments.create(body).to_json()


def service_name(name: str) -> str:
    return f"{PARENT}/services/modelrun-{name}"


def traffic(fake, name: str) -> dict[str, tuple[int, str]]:
    service = fake.services[service_name(name)]
    return {t.revision: (t.percent, t.tag) for t in service.traffic if t.percent}


def predict(endpoint: str, name: str) -> tuple[str, list[float]]:
    """One row through the service URL: (the model version that answered, its outputs)."""
    client = triton.InferenceServerClient(endpoint.removeprefix("http://"))
    try:
        meta = client.get_model_metadata(name)
        tensor = triton.InferInput(meta.inputs[0].name, [1, 8], "FP32")
        tensor.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(1, 8))
        result = client.infer(name, [tensor])
        response = result.get_response()
        return response.model_version, result.as_numpy(response.outputs[0].name).ravel().tolist()
    finally:
        client.close()


def test_deploy_predict_update_canary_and_delete(cloud_plane, fake, registry, models_dir):
    plane = cloud_plane
    create(plane, "iris", models_dir, {"log_sample_rate": 0.5, "run": {
        "min_instances": 1, "max_instances": 3, "concurrency": 8, "cpu": 2, "memory": "4Gi"}})
    ready = wait_status(plane, "iris")
    assert ready["status"] == "READY", ready["error"]
    endpoint = ready["endpoint"]
    assert endpoint == fake.services[service_name("iris")].uri and endpoint.startswith("http://127.0.0.1:")
    version, outputs = predict(endpoint, "iris")
    assert version == "1" and outputs

    # What Cloud Run was asked for.
    (created,) = fake.calls("CreateService")
    assert created.parent == PARENT and created.service_id == "modelrun-iris"
    service = created.service
    assert dict(service.labels) == {"managed-by": "modelrun", "modelrun-deployment": "iris"}
    template = service.template
    assert template.revision == "modelrun-iris-r1"
    assert template.service_account == RUNTIME_SA
    assert template.execution_environment == run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2
    assert (template.scaling.min_instance_count, template.scaling.max_instance_count) == (1, 3)
    assert template.max_instance_request_concurrency == 8
    (container,) = template.containers
    assert container.image == "us-docker.pkg.dev/test/modelrun/iris:r1"
    assert [(p.name, p.container_port) for p in container.ports] == [("h2c", 8080)]
    assert container.startup_probe.HasField("grpc") and container.liveness_probe.HasField("grpc")
    startup = container.startup_probe
    assert startup.period_seconds * startup.failure_threshold == 240
    assert dict(container.resources.limits) == {"cpu": "2", "memory": "4Gi"}
    assert container.resources.startup_cpu_boost and container.resources.cpu_idle is False  # CPU always on
    env = {e.name: e.value for e in container.env}
    assert env["MODELRUN_MODEL_URI"] == "/srv/bundle"  # its bundle.json names the model and training data
    assert env["MODELRUN_MODEL_NAME"] == "iris" and env["MODELRUN_REVISION"] == "1"
    assert env["MODELRUN_FEATURE_NAMES"] == ",".join(FEATURES8)
    assert env["MODELRUN_LOG_SAMPLE_RATE"] == "0.5"
    assert env["MODELRUN_DATABASE_URL"].startswith("sqlite:///") and "MODELRUN_CLOUDSQL_INSTANCE" in env
    assert [(t.revision, t.percent) for t in service.traffic] == [("modelrun-iris-r1", 100)]
    policy = fake.policies[service_name("iris")]
    assert [(b.role, sorted(b.members)) for b in policy.bindings] == [("roles/run.invoker", sorted(INVOKERS))]
    assert "allUsers" not in str(policy)

    # An update deploys revision 2 while revision 1 keeps all traffic until revision 2 is ready.
    plane.deployments.update("iris", {"config": {"label": "target", "run": {"max_instances": 2}}})

    def deploying_r2():
        plane.reconcile_once()
        revs = plane.repo.load("iris")[2]
        return next((r for r in revs if r.revision == 2 and r.runtime), None)

    r2 = wait_until(deploying_r2, timeout=30, what="revision 2 to be started on Cloud Run")
    r1 = next(r for r in plane.repo.load("iris")[2] if r.revision == 1)
    assert fake.calls("UpdateService")[-1].service.template.revision == "modelrun-iris-r2"
    assert traffic(fake, "iris") == {"modelrun-iris-r1": (100, "")}
    assert plane.deployments.get("iris").to_json()["serving_revision"] == 1
    wait_until(lambda: plane.runner.probe(r2.runtime).state == "serving", timeout=150, what="revision 2 Ready")
    assert traffic(fake, "iris") == {"modelrun-iris-r1": (100, "")}  # ready is not serving yet
    assert predict(endpoint, "iris")[0] == "1"

    # Canary: half of the traffic to the new revision under the tag `canary`, the rest to the old one.
    plane.runner.serve(r2.runtime, r1.runtime, 50)
    assert traffic(fake, "iris") == {"modelrun-iris-r2": (50, "canary"), "modelrun-iris-r1": (50, "")}
    assert {predict(endpoint, "iris")[0] for _ in range(24)} == {"1", "2"}

    # The reconciler moves all traffic; after the drain revision 1 is deleted.
    ready = wait_status(plane, "iris", statuses=("READY",))
    assert ready["serving_revision"] == 2
    assert traffic(fake, "iris") == {"modelrun-iris-r2": (100, "")}
    wait_until(lambda: plane.reconcile_once() or f"{service_name('iris')}/revisions/modelrun-iris-r1"
               not in fake.revisions, timeout=30, what="revision 1 to be deleted after the drain")
    assert [r.name for r in fake.calls("DeleteRevision")] == [f"{service_name('iris')}/revisions/modelrun-iris-r1"]
    assert predict(endpoint, "iris")[0] == "2"

    # An update whose revision never becomes ready fails; revision 2 keeps serving.
    fake.never_ready = True
    plane.deployments.update("iris", {"config": {"label": "target", "run": {"startup_timeout": 2}}})

    def update_failed():
        plane.reconcile_once()
        found = plane.deployments.get("iris").to_json()
        return found if found["error"] else None

    failed = wait_until(update_failed, timeout=60, what="the update to revision 3 to fail")
    assert failed["status"] == "READY" and failed["serving_revision"] == 2 and failed["endpoint"] == endpoint
    assert failed["error"].startswith("update to revision 3 failed, revision 2 keeps serving: Cloud Run revision "
                                      "modelrun-iris-r3 failed: The user-provided container failed to start")
    assert traffic(fake, "iris") == {"modelrun-iris-r2": (100, "")}
    assert f"{service_name('iris')}/revisions/modelrun-iris-r3" not in fake.revisions
    assert predict(endpoint, "iris")[0] == "2"

    # Delete removes the service and stops its servers.
    plane.deployments.delete("iris")
    plane.reconcile_once()
    assert service_name("iris") not in fake.services and not fake.running()
    assert [r.name for r in fake.calls("DeleteService")] == [service_name("iris")]
    with pytest.raises(Exception):
        plane.deployments.get("iris")


def test_first_revision_that_never_gets_ready_fails_and_leaves_no_service(cloud_plane, fake, models_dir):
    fake.never_ready = True
    create(cloud_plane, "slow", models_dir, {"run": {"startup_timeout": 2}})
    failed = wait_status(cloud_plane, "slow", timeout=60)
    assert failed["status"] == "FAILED"
    assert failed["error"].startswith("Cloud Run revision modelrun-slow-r1 failed: The user-provided container "
                                      "failed to start and listen on the port")
    assert fake.services == {} and fake.revisions == {}
    assert [r.name for r in fake.calls("DeleteService")] == [service_name("slow")]


def test_unavailable_api_is_retried(cloud_plane, fake, models_dir):
    fake.never_ready = True  # no model server needed: the create is what is looked at
    fake.fail_next("CreateService", grpc.StatusCode.UNAVAILABLE, times=2)
    fake.fail_next("GetService", grpc.StatusCode.UNAVAILABLE, times=1)
    create(cloud_plane, "flaky", models_dir, {"run": {"startup_timeout": 1}})
    deploying = wait_status(cloud_plane, "flaky", statuses=("DEPLOYING", "FAILED"), timeout=30)
    assert deploying["status"] == "DEPLOYING", deploying["error"]
    assert len(fake.calls("CreateService")) == 3
    assert service_name("flaky") in fake.services
    failed = wait_status(cloud_plane, "flaky", timeout=30)
    assert "failed to start and listen" in failed["error"]  # failed for its own reason, not the API's


def test_permission_denied_fails_the_revision_with_the_reason(cloud_plane, fake, models_dir):
    fake.fail_next("CreateService", grpc.StatusCode.PERMISSION_DENIED,
                   message="Permission 'run.services.create' denied on resource")
    create(cloud_plane, "denied", models_dir)
    failed = wait_status(cloud_plane, "denied", timeout=30)
    assert failed["status"] == "FAILED"
    assert failed["error"] == ("Cloud Run refused to create service modelrun-denied: Permission "
                               "'run.services.create' denied on resource")
    assert len(fake.calls("CreateService")) == 1  # a refusal is not retried
    assert fake.services == {}


def test_sweep_deletes_labelled_services_no_deployment_owns(cloud_plane, fake):
    Service = run_v2.Service.pb()
    ghost = Service(name=service_name("ghost"), labels={"managed-by": "modelrun", "modelrun-deployment": "ghost"})
    other = Service(name=f"{PARENT}/services/someone-else", labels={"team": "web"})
    fake.add_service(ghost)
    fake.add_service(other)
    cloud_plane.reconcile_once()
    assert sorted(fake.services) == [f"{PARENT}/services/someone-else"]
    (listed,) = fake.calls("ListServices")
    assert listed.parent == PARENT


def test_run_config_is_checked_when_created(cloud_plane, models_dir):
    with pytest.raises(InvalidInput, match=r"config\.run\.cpu': cpu must be one of 1, 2, 4, 6, 8"):
        create(cloud_plane, "bad", models_dir, {"run": {"cpu": 3}})
    with pytest.raises(InvalidInput, match="min_instances \\(5\\) exceeds max_instances \\(2\\)"):
        create(cloud_plane, "bad", models_dir, {"run": {"min_instances": 5, "max_instances": 2}})
    with pytest.raises(InvalidInput, match="config.run.cpus"):
        create(cloud_plane, "bad", models_dir, {"run": {"cpus": 2}})


def test_model_servers_get_their_own_database_user_and_the_vpc_connector(home, fake, registry, models_dir,
                                                                         monkeypatch):
    """On Google Cloud with IAM database auth the servers sign in as their own service account, and reach a
    private-IP Cloud SQL through the VPC connector (what terraform/ sets up)."""
    connector = f"projects/{PROJECT}/locations/{REGION}/connectors/modelrun"
    monkeypatch.setenv("MODELRUN_SERVER_DATABASE_URL", "sqlite:///server.db")
    monkeypatch.setenv("MODELRUN_RUN_VPC_CONNECTOR", connector)
    monkeypatch.setenv("MODELRUN_RUN_SERVICE_ACCOUNT", RUNTIME_SA)
    monkeypatch.setenv("MODELRUN_RUN_SWEEP_INTERVAL", "0")
    monkeypatch.setenv("MODELRUN_RUNNER", "cloudrun")
    monkeypatch.setenv("MODELRUN_BUILDER", "fakeimage")
    monkeypatch.setenv("MODELRUN_GCP_PROJECT", PROJECT)
    monkeypatch.setenv("MODELRUN_GCP_REGION", REGION)
    monkeypatch.setenv("MODELRUN_RUN_ENDPOINT", fake.address)
    monkeypatch.setitem(BUILDERS, "fakeimage", lambda settings, storage: ImageBuilder(settings, storage, registry))
    plane = build_control_plane(Settings())
    try:
        create(plane, "iris", models_dir)

        def created():
            plane.reconcile_once()
            return fake.calls("CreateService")

        (call,) = wait_until(created, timeout=60, what="the Cloud Run service to be created")
        template = call.service.template
        assert template.vpc_access.connector == connector
        assert template.vpc_access.egress == run_v2.VpcAccess.VpcEgress.PRIVATE_RANGES_ONLY
        env = {e.name: e.value for e in template.containers[0].env}
        assert env["MODELRUN_DATABASE_URL"] == "sqlite:///server.db"
        assert plane.settings.resolved_database_url != "sqlite:///server.db"  # the control plane keeps its own
    finally:
        plane.shutdown()
