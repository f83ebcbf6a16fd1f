"""The `modelrun` command as a user meets it: one clear line and a non-zero exit for every mistake, a
FAILED deploy that names its reason, and a fast start that never imports TensorFlow.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import Stack, one_error_line
from tests.util import free_port

pytestmark = pytest.mark.slow


def test_cli_without_a_running_api_says_so_in_one_line(tmp_path):
    stack = Stack(tmp_path / "home")
    stack.port = free_port()
    for args in (["list"], ["get", "nothing"], ["predict", "nothing", "-"]):
        line = one_error_line(stack.cli(*args, check=False, input="[{\"a\": 1}]"))
        assert f"127.0.0.1:{stack.port}" in line and "modelrun up" in line


def test_user_errors_are_one_line_and_nonzero(stack_for_errors, models, tmp_path):
    stack = stack_for_errors
    assert "nosuch" in one_error_line(stack.cli("get", "nosuch", check=False))
    assert "nosuch" in one_error_line(stack.cli("delete", "nosuch", check=False))
    one_error_line(stack.cli("deploy", "Bad_Name", "--model", str(models["v1"]),
                             "--training-data", str(models["dense8_csv"]), check=False))
    one_error_line(stack.cli("predict", "nosuch", "-", input="[{\"f0\": 1}]", check=False))
    (tmp_path / "empty.json").write_text("")
    one_error_line(stack.cli("predict", "nosuch", str(tmp_path / "empty.json"), check=False))
    wrong_token = stack.env | {"MODELRUN_TOKEN": "not-the-token"}
    one_error_line(stack.cli("list", env=wrong_token, check=False))


def test_a_second_up_on_the_same_home_refuses_in_one_line(stack_for_errors):
    stack = stack_for_errors
    line = one_error_line(stack.cli("up", "--port", str(free_port()), check=False, timeout=120))
    assert f"pid {stack.proc.pid}" in line and str(stack.home) in line
    assert stack.cli_json("list")["deployments"] is not None  # the first one is unharmed


def test_a_deploy_that_fails_exits_nonzero_with_the_reason(stack_for_errors, models):
    stack = stack_for_errors
    result = stack.cli("deploy", "broken", "--model", str(models["dense8_csv"]), "--training-data",
                       str(models["dense8_csv"]), "--wait", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: broken FAILED: ") and "not a model" in last, result.stderr
    assert "Traceback" not in result.stderr
    assert stack.cli_json("get", "broken")["status"] == "FAILED"
    stack.cli("delete", "broken", "--wait")


def test_the_cli_starts_without_tensorflow(tmp_path):
    for args in (["--help"], ["list", "--help"], ["predict", "--help"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "modelrun", *args], capture_output=True,
                                text=True, check=True)
        imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
        assert imported and not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]


@pytest.fixture(scope="module")
def stack_for_errors(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("errors") / "home")
    try:
        yield s.up()
    finally:
        s.cleanup()
