"""The Cloud Build builder through the real `google-cloud-build` client against the fake Cloud Build API, with
models and training data in the Cloud Storage emulator: what a user sees of each deployment."""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.cloud.devtools import cloudbuild_v1 as cb

from modelrun.control.backends import cloudbuild_builder
from tests.cloudbuild.conftest import PROJECT, REGION, REPOSITORY, SERVICE_ACCOUNT, SERVING_IMAGE
from tests.control.conftest import FEATURES8, MAIN, wait_status
from tests.fakes.cloudbuild import pubsub_message
from tests.util import wait_until

IMAGE = f"{REPOSITORY}/models/iris:r1"
PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def deploy(plane, bucket, models_dir, model: str = "dense8", data: str = "train8", name: str = "iris",
           model_bytes: bytes | None = None):
    model_uri = bucket.put(f"{name}/model.keras", model_bytes if model_bytes is not None else models_dir[model])
    data_uri = bucket.put(f"{name}/train.csv", models_dir[data] if isinstance(data, str) else data)
    plane.deployments.create({"name": name, "model_uri": model_uri, "training_data_uri": data_uri,
                              "config": {"label": "target"}})
    return model_uri, data_uri


def revision(plane, name: str = "iris"):
    return plane.repo.load(name)[2][-1]


def building(plane, name: str = "iris"):
    """Reconcile until the revision waits on a Cloud Build; its handle."""
    def waiting():
        plane.reconcile_once()
        return revision(plane, name).build

    return wait_until(waiting, timeout=30, interval=0.1, what="a Cloud Build to start")


def infer8(address: str, model: str) -> np.ndarray:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address)
    tensor = triton.InferInput("x", [2, 8], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 8), np.float32))
    return client.infer(model, [tensor]).as_numpy(client.get_model_metadata(model).outputs[0].name)


def test_good_revision_is_built_on_the_base_image_and_serves(planes, fake, registry, artifact_api, bucket, models_dir):
    plane = planes()
    model_uri, data_uri = deploy(plane, bucket, models_dir)
    found = wait_status(plane, "iris", timeout=240)
    assert found["status"] == "READY", found
    assert found["features"] == FEATURES8
    assert infer8(found["endpoint"], "iris").shape == (2, 1)

    # the image: the bundle as one layer, pushed as models/iris:r1 and run by digest
    assert registry.images() == [IMAGE]
    layer = registry.folder(IMAGE)
    manifest = json.loads((layer / "bundle.json").read_text())
    assert manifest == {"model": "model.keras", "training_data": "training_data.csv", "features": FEATURES8}
    assert (layer / "model.keras").read_bytes() == models_dir["dense8"].read_bytes()
    assert (layer / "training_data.csv").read_bytes() == models_dir["train8"].read_bytes()
    assert revision(plane).artifact.startswith(f"{IMAGE}@sha256:")

    # what Cloud Build was asked to do
    [create] = fake.requests("CreateBuild")
    assert create.parent == f"projects/{PROJECT}/locations/{REGION}" and create.project_id == PROJECT
    build = create.build
    check, append = build.steps
    assert (check.name, check.entrypoint) == (SERVING_IMAGE, "python")
    assert list(check.args) == ["-m", "serving.check", "--model", model_uri, "--training-data", data_uri,
                                "--label", "target", "--out", "/workspace/bundle", "--layer", "/workspace/layer.tar",
                                "--at", "/srv/bundle"]
    assert append.name.startswith("gcr.io/go-containerregistry/") and "crane" in append.name
    assert f"append -b {SERVING_IMAGE} -f /workspace/layer.tar -t {IMAGE}" in append.args[-1]
    words = [w for step in build.steps for w in [step.name, step.entrypoint, *step.args]]
    assert not any("docker" in w and "pkg.dev" not in w for w in words), words  # the base is never rebuilt/pulled
    assert "build" not in [w for w in words if not w.startswith("-")]
    assert build.timeout.seconds == 300
    assert build.service_account == f"projects/{PROJECT}/serviceAccounts/{SERVICE_ACCOUNT}"
    assert build.substitutions["_DEPLOYMENT"] == "iris" and build.substitutions["_REVISION"] == "1"
    assert "modelrun-iris" in build.tags and any(t.startswith("modelrun-iris-r1-") for t in build.tags)

    # deleting the deployment deletes its images
    plane.deployments.delete("iris")
    wait_until(lambda: plane.reconcile_once() or not plane.repo.names(), timeout=60, what="iris to be deleted")
    assert registry.images() == []
    assert any(p.endswith("/packages/models%2Firis") for p in artifact_api.deletes), artifact_api.deletes


def test_file_that_is_no_model_fails_in_building_with_the_reason(planes, fake, registry, bucket, models_dir):
    plane = planes()
    deploy(plane, bucket, models_dir, model_bytes=b"age,rooms\n1,2\n")
    found = wait_status(plane, "iris", timeout=120)
    assert found["status"] == "FAILED"
    assert "model.keras is not a model: expected a Keras .keras file or a SavedModel folder" in found["error"], found
    assert registry.images() == []
    assert len(fake.requests("CreateBuild")) == 1
    assert [e["to"] for e in plane.repo.events("iris")][-1] == "FAILED"
    assert "BUILDING" in [e["to"] for e in plane.repo.events("iris")]


def test_training_data_that_does_not_fit_the_model_fails_with_the_reason(planes, bucket, models_dir, registry):
    plane = planes()
    deploy(plane, bucket, models_dir, data=b"a,b,c,target\n1,2,3,4\n5,6,7,8\n")
    found = wait_status(plane, "iris", timeout=180)
    assert found["status"] == "FAILED"
    assert found["error"] == ("the model's input 'x' takes 8 features but the training data has 3 feature columns "
                              "(a, b, c)"), found
    assert registry.images() == []


@pytest.mark.parametrize("outcome, reason", [
    ("FAILURE", "the image build failed: Build failed; check build logs for details (forced by the fake) "
                "(Cloud Build {id}, log: https://console.cloud.google.com/cloud-build/builds/{id}?project=test-project)"),
    ("TIMEOUT", "the image build did not finish within its timeout of 300 s (MODELRUN_BUILD_TIMEOUT) "
                "(Cloud Build {id}, log: https://console.cloud.google.com/cloud-build/builds/{id}?project=test-project)"),
])
def test_failed_and_timed_out_builds_fail_the_revision_with_the_reason(planes, fake, bucket, models_dir, outcome,
                                                                        reason):
    fake.force = outcome
    plane = planes()
    deploy(plane, bucket, models_dir)
    build_id = building(plane)["build_id"]
    found = wait_status(plane, "iris", timeout=60)
    assert found["status"] == "FAILED"
    assert found["error"] == reason.format(id=build_id)


def test_a_control_plane_killed_mid_build_resumes_the_same_build(planes, fake, bucket, models_dir):
    fake.hold()
    first = planes()
    deploy(first, bucket, models_dir)
    handle = building(first)
    wait_until(lambda: cb.Build.Status(fake.builds[handle["build_id"]].status).name == "WORKING", timeout=10,
               what="the build to be WORKING")
    first.shutdown()  # the process is gone; the revision's handle is in the database

    second = planes()
    second.reconcile_once()
    assert revision(second).build == handle and revision(second).state == "BUILDING"
    messages = [e["message"] for e in second.repo.events("iris")]
    assert f"building image {IMAGE} (Cloud Build {handle['build_id']})" in messages, messages
    fake.release()
    found = wait_status(second, "iris", ("DEPLOYING", "READY", "FAILED"), timeout=180)
    assert found["status"] in ("DEPLOYING", "READY"), found
    assert len(fake.requests("CreateBuild")) == 1


def test_a_build_created_but_not_recorded_is_found_by_its_tag(planes, fake, bucket, models_dir):
    fake.hold()
    plane = planes()
    deploy(plane, bucket, models_dir)
    rev = revision(plane)
    started = plane.builder.build(rev)  # CreateBuild ran, then the process died before saving the handle
    assert revision(plane).build is None

    again = planes()
    handle = building(again)
    assert handle["build_id"] == started.handle["build_id"]
    assert len(fake.requests("CreateBuild")) == 1
    fake.release()


def test_deleting_a_deployment_while_it_builds_cancels_the_build(planes, fake, bucket, models_dir):
    fake.hold()
    plane = planes()
    deploy(plane, bucket, models_dir)
    build_id = building(plane)["build_id"]
    plane.deployments.delete("iris")
    wait_until(lambda: plane.reconcile_once() or not plane.repo.names(), timeout=30, what="iris to be deleted")
    assert [r.id for r in fake.requests("CancelBuild")] == [build_id]
    assert cb.Build.Status(fake.builds[build_id].status).name == "CANCELLED"


def post_build_event(app, build):
    event = CloudEvent({"type": PUBLISHED, "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/cloud-builds"},
                       {"message": pubsub_message(build),
                        "subscription": f"projects/{PROJECT}/subscriptions/cloud-builds-on-build"})
    headers, body = to_binary(event)
    return app.test_client().post("/", headers=headers, data=body)


def test_the_on_build_function_moves_the_revision_on(planes, fake, bucket, models_dir):
    events = []
    fake.on_event = events.append
    fake.hold()
    plane = planes()
    deploy(plane, bucket, models_dir)
    build_id = building(plane)["build_id"]

    app = create_app(target="on_build", source=MAIN)
    module = sys.modules["main"]
    try:
        other = fake.builds[build_id].__class__(id="some-other-build", status=3)
        assert post_build_event(app, other).status_code == 200  # ignored: nobody waits on it
        fake.release()
        final = fake.wait(build_id)
        assert cb.Build.Status(final.status).name == "SUCCESS"
        assert [cb.Build.Status(e.status).name for e in events if e.id == build_id][-1] == "SUCCESS"
        assert post_build_event(app, final).status_code == 200
        # no pass of our own: the event did it
        assert revision(plane).state in ("DEPLOYING", "READY"), revision(plane)
        assert revision(plane).artifact.startswith(f"{IMAGE}@sha256:")
    finally:
        if module.control_plane.cache_info().currsize:
            module.control_plane().shutdown()
        module.control_plane.cache_clear()


def test_unavailable_api_is_retried_and_permission_denied_fails(planes, fake, bucket, models_dir, monkeypatch):
    fake.hold()
    plane = planes()
    deploy(plane, bucket, models_dir)
    fake.fail_next(2, grpc.StatusCode.UNAVAILABLE)
    handle = building(plane)  # retried within the pass
    assert len(fake.requests("CreateBuild")) == 1

    monkeypatch.setattr(cloudbuild_builder, "RETRY_SECONDS", 0.5)
    fake.fail_next(1000, grpc.StatusCode.UNAVAILABLE)
    plane.reconcile_once()  # Cloud Build does not answer: the revision waits
    assert revision(plane).state == "BUILDING" and revision(plane).build == handle
    fake._failures.clear()

    fake.fail_next(1, grpc.StatusCode.PERMISSION_DENIED)
    found = wait_status(plane, "iris", timeout=30)
    assert found["status"] == "FAILED"
    assert found["error"].startswith("Cloud Build refused GetBuild (permission denied: "), found
    assert [r.id for r in fake.requests("CancelBuild")] == [handle["build_id"]]
