"""Cloud Run runner fixtures: the fake Cloud Run Admin API on a free port with a FakeRegistry, and a
ControlPlane with MODELRUN_RUNNER=cloudrun whose builder pushes bundles to that registry as images.

The fake stops every model server it started when the test ends; the test fails if one is still alive.
"""

from __future__ import annotations

import os

import pytest

from modelrun.control import build_control_plane
from modelrun.control.backends import BUILDERS
from modelrun.settings import Settings
from tests.control.conftest import home, models_dir  # noqa: F401  (fixtures)
from tests.fakes.cloudrun import FakeCloudRun
from tests.fakes.imagebuilder import ImageBuilder
from tests.fakes.registry import FakeRegistry

PROJECT, REGION = "test-project", "europe-west1"
INVOKERS = ["serviceAccount:api@test-project.iam.gserviceaccount.com", "user:ann@example.com"]
RUNTIME_SA = "model-server@test-project.iam.gserviceaccount.com"


@pytest.fixture
def registry(tmp_path) -> FakeRegistry:
    return FakeRegistry(tmp_path / "registry")


@pytest.fixture
def fake(registry, tmp_path):
    fake = FakeCloudRun(registry, tmp_path / "cloudrun")
    yield fake
    pids = list(fake.running().values())
    fake.close()
    alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"fake Cloud Run left model servers running: {alive}"


@pytest.fixture
def cloud_plane(home, fake, registry, monkeypatch):  # noqa: F811
    """A ControlPlane on the cloudrun runner, talking to `fake` through the real google-cloud-run client."""
    monkeypatch.setenv("MODELRUN_RUNNER", "cloudrun")
    monkeypatch.setenv("MODELRUN_BUILDER", "fakeimage")
    monkeypatch.setenv("MODELRUN_GCP_PROJECT", PROJECT)
    monkeypatch.setenv("MODELRUN_GCP_REGION", REGION)
    monkeypatch.setenv("MODELRUN_RUN_ENDPOINT", fake.address)
    monkeypatch.setenv("MODELRUN_RUN_SERVICE_ACCOUNT", RUNTIME_SA)
    monkeypatch.setenv("MODELRUN_RUN_INVOKERS", ",".join(INVOKERS))
    monkeypatch.setenv("MODELRUN_RUN_API_TIMEOUT", "5")
    monkeypatch.setenv("MODELRUN_RUN_SWEEP_INTERVAL", "0")
    monkeypatch.setitem(BUILDERS, "fakeimage", lambda settings, storage: ImageBuilder(settings, storage, registry))
    plane = build_control_plane(Settings())
    yield plane
    plane.shutdown()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
