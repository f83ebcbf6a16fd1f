"""Cloud Build builder fixtures: the fake Cloud Build API (real gRPC, real `google-cloud-build` client), the fake
Artifact Registry it pushes to, the Cloud Storage emulator holding models and training data, and a control plane
with MODELRUN_BUILDER=cloudbuild and MODELRUN_STORAGE=gcs.

There is no fake Cloud Run here: the runner is `registry`, a test-only LocalRunner that serves an image's bundle
from the FakeRegistry folder the build pushed (what the real image has at /srv/bundle), so a revision built by
Cloud Build goes on to READY and answers predictions.
"""

from __future__ import annotations

import dataclasses

import pytest

from modelrun.control import build_control_plane
from modelrun.control.backends import RUNNERS
from modelrun.control.backends.local_runner import LocalRunner
from modelrun.settings import Settings
from tests.control.conftest import FEATURES8, home, models_dir, wait_status  # noqa: F401 (fixtures)
from tests.fakes.cloudbuild import FakeArtifactRegistryApi, FakeCloudBuild
from tests.fakes.registry import FakeRegistry

PROJECT = "test-project"
REGION = "europe-west1"
REPOSITORY = f"{REGION}-docker.pkg.dev/{PROJECT}/modelrun"
SERVING_IMAGE = f"{REPOSITORY}/serving:latest"
SERVICE_ACCOUNT = f"builder@{PROJECT}.iam.gserviceaccount.com"


class RegistryRunner(LocalRunner):
    """LocalRunner that runs an image's layer folder from the FakeRegistry (test-only)."""

    def __init__(self, settings: Settings, registry: FakeRegistry):
        super().__init__(settings)
        self.registry = registry

    def start(self, rev, features, address=None):
        return super().start(dataclasses.replace(rev, artifact=str(self.registry.folder(rev.artifact))), features,
                             address)


@pytest.fixture
def registry(tmp_path) -> FakeRegistry:
    return FakeRegistry(tmp_path / "registry")


@pytest.fixture
def fake(registry, tmp_path):
    fake = FakeCloudBuild(registry, tmp_path / "cloudbuild", SERVING_IMAGE, project=PROJECT)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def artifact_api(registry):
    api = FakeArtifactRegistryApi(registry)
    yield api
    api.close()


@pytest.fixture
def cb_home(home, monkeypatch, emulator, fake, artifact_api, registry):  # noqa: F811 (fixtures)
    for key, value in {"STORAGE": "gcs", "BUILDER": "cloudbuild", "RUNNER": "registry", "GCP_PROJECT": PROJECT,
                       "GCP_REGION": REGION, "ARTIFACT_REPOSITORY": "modelrun", "SERVING_IMAGE": SERVING_IMAGE,
                       "BUILD_SERVICE_ACCOUNT": SERVICE_ACCOUNT, "BUILD_TIMEOUT": "300",
                       "CLOUDBUILD_ENDPOINT": fake.address, "ARTIFACTREGISTRY_ENDPOINT": artifact_api.url}.items():
        monkeypatch.setenv(f"MODELRUN_{key}", value)
    monkeypatch.setitem(RUNNERS, "registry", lambda settings: RegistryRunner(settings, registry))
    return home


@pytest.fixture
def planes(cb_home):
    """Build control planes (as a function instance would); each is shut down after the test."""
    built = []

    def make():
        plane = build_control_plane(Settings())
        built.append(plane)
        return plane

    yield make
    for plane in built:
        plane.shutdown()
