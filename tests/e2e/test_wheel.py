"""modelrun installed from its wheel (`pip install 'modelrun[serving]'`) works without the checkout."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.e2e.conftest import Stack
from tests.serving.models import load_keras
from tests.util import build_wheel, serving_processes, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_the_declared_dependency_ranges_admit_the_pinned_versions():
    """pyproject.toml's ranges (what `pip install .` resolves) hold the versions requirements.txt tests."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.split("#")[0].strip():
            pinned = Requirement(line.split("#")[0])
            pins[canonicalize_name(pinned.name)] = next(iter(pinned.specifier)).version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *itertools.chain(*project["optional-dependencies"].values())]
    assert {"serving", "gcp"} <= project["optional-dependencies"].keys()
    for text in declared:
        wanted = Requirement(text)
        name = canonicalize_name(wanted.name)
        assert name in pins, f"{wanted.name} is a dependency of modelrun but requirements.txt does not pin it"
        assert wanted.specifier.contains(pins[name]), f"{text!r} excludes the pinned {wanted.name}=={pins[name]}"


class InstalledStack(Stack):
    """`modelrun up` and the CLI of a virtualenv, run as its user would: from another folder, no PYTHONPATH."""

    def __init__(self, home: Path, venv: Path):
        super().__init__(home, command=[str(venv / "bin" / "modelrun")], cwd=home.parent)

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in super().env.items() if k != "PYTHONPATH"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_up_deploy_and_predict_from_the_wheel_in_a_fresh_virtualenv(tmp_path, models):
    venv = tmp_path / "venv"
    wheel = build_wheel(REPO, tmp_path / "dist")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    # About 2-3 minutes: TensorFlow comes from the package index (pip's local wheels where there are some).
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[serving]"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    stack = InstalledStack(tmp_path / "home", venv)
    try:
        stack.up()
        located = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import modelrun, serving, dashboard\n"
             "for m in (modelrun, serving, dashboard): print(m.__file__)"],
            cwd=stack.cwd, env=stack.env, capture_output=True, text=True, check=True)
        for path in located.stdout.split():
            assert Path(path).is_relative_to(venv), f"{path} is not the virtualenv's: the checkout leaked in"

        assert "no deployments yet" in stack.cli("list").stdout
        dashboard = wait_until(lambda: (r := httpx.get(f"{stack.api}/dashboard/", timeout=5)).status_code == 200 and r,
                               timeout=60, interval=0.5, what="the dashboard (published by the first drift refresh)")
        assert "<title>modelrun" in dashboard.text

        deployed = stack.cli_json("deploy", "dense", "--model", str(models["v1"]),
                                  "--training-data", str(models["dense8_csv"]), "--wait")
        assert deployed["status"] == "READY", deployed
        (server,) = serving_processes(stack.home)
        command = Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")
        assert Path(command[0].decode()).parent == venv / "bin", command  # the virtualenv's model server
        row = {feature: 0.5 for feature in models["features"]}
        (prediction,) = stack.cli_json("predict", "dense", "-", input=json.dumps([row]))
        expected = load_keras(models["v1"])(np.full((1, 8), 0.5, dtype=np.float32))
        np.testing.assert_allclose(np.ravel(prediction["y"]), np.ravel(expected), rtol=1e-4, atol=1e-5)

        assert stack.stop(signal.SIGINT) == 0, stack.log_tail()
        assert not serving_processes(stack.home)
    finally:
        stack.cleanup()
        shutil.rmtree(venv, ignore_errors=True)  # TensorFlow: 2 GB
