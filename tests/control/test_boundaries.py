"""What the control plane must never do: import TensorFlow, or read the environment outside settings."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.control.conftest import MAIN, REPO

SCRIPT = f"""
import sys, json
from functions_framework import create_app
app = create_app(target="api", source={MAIN!r})
plane = sys.modules["main"].control_plane()
client = app.test_client()
auth = {{"Authorization": "Bearer t"}}
status = client.post("/deployments", json={{"name": "x", "model_uri": "/nowhere.keras",
                                            "training_data_uri": "/nowhere.csv"}}, headers=auth).status_code
plane.reconcile_once()
found = client.get("/deployments/x", headers=auth).get_json()
plane.shutdown()
print(json.dumps([status, found["status"], "tensorflow" in sys.modules, "keras" in sys.modules]))
"""


def test_the_control_plane_runs_without_importing_tensorflow(home):
    env = {"PATH": "/usr/bin:/bin", "MODELRUN_HOME": str(home), "MODELRUN_TOKEN": "t"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '[202, "FAILED", false, false]'


def test_only_settings_reads_the_environment():
    sources = [*(REPO / "modelrun" / "control").rglob("*.py"), REPO / "modelrun" / "functions.py",
               REPO / "functions" / "main.py"]
    for path in sources:
        tree = ast.parse(path.read_text())
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert not names & {"environ", "getenv"}, f"{path} reads the environment; use modelrun.settings"
