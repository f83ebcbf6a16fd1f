"""`modelrun up` under stress: killed mid-deploy and started again, stopped with SIGTERM, a taken port."""

from __future__ import annotations

import signal
import socket
import stat

import numpy as np
import pytest

from tests.e2e.conftest import Stack, one_error_line, serving_processes
from tests.util import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_stack(tmp_path):
    s = Stack(tmp_path / "home")
    yield s
    s.cleanup()


def test_killed_mid_deploy_then_restarted_reaches_ready_without_orphans(fresh_stack, models):
    stack = fresh_stack.up()
    token = (stack.home / "token")
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    stack.cli("deploy", "crashy", "--model", str(models["v1"]), "--training-data", str(models["dense8_csv"]))
    client = stack.client()
    # Kill it while the model server is starting: the revision is recorded, a process runs, nothing is READY.
    wait_until(lambda: client.get("crashy")["status"] == "DEPLOYING", timeout=120, interval=0.05,
               what="the deploy to reach DEPLOYING")
    client.close()
    stack.stop(signal.SIGKILL)

    stack.up()  # same home, a new port: the new `up` owns everything now
    deployment = stack.client().wait("crashy", timeout=180)
    assert deployment["status"] == "READY", deployment  # a clear FAILED would name its reason here
    assert deployment["revision"] == 1

    # No orphan: exactly one model server for the one live revision (re-attached or restarted), and it
    # is the one behind the endpoint.
    live = serving_processes(stack.home)
    assert len(live) == 1, f"expected one model server for one READY revision, found pids {live}"
    cmdline = open(f"/proc/{live[0]}/cmdline").read().split("\0")
    assert cmdline[cmdline.index("--port") + 1] == deployment["endpoint"].rsplit(":", 1)[1]
    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    rows = [dict(zip(models["features"], map(float, r), strict=True)) for r in x]
    assert len(stack.client().predict("crashy", rows)) == 2

    assert stack.stop() == 0, "`modelrun up` exits 0 on SIGTERM"
    wait_until(lambda: serving_processes(stack.home) == [], timeout=60, what="`up` to stop its model servers")


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
