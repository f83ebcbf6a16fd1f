"""Deploying from Cloud Storage: the model server loads gs:// models, and the control plane with
MODELRUN_STORAGE=gcs (local builder and runner) deploys what an upload event names, or fails with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelrun.control import build_control_plane
from modelrun.settings import Settings
from tests.control.conftest import AUTH, FEATURES8, functions, home, models_dir, wait_status  # noqa: F401 (fixtures)
from tests.serving.conftest import NO_LOG, start_servers
from tests.util import serving_processes


def infer8(address: str, model: str) -> np.ndarray:
    client = triton.InferenceServerClient(address)
    tensor = triton.InferInput("x", [2, 8], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 8), np.float32))
    return client.infer(model, [tensor]).as_numpy(client.get_model_metadata(model).outputs[0].name)


def test_model_server_loads_gs_keras_and_savedmodel(bucket, models_dir, tmp_path):
    keras_uri = bucket.put("dense8/model.keras", models_dir["dense8"])
    saved_uri = bucket.put_folder("dense8/saved", models_dir["dense8_savedmodel"])
    cache = {"TMPDIR": str(tmp_path), **NO_LOG}
    with start_servers({"keras": (keras_uri, "k8"), "saved": (saved_uri, "s8")}, env=cache) as servers:
        from_keras = infer8(servers["keras"].address, "k8")
        from_saved = infer8(servers["saved"].address, "s8")
    assert from_keras.shape == (2, 1)
    np.testing.assert_allclose(from_keras, from_saved, rtol=1e-5)


@pytest.fixture
def gcs_home(home, monkeypatch, emulator):
    monkeypatch.setenv("MODELRUN_STORAGE", "gcs")
    return home


def upload_event(bucket, name: str, generation: str = "1") -> dict:
    return {"bucket": bucket.name, "name": name, "generation": generation, "contentType": "application/json",
            "size": "100", "metageneration": "1", "timeCreated": "2026-12-02T09:00:00.000Z"}


def test_manifest_uploaded_to_the_bucket_deploys_to_ready(gcs_home, functions, bucket, models_dir):
    bucket.put("iris/model.keras", models_dir["dense8"])
    bucket.put("iris/train.csv", models_dir["train8"])
    name = "iris/modelrun.json"
    bucket.put(name, json.dumps({"name": "iris", "model": "model.keras", "training_data": "train.csv",
                                 "config": {"label": "target"}}))
    assert functions.post_event(upload_event(bucket, name)).status_code == 200
    found = wait_status(functions.plane, "iris")
    assert found["status"] == "READY", found
    assert found["model_uri"] == bucket.uri("iris/model.keras")
    assert found["training_data_uri"] == bucket.uri("iris/train.csv")
    assert found["features"] == FEATURES8
    assert infer8(found["endpoint"], "iris").shape == (2, 1)
    # Not a path a Cloud Storage deployment can read: refused at the door, nothing recorded.
    refused = functions.api.post("/deployments", headers=AUTH, json={
        "name": "local", "model_uri": "/srv/model.keras", "training_data_uri": bucket.uri("iris/train.csv")})
    assert refused.status_code == 400 and "gs://BUCKET/OBJECT" in refused.get_json()["error"]["message"]


def test_bad_objects_fail_with_the_reason(gcs_home, bucket, models_dir, tmp_path):
    train = bucket.put("train.csv", models_dir["train8"])
    whole = models_dir["dense8"].read_bytes()
    truncated = bucket.put("truncated.keras", whole[: len(whole) // 2])
    no_graph = tmp_path / "no_graph"
    (no_graph / "variables").mkdir(parents=True)
    (no_graph / "variables" / "variables.index").write_bytes(b"index")
    folder = bucket.put_folder("nograph", no_graph)
    cases = {"missing": (bucket.uri("nowhere/model.keras"), "does not exist"),
             "truncated": (truncated, "corrupt"),
             "nograph": (folder, "no saved_model.pb"),
             "nodata": (bucket.put("ok.keras", whole), "no-such-train.csv does not exist")}
    plane = build_control_plane(Settings())
    try:
        for name, (model_uri, _) in cases.items():
            data_uri = bucket.uri("no-such-train.csv") if name == "nodata" else train
            plane.deployments.create({"name": name, "model_uri": model_uri, "training_data_uri": data_uri,
                                      "config": {"label": "target"}})
        for name, (_, words) in cases.items():
            found = wait_status(plane, name)
            assert found["status"] == "FAILED", found
            assert words in found["error"], found["error"]
        assert serving_processes(gcs_home) == []
        assert not (gcs_home / "bundles").exists() or not any((gcs_home / "bundles").rglob("bundle.json"))
    finally:
        plane.shutdown()


@pytest.fixture
def storage_down(monkeypatch):
    """Cloud Storage stops answering (a client aimed at a closed port), with a short retry budget."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from modelrun import gcs
    from tests.util import free_port

    dead = storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": f"http://127.0.0.1:{free_port()}"})
    monkeypatch.setattr(gcs, "RETRY_SECONDS", 1.0)
    monkeypatch.setattr(gcs, "_client", dead)
    return lambda: monkeypatch.setattr(gcs, "_client", None)  # back up: the next call makes a client again


def test_storage_outage_delays_a_deploy_and_an_upload_without_failing_them(gcs_home, functions, bucket, models_dir,
                                                                             storage_down):
    plane = functions.plane
    plane.deployments.create({"name": "later", "model_uri": bucket.uri("later/model.keras"),
                              "training_data_uri": bucket.uri("later/train.csv"), "config": {"label": "target"}})
    plane.reconcile_once()
    plane.reconcile_once()
    assert plane.deployments.get("later").to_json()["status"] == "BUILDING"
    name = "iris/modelrun.json"
    assert functions.post_event(upload_event(bucket, name)).status_code == 500  # Eventarc delivers it again

    storage_down()  # Cloud Storage answers again
    bucket.put("later/model.keras", models_dir["dense8"])
    bucket.put("later/train.csv", models_dir["train8"])
    bucket.put(name, json.dumps({"name": "iris", "model": "gs://" + bucket.name + "/later/model.keras",
                                 "training_data": "../later/train.csv", "config": {"label": "target"}}))
    assert functions.post_event(upload_event(bucket, name)).status_code == 200  # the redelivery deploys
    assert functions.api.get("/deployments/iris", headers=AUTH).get_json()["status"] == "PENDING"
    assert wait_status(plane, "later")["status"] == "READY"
