"""The reconciler with real model servers: READY, FAILED with a reason, updates, deletes, crash and resume.

Each test stops every server it started (the `home` fixture fails a test that leaves one running).
"""

from __future__ import annotations

import gc
import os
import signal
import shutil
import socket
import zipfile

import grpc
import pytest

from modelrun.control import build_control_plane
from modelrun.control.repository import utcnow
from modelrun.proto import inference_pb2, inference_pb2_grpc
from modelrun.settings import Settings
from tests.control.conftest import FEATURES8, wait_status, write_training_data
from tests.util import serving_processes, wait_until

pytestmark = pytest.mark.slow


def create(plane, name, model, data, config=None):
    body = {"name": name, "model_uri": str(model), "training_data_uri": str(data)}
    return plane.deployments.create(body | ({"config": config} if config else {})).to_json()


def model_metadata(endpoint: str, name: str):
    with grpc.insecure_channel(endpoint) as channel:
        return inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            inference_pb2.ModelMetadataRequest(name=name), timeout=10)


def versions(endpoint: str, name: str) -> list[str]:
    return list(model_metadata(endpoint, name).versions)


def test_keras_and_savedmodel_reach_ready_and_are_deleted(plane, home, models_dir):
    create(plane, "dense", models_dir["dense8"], models_dir["train8"], {"label": "target"})
    create(plane, "saved", models_dir["dense8_savedmodel"], models_dir["train8"], {"label": "target"})
    for name in ("dense", "saved"):
        ready = wait_status(plane, name)
        assert ready["status"] == "READY", ready["error"]
        assert ready["endpoint"].startswith("127.0.0.1:") and ready["serving_revision"] == 1
        assert ready["features"] == FEATURES8  # the training data's columns, label "target" left out
        assert [i.name for i in model_metadata(ready["endpoint"], name).inputs]
    assert (home / "bundles" / "dense" / "1" / "model.keras").is_file()
    assert (home / "bundles" / "saved" / "1" / "model" / "saved_model.pb").is_file()
    assert models_dir["dense8"].is_file()  # copied, not moved
    events = plane.deployments.events("dense")
    assert [e["to"] for e in events] == ["PENDING", "BUILDING", "DEPLOYING", "READY"]

    for name in ("dense", "saved"):
        assert plane.deployments.delete(name).status == "DELETING"
        assert plane.deployments.delete(name).status == "DELETING"  # twice is fine
    plane.reconcile_once()
    assert plane.deployments.list() == []
    assert not (home / "bundles" / "dense").exists()
    assert serving_processes(home) == []


def test_named_inputs_with_numeric_and_string_features(plane, models_dir):
    create(plane, "tabular", models_dir["tabular"], models_dir["train_tabular"], {"label": "price"})
    ready = wait_status(plane, "tabular")
    assert ready["status"] == "READY", ready["error"]


def failed(plane, name, model, data, config=None) -> str:
    create(plane, name, model, data, config)
    result = wait_status(plane, name)
    assert result["status"] == "FAILED" and result["endpoint"] is None
    return result["error"]


def test_bad_inputs_fail_with_a_reason_and_leave_nothing(plane, home, tmp_path, models_dir):
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("these are my notes")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(models_dir["dense8"].read_bytes()[:2000])
    no_config = tmp_path / "other.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("readme.txt", "hello")
    empty_folder = tmp_path / "empty_model"
    empty_folder.mkdir()
    no_rows = tmp_path / "empty.csv"
    no_rows.write_text(",".join(FEATURES8) + "\n")
    train8 = models_dir["train8"]

    assert "is not a model" in failed(plane, "notes", not_a_model, train8)
    assert "corrupt" in failed(plane, "corrupt", corrupt, train8)
    assert "no config.json" in failed(plane, "zipped", no_config, train8)
    assert "no saved_model.pb" in failed(plane, "folder", empty_folder, train8)
    assert "does not exist" in failed(plane, "missing", tmp_path / "nowhere.keras", train8)
    assert "does not exist" in failed(plane, "nodata", models_dir["dense8"], tmp_path / "nowhere.csv")
    assert "no rows" in failed(plane, "norows", models_dir["dense8"], no_rows)
    assert "label column 'price'" in failed(plane, "nolabel", models_dir["dense8"], train8, {"label": "price"})
    for name in ("notes", "corrupt", "zipped", "folder", "missing", "nodata", "norows", "nolabel"):
        assert not (home / "bundles" / name / "1").exists()
    assert serving_processes(home) == []


def test_corrupt_model_that_passes_the_file_checks_fails_when_the_server_cannot_load_it(plane, home, tmp_path,
                                                                                        models_dir):
    broken = tmp_path / "broken_savedmodel"
    shutil.copytree(models_dir["dense8_savedmodel"], broken)
    (broken / "saved_model.pb").write_bytes(b"\x08garbage that is no protobuf")
    reason = failed(plane, "broken", broken, models_dir["train8"], {"label": "target"})
    assert reason.startswith("the model server exited with code")
    assert serving_processes(home) == []


def test_training_data_that_does_not_match_the_model_fails_naming_the_columns(plane, home, tmp_path, models_dir):
    three = write_training_data(tmp_path, ["a", "b", "c"])
    reason = failed(plane, "narrow", models_dir["dense8"], three)
    assert "takes 8 features" in reason and "a, b, c" in reason
    reason = failed(plane, "narrowsaved", models_dir["dense8_savedmodel"], three)
    assert "8" in reason and "3" in reason and "a, b, c" in reason
    wrong_names = write_training_data(tmp_path, ["age", "rooms", "town", "garden", "price"], fmt="json")
    reason = failed(plane, "names", models_dir["tabular"], wrong_names, {"label": "price"})
    assert "city" in reason and "age, rooms, town, garden" in reason
    assert serving_processes(home) == []


def test_update_rolls_to_a_new_revision_while_the_old_one_serves(plane, home, tmp_path, models_dir):
    create(plane, "roll", models_dir["dense8"], models_dir["train8"], {"label": "target"})
    first = wait_status(plane, "roll")
    assert first["status"] == "READY", first["error"]
    old = first["endpoint"]

    updated = plane.deployments.update("roll", {"model_uri": str(models_dir["dense8_savedmodel"])}).to_json()
    assert (updated["status"], updated["revision"], updated["endpoint"]) == ("PENDING", 2, old)

    def rolled():
        plane.reconcile_once()
        current = plane.deployments.get("roll").to_json()
        if current["status"] != "READY":  # one endpoint answers meanwhile (revision 2 joins it once warm)
            assert current["endpoint"] == old and versions(old, "roll") in (["1"], ["2"])
        return current if current["status"] == "READY" else None

    second = wait_until(rolled, timeout=150, interval=0.2, what="revision 2 READY")
    assert second["serving_revision"] == 2 and second["endpoint"] == old and second["error"] is None
    wait_until(lambda: plane.reconcile_once() or len(serving_processes(home)) == 1, timeout=60,
               what="the old revision to stop after the drain grace")
    assert versions(old, "roll") == ["2"]
    assert not (home / "bundles" / "roll" / "1").exists()

    # A failing update leaves revision 2 serving and says why.
    bad = tmp_path / "bad.keras"
    bad.write_text("nope")
    plane.deployments.update("roll", {"model_uri": str(bad)})
    third = wait_status(plane, "roll")
    assert third["status"] == "READY" and third["revision"] == 3 and third["serving_revision"] == 2
    assert "update to revision 3 failed" in third["error"] and "is not a model" in third["error"]
    assert third["endpoint"] == second["endpoint"] and versions(third["endpoint"], "roll") == ["2"]


def test_crash_mid_deploy_resumes_to_ready_without_orphans(home, models_dir):
    first = build_control_plane(Settings())
    create(first, "crash", models_dir["dense8"], models_dir["train8"], {"label": "target"})
    wait_status(first, "crash", statuses=("DEPLOYING",))
    first.reconcile_once()  # the server process has started
    assert len(serving_processes(home)) == 1
    del first  # no shutdown: as if `modelrun up` was killed
    gc.collect()

    second = build_control_plane(Settings())
    try:
        ready = wait_status(second, "crash")
        assert ready["status"] == "READY", ready["error"]
        assert len(serving_processes(home)) == 1  # re-attached, not started twice
        assert versions(ready["endpoint"], "crash") == ["1"]
    finally:
        second.shutdown()
    assert serving_processes(home) == []

    # After a clean shutdown the next start brings the deployment back on its endpoint, once another
    # program that took the port meanwhile lets it go.
    port = int(ready["endpoint"].rpartition(":")[2])
    third = build_control_plane(Settings())
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            wait_until(lambda: third.reconcile_once() or any(
                "is taken by another program" in (e["message"] or "") for e in third.deployments.events("crash")),
                timeout=30, what="the restart to name the taken port")
            assert serving_processes(home) == []
        again = wait_status(third, "crash", statuses=("READY",))
        assert again["endpoint"] == ready["endpoint"] and versions(again["endpoint"], "crash") == ["1"]
        assert len(serving_processes(home)) == 1
    finally:
        third.shutdown()


def test_a_stray_server_nobody_recorded_is_stopped(plane, home, models_dir):
    create(plane, "stray", models_dir["dense8"], models_dir["train8"], {"label": "target"})
    wait_status(plane, "stray", statuses=("DEPLOYING",))
    plane.reconcile_once()
    runtime = plane.repo.load("stray")[2][0].runtime
    # Forget the server, as if the control plane died between starting it and recording it.
    plane.repo.set_revision(plane.repo.load("stray")[2][0], runtime=None)
    plane.reconcile_once()
    wait_until(lambda: runtime["pid"] not in serving_processes(home), timeout=30, what="the stray to stop")
    ready = wait_status(plane, "stray")
    assert ready["status"] == "READY", ready["error"]


def test_a_ready_server_that_dies_is_restarted_on_its_endpoint(plane, home, models_dir):
    create(plane, "phoenix", models_dir["dense8"], models_dir["train8"], {"label": "target"})
    ready = wait_status(plane, "phoenix")
    assert ready["status"] == "READY", ready["error"]
    [pid] = serving_processes(home)
    os.kill(pid, signal.SIGKILL)
    wait_status(plane, "phoenix", statuses=("DEPLOYING",), timeout=30)
    again = wait_status(plane, "phoenix")
    assert again["status"] == "READY" and again["endpoint"] == ready["endpoint"]
    assert versions(again["endpoint"], "phoenix") == ["1"]
    assert any("restarting" in (e["message"] or "") for e in plane.deployments.events("phoenix"))


def test_an_update_during_an_update_supersedes_it(plane, tmp_path, models_dir):
    bad = tmp_path / "bad.keras"
    bad.write_text("nope")
    create(plane, "twice", bad, models_dir["train8"])
    plane.deployments.update("twice", {"model_uri": str(models_dir["dense8"]),
                                       "training_data_uri": str(tmp_path / "missing.csv")})
    result = wait_status(plane, "twice")
    assert (result["status"], result["revision"]) == ("FAILED", 2) and "missing.csv does not exist" in result["error"]
    states = {r.revision: r.state for r in plane.repo.load("twice")[2]}
    assert states == {1: "RETIRED", 2: "FAILED"}


def test_a_server_that_keeps_crashing_is_restarted_with_backoff_then_failed(home, models_dir, monkeypatch):
    monkeypatch.setenv("MODELRUN_RESTART_LIMIT", "3")
    monkeypatch.setenv("MODELRUN_RESTART_BACKOFF", "2")
    plane = build_control_plane(Settings())
    try:
        create(plane, "flaky", models_dir["dense8"], models_dir["train8"], {"label": "target"})
        ready = wait_status(plane, "flaky")
        assert ready["status"] == "READY", ready["error"]
        for crash in (1, 2):
            [pid] = serving_processes(home)
            os.kill(pid, signal.SIGKILL)
            wait_status(plane, "flaky", statuses=("DEPLOYING",), timeout=30)
            rev = plane.repo.load("flaky")[2][0]
            assert (rev.state, rev.restarts, rev.runtime) == ("DEPLOYING", crash, None)
            assert rev.retry_at is not None  # waits 2 s, then 4 s, before starting again
            plane.reconcile_once()
            if utcnow() < rev.retry_at:
                assert not serving_processes(home), "restarted before its backoff ended"
            again = wait_status(plane, "flaky")
            assert again["status"] == "READY" and again["endpoint"] == ready["endpoint"]
        [pid] = serving_processes(home)
        os.kill(pid, signal.SIGKILL)
        failed = wait_status(plane, "flaky", statuses=("FAILED",), timeout=30)
        assert "crashed 3 times within 600 s" in failed["error"]
        restarts = [e["message"] for e in plane.deployments.events("flaky") if "restarting in" in (e["message"] or "")]
        assert [m.split(" (")[0] for m in restarts] == ["restarting in 2.0 s", "restarting in 4.0 s"]
        assert "crash 2 of 3 allowed" in restarts[1]
    finally:
        plane.shutdown()
