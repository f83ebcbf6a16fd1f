"""Control-plane fixtures: a fresh MODELRUN_HOME per test, the functions through functions-framework,
a ControlPlane built directly for reconciler tests, and test models and training data.

Every ControlPlane a test builds is shut down afterwards, and the test fails if a model server started
from its home is still running.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app

from modelrun.control import build_control_plane
from modelrun.settings import Settings
from tests.util import serving_processes, wait_until

REPO = Path(__file__).resolve().parents[2]
MAIN = str(REPO / "functions" / "main.py")
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINALIZED = "google.cloud.storage.object.v1.finalized"
FEATURES8 = [f"f{i}" for i in range(8)]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """MODELRUN_HOME for this test, with a known token and short drain grace."""
    for key in list(os.environ):
        if key.startswith("MODELRUN_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELRUN_HOME", str(home))
    monkeypatch.setenv("MODELRUN_TOKEN", TOKEN)
    monkeypatch.setenv("MODELRUN_DRAIN_GRACE", "1")
    monkeypatch.setenv("MODELRUN_STOP_TIMEOUT", "10")
    yield home
    leftover = serving_processes(home)
    assert not leftover, f"model servers left running: {leftover}"


class Functions:
    """The two Cloud Functions as functions-framework serves them, each with its own lazy ControlPlane."""

    def __init__(self):
        self.api_app = create_app(target="api", source=MAIN)
        self.api_module = sys.modules["main"]
        self.upload_app = create_app(target="on_upload", source=MAIN)
        self.upload_module = sys.modules["main"]
        self.api = self.api_app.test_client()
        self.upload = self.upload_app.test_client()

    @property
    def plane(self):
        """The ControlPlane behind `api` (the one `modelrun up` would reconcile with)."""
        return self.api_module.control_plane()

    def post_event(self, data: dict, *, structured: bool = False, type_: str = FINALIZED):
        event = CloudEvent({"type": type_, "source": f"//storage.googleapis.com/projects/_/buckets/{data['bucket']}",
                            "subject": f"objects/{data['name']}"}, data)
        headers, body = (to_structured if structured else to_binary)(event)
        return self.upload.post("/", headers=headers, data=body)

    def close(self) -> None:
        for module in (self.api_module, self.upload_module):
            if module.control_plane.cache_info().currsize:
                module.control_plane().shutdown()
            module.control_plane.cache_clear()


@pytest.fixture
def functions(home):
    functions = Functions()
    yield functions
    functions.close()


@pytest.fixture
def plane(home):
    """A ControlPlane built the way functions/main.py builds it, shut down after the test."""
    built = build_control_plane(Settings())
    yield built
    built.shutdown()


def wait_status(plane, name: str, statuses=("READY", "FAILED"), timeout: float = 150.0) -> dict:
    """Reconcile until deployment `name` has one of `statuses`; return it as JSON."""
    def done():
        plane.reconcile_once()
        found = plane.deployments.get(name).to_json()
        return found if found["status"] in statuses else None

    return wait_until(done, timeout=timeout, interval=0.2, what=f"{name} to reach {'/'.join(statuses)}")


def write_training_data(folder: Path, columns: list[str], rows: int = 20, fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({c: [float(i + j) for i in range(rows)] for j, c in enumerate(columns)})
    path = folder / f"train_{len(columns)}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    else:
        frame.to_parquet(path)
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> dict[str, Path]:
    """dense8 (.keras and SavedModel) and the tabular model, saved once; plus matching training data."""
    from tests.serving import models

    folder = tmp_path_factory.mktemp("control-models")
    files = {"dense8": models.save_dense8(folder), "tabular": models.save_tabular(folder)}
    files["dense8_savedmodel"] = models.export_savedmodel(models.load_keras(files["dense8"]), folder)
    files["train8"] = write_training_data(folder, FEATURES8 + ["target"])
    tabular = pd.DataFrame({"age": [31.0, 45.0], "rooms": [2, 3], "city": ["rome", "paris"],
                            "garden": [True, False], "price": [1.0, 2.0]})
    files["train_tabular"] = folder / "tabular.parquet"
    tabular.to_parquet(files["train_tabular"])
    return files
