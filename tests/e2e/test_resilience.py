"""`modelrun up` under stress: killed mid-deploy and started again, stopped with SIGTERM, a taken port."""

from __future__ import annotations

import shutil
import signal
import socket
import stat

import numpy as np
import pytest

from tests.e2e.conftest import Stack, one_error_line
from tests.util import serving_processes, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_stack(tmp_path):
    s = Stack(tmp_path / "home")
    yield s
    s.cleanup()


def test_killed_mid_deploy_then_restarted_reaches_ready_without_orphans(fresh_stack, models):
    stack = fresh_stack.up()
    assert stat.S_IMODE((stack.home / "token").stat().st_mode) == 0o600
    stack.cli("deploy", "crashy", "--model", str(models["v1"]), "--training-data", str(models["dense8_csv"]))
    client = stack.client()
    # Kill it while the model server is starting: the revision is recorded, a process runs, nothing is READY.
    wait_until(lambda: client.get("crashy")["status"] == "DEPLOYING", timeout=120, interval=0.05,
               what="the deploy to reach DEPLOYING")
    client.close()
    stack.stop(signal.SIGKILL)
    # While `up` is down, a manifest lands in the bucket: the next start picks it up.
    drop_manifest(stack.bucket / "offline", "offline", models)

    stack.up()  # same home, a new port: the new `up` owns everything now
    assert_serving(stack, {"crashy": 1, "offline": 1}, models)

    assert stack.stop() == 0, "`modelrun up` exits 0 on SIGTERM"
    wait_until(lambda: serving_processes(stack.home) == [], timeout=60, what="`up` to stop its model servers")

    # Started again, it serves the same revisions: the manifest already handled is not deployed again.
    stack.up()
    assert_serving(stack, {"crashy": 1, "offline": 1}, models)


def drop_manifest(folder, name, models) -> None:
    folder.mkdir(parents=True)
    shutil.copy(models["v1"], folder / "model.keras")
    shutil.copy(models["dense8_csv"], folder / "train.csv")
    (folder / "modelrun.yaml").write_text(f"name: {name}\nmodel: model.keras\ntraining_data: train.csv\n")


def assert_serving(stack, revisions: dict[str, int], models) -> None:
    """Each deployment READY at its revision, exactly one model server each (no orphan), each answering."""
    client = stack.client()
    wait_until(lambda: set(revisions) <= {d["name"] for d in client.list()}, timeout=60,
               what=f"deployments {sorted(revisions)}")
    endpoints = []
    for name, revision in revisions.items():
        deployment = client.wait(name, timeout=180)
        assert deployment["status"] == "READY", deployment  # a clear FAILED would name its reason here
        assert deployment["revision"] == revision, deployment
        endpoints.append(deployment["endpoint"].rsplit(":", 1)[1])
        x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
        rows = [dict(zip(models["features"], map(float, r), strict=True)) for r in x]
        assert len(client.predict(name, rows)) == 2
    client.close()
    live = serving_processes(stack.home)
    ports = []
    for pid in live:
        cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
        ports.append(cmdline[cmdline.index("--port") + 1])
    assert sorted(ports) == sorted(endpoints), f"model servers {live} on ports {ports}; endpoints {endpoints}"


def test_up_on_a_taken_port_fails_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(tmp_path / "home")
        stack.port = port
        result = stack.cli("up", "--port", str(port), check=False, timeout=120)
    line = one_error_line(result)
    assert str(port) in line
