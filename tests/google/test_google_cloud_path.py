"""The whole Google Cloud path at once, each part through its real client library: models and training data in
Cloud Storage (the emulator), the image built by Cloud Build (fake API, the check step run for real), the model
served by Cloud Run (fake API, real model servers behind the service URL), the journal kept in Cloud Storage.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelrun.control import build_control_plane
from modelrun.settings import Settings
from tests.control.conftest import FEATURES8, home, models_dir, wait_status  # noqa: F401 (fixtures)
from tests.fakes.cloudbuild import FakeArtifactRegistryApi, FakeCloudBuild
from tests.fakes.cloudrun import FakeCloudRun
from tests.fakes.registry import FakeRegistry

PROJECT, REGION = "test-project", "europe-west1"
SERVING_IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/modelrun/serving:latest"


@pytest.fixture
def google(home, emulator, bucket, tmp_path, monkeypatch):  # noqa: F811 (fixtures)
    registry = FakeRegistry(tmp_path / "registry")
    build = FakeCloudBuild(registry, tmp_path / "cloudbuild", SERVING_IMAGE, project=PROJECT)
    build.start()
    artifacts = FakeArtifactRegistryApi(registry)
    run = FakeCloudRun(registry, tmp_path / "cloudrun")
    settings = {"STORAGE": "gcs", "BUILDER": "cloudbuild", "RUNNER": "cloudrun", "GCP_PROJECT": PROJECT,
                "GCP_REGION": REGION, "ARTIFACT_REPOSITORY": "modelrun", "SERVING_IMAGE": SERVING_IMAGE,
                "CLOUDBUILD_ENDPOINT": build.address, "ARTIFACTREGISTRY_ENDPOINT": artifacts.url,
                "RUN_ENDPOINT": run.address, "RUN_SWEEP_INTERVAL": "0", "JOURNAL_URI": bucket.uri("journal")}
    for key, value in settings.items():
        monkeypatch.setenv(f"MODELRUN_{key}", value)
    plane = build_control_plane(Settings())
    try:
        yield plane, registry, run
    finally:
        plane.shutdown()
        run.close()
        artifacts.close()
        build.stop()


def infer(endpoint: str, model: str, rows: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(endpoint.removeprefix("http://"))
    tensor = triton.InferInput("x", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32))
    return client.infer(model, [tensor]).as_numpy(client.get_model_metadata(model).outputs[0].name)


def test_deploy_predict_update_and_delete_on_the_google_cloud_path(google, bucket, models_dir):  # noqa: F811
    plane, registry, run = google
    model = bucket.put("iris/v1/model.keras", models_dir["dense8"])
    data = bucket.put("iris/train.csv", models_dir["train8"])
    plane.deployments.create({"name": "iris", "model_uri": model, "training_data_uri": data,
                              "config": {"label": "target", "run": {"max_instances": 3}}})
    ready = wait_status(plane, "iris", timeout=240)
    assert ready["status"] == "READY", ready
    assert ready["features"] == FEATURES8
    image = registry.images()[0]
    assert image.startswith(f"{REGION}-docker.pkg.dev/{PROJECT}/modelrun/models/iris:r1")
    x = np.random.default_rng(0).normal(size=(3, 8))
    first = infer(ready["endpoint"], "iris", x)
    assert first.shape == (3, 1)

    # The container Cloud Run was given: the image Cloud Build made, the bundle it carries, CPU always on
    # (the log is written after answering), and where to keep the journal when an instance stops.
    service = run.calls("CreateService")[0].service
    container = service.template.containers[0]
    assert container.image.split("@")[0] == image.split("@")[0]
    env = {e.name: e.value for e in container.env}
    assert env["MODELRUN_MODEL_URI"] == "/srv/bundle" and env["MODELRUN_JOURNAL_URI"] == bucket.uri("journal")
    assert container.resources.cpu_idle is False

    # An update builds a second image and moves the service's traffic to it; the URL stays.
    plane.deployments.update("iris", {"model_uri": bucket.put("iris/v2/model.keras", models_dir["dense8"])})
    updated = wait_status(plane, "iris", timeout=240)
    assert (updated["status"], updated["serving_revision"]) == ("READY", 2)
    assert updated["endpoint"] == ready["endpoint"]
    np.testing.assert_allclose(infer(updated["endpoint"], "iris", x), first, rtol=1e-5)  # same weights

    plane.deployments.delete("iris")
    wait_until_gone(plane, "iris")
    assert run.calls("DeleteService") and not run.running()
    assert registry.images() == []  # both images deleted from Artifact Registry


def wait_until_gone(plane, name: str) -> None:
    from modelrun.errors import NotFound
    from tests.util import wait_until

    def gone():
        plane.reconcile_once()
        try:
            plane.deployments.get(name)
        except NotFound:
            return True
        return False

    wait_until(gone, timeout=120, interval=0.3, what=f"{name} to be deleted")
