"""A user's day with modelrun, through the `modelrun` command and a running `modelrun up`:
deploy a Keras model and a SavedModel, predict (JSON, CSV, tritonclient), roll out a new version while
traffic flows, delete, and let a manifest dropped into the bucket deploy itself.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import MODELRUN, one_error_line, write_csv
from tests.util import serving_processes, wait_until

pytestmark = pytest.mark.slow


def rows_of(x: np.ndarray, features: list[str]) -> list[dict]:
    return [dict(zip(features, map(float, row), strict=True)) for row in x]


def single_output(predictions: list[dict]) -> np.ndarray:
    assert all(len(p) == 1 for p in predictions), predictions[:1]
    return np.array([float(np.ravel(next(iter(p.values())))[0]) for p in predictions])


def expected_dense8(path, x: np.ndarray) -> np.ndarray:
    from tests.serving.models import load_keras

    return np.asarray(load_keras(path)(x)).ravel()


def deploy(stack, name: str, model, data, *extra: str) -> dict:
    deployment = stack.cli_json("deploy", name, "--model", str(model), "--training-data", str(data), "--wait", *extra)
    assert deployment["status"] == "READY", deployment
    assert deployment["endpoint"], deployment
    return deployment


def test_keras_model_deploys_and_predicts_from_json_csv_and_tritonclient(stack, models, tmp_path):
    # Deployed from a copy that is then removed: the column order can only come from the API's `features`.
    training_data = shutil.copy(models["dense8_csv"], tmp_path / "train.csv")
    deployment = deploy(stack, "dense", models["v1"], training_data)
    features = models["features"]
    assert deployment["features"] == features
    (tmp_path / "train.csv").unlink()
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    expected = expected_dense8(models["v1"], x)

    # JSON rows from a file, keys in a different order than the training data's columns
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps([dict(reversed(list(r.items()))) for r in rows_of(x, features)]))
    np.testing.assert_allclose(single_output(stack.cli_json("predict", "dense", str(rows_file))), expected,
                               rtol=1e-4, atol=1e-5)

    # CSV on standard input
    csv_file = write_csv(tmp_path / "rows.csv", features, x.tolist())
    predicted = stack.cli_json("predict", "dense", "-", input=csv_file.read_text())
    np.testing.assert_allclose(single_output(predicted), expected, rtol=1e-4, atol=1e-5)

    # A row without a feature is one error naming it; keys the model does not take are ignored
    rows = rows_of(x, features)
    del rows[1]["f3"], rows[3]["f3"], rows[3]["f6"]
    line = one_error_line(stack.cli("predict", "dense", "-", input=json.dumps(rows), check=False))
    assert "missing features 'f3' (rows 1, 3), 'f6' (row 3); each row needs all of: f0, f1" in line, line
    extra = [{"id": i, **row, "target": 0.5} for i, row in enumerate(rows_of(x, features))]
    with stack.client() as client:
        np.testing.assert_allclose(single_output(client.predict("dense", extra)), expected, rtol=1e-4, atol=1e-5)

    # Piped, the answer is CSV: the input columns as given, then the output, in full
    piped = list(csv.reader(io.StringIO(stack.cli("predict", "dense", str(csv_file)).stdout)))
    given = list(csv.reader(io.StringIO(csv_file.read_text())))
    assert piped[0][:8] == features and len(piped[0]) == 9, piped[0]
    assert [line[:8] for line in piped[1:]] == given[1:]
    np.testing.assert_allclose([float(line[8]) for line in piped[1:]], expected, rtol=1e-4, atol=1e-5)
    # ... and `| head` takes the first lines of a long answer without an error from modelrun
    many = write_csv(tmp_path / "many.csv", features, np.random.default_rng(2).normal(size=(4000, 8)).tolist())
    head = subprocess.run(f"{shlex.join([*MODELRUN, 'predict', 'dense', str(many)])} | head -n 3", shell=True,
                          env=stack.env, capture_output=True, text=True, timeout=120)
    assert head.stdout.splitlines()[0].split(",")[:8] == features and len(head.stdout.splitlines()) == 3
    assert head.stderr == "", head.stderr

    # A client nobody here wrote, on the endpoint the deployment names
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(deployment["endpoint"])
    metadata = client.get_model_metadata(deployment["name"], as_json=True)
    tensor = triton.InferInput(metadata["inputs"][0]["name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(deployment["name"], [tensor])
    np.testing.assert_allclose(result.as_numpy(metadata["outputs"][0]["name"]).ravel(), expected, rtol=1e-4, atol=1e-5)
    client.close()

    listed = stack.cli_json("list")["deployments"]
    assert [d["name"] for d in listed if d["name"] == "dense"] == ["dense"]
    assert stack.cli_json("get", "dense")["status"] == "READY"
    assert "READY" in stack.cli("get", "dense").stdout
    stack.cli("delete", "dense", "--wait")


def test_savedmodel_deploys_then_delete_makes_it_gone(stack, models):
    from tests.serving.models import build_dense8

    before = len(serving_processes(stack.home))
    deploy(stack, "saved", models["savedmodel"], models["dense8_csv"])
    x = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    predicted = single_output(stack.client().predict("saved", rows_of(x, models["features"])))
    np.testing.assert_allclose(predicted, np.asarray(build_dense8(seed=2)(x)).ravel(), rtol=1e-4, atol=1e-5)

    assert "deleted" in stack.cli("delete", "saved", "--wait").stdout
    gone = stack.cli("get", "saved", check=False)
    assert gone.returncode != 0
    assert gone.stderr.startswith("error:") and len(gone.stderr.strip().splitlines()) == 1
    assert "saved" in gone.stderr
    wait_until(lambda: len(serving_processes(stack.home)) == before, timeout=60, what="the model server to stop")


def test_named_inputs_with_string_features(stack, models, tmp_path):
    from tests.serving.models import load_keras, tabular_rows

    deploy(stack, "houses", models["tabular"], models["tabular_csv"])
    t = tabular_rows(6, seed=3)
    rows = [{"city": str(t["city"][i, 0]), "garden": bool(t["garden"][i, 0]), "rooms": int(t["rooms"][i, 0]),
             "age": float(t["age"][i, 0])} for i in range(6)]
    (tmp_path / "houses.json").write_text(json.dumps(rows))
    predicted = stack.cli_json("predict", "houses", str(tmp_path / "houses.json"))
    expected = load_keras(models["tabular"])(t)
    # The same rows as CSV (every value text: the model's metadata gives each feature its datatype)
    csv_rows = write_csv(tmp_path / "houses.csv", list(rows[0]), [list(r.values()) for r in rows]).read_text()
    from_csv = stack.cli_json("predict", "houses", "-", input=csv_rows)
    for output in ("price", "expensive"):
        for answers in (predicted, from_csv):
            got = [float(np.ravel(p[output])[0]) for p in answers]
            np.testing.assert_allclose(got, np.asarray(expected[output]).ravel(), rtol=1e-4, atol=1e-5)
    stack.cli("delete", "houses", "--wait")


def test_update_switches_versions_without_failing_a_prediction(stack, models):
    before = len(serving_processes(stack.home))
    deploy(stack, "rollout", models["v1"], models["dense8_csv"])
    x = np.random.default_rng(4).normal(size=(3, 8)).astype(np.float32)
    rows = rows_of(x, models["features"])
    v1, v2 = expected_dense8(models["v1"], x), expected_dense8(models["v2"], x)
    with stack.client() as client, calls_in_a_loop(lambda: single_output(client.predict("rollout", rows))) as (
            answers, failures):
        wait_until(lambda: len(answers) >= 3, timeout=60, what="predictions before the update")
        updated = stack.cli_json("update", "rollout", "--model", str(models["v2"]), "--wait")
        assert updated["status"] == "READY", updated
        wait_until(lambda: np.allclose(answers[-1], v2, rtol=1e-4, atol=1e-5), timeout=60,
                   what="traffic to reach the new version")
        seen = len(answers)
        wait_until(lambda: len(answers) >= seen + 5, timeout=60, what="predictions after the switch")
    assert failures == []
    assert np.allclose(answers[0], v1, rtol=1e-4, atol=1e-5)
    assert np.allclose(answers[-1], v2, rtol=1e-4, atol=1e-5)
    assert all(np.allclose(a, v1, rtol=1e-4, atol=1e-5) or np.allclose(a, v2, rtol=1e-4, atol=1e-5) for a in answers)
    wait_until(lambda: len(serving_processes(stack.home)) == before + 1, timeout=60, what="the old revision's server to stop")

    # An update to something that is no model fails, says so, and the current version keeps serving.
    failed = stack.cli("update", "rollout", "--model", str(models["dense8_csv"]), "--wait", check=False)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rollout update failed: ") and "keeps serving" in last, failed.stderr
    with stack.client() as client:
        np.testing.assert_allclose(single_output(client.predict("rollout", rows)), v2, rtol=1e-4, atol=1e-5)
    stack.cli("delete", "rollout", "--wait")


@contextmanager
def calls_in_a_loop(call):
    """Run `call` over and over on a thread while the block runs, as a client with steady traffic would; yields
    the lists of its answers and of its failures (described), which grow meanwhile."""
    answers, failures, stop = [], [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                answers.append(call())
            except Exception as exc:  # noqa: BLE001 — every failure is what the tests count
                failures.append(described(exc))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield answers, failures
    finally:
        stop.set()
        thread.join(60)


def described(exc: Exception) -> str:
    """A failed call as a test report should show it: tritonclient's exceptions print empty."""
    status = getattr(exc, "status", lambda: None)()
    message = getattr(exc, "message", lambda: None)()
    return f"{type(exc).__name__} {status or ''} {message or exc}".strip()


def servers_of(stack, name: str) -> list[int]:
    """Pids of the model servers running for deployment `name`."""
    return [pid for pid in serving_processes(stack.home)
            if name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]


def versions(endpoint: str, name: str) -> list[str]:
    """The model versions a new connection to `endpoint` reports (a connection of its own: not one of the
    process's pooled ones)."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(endpoint, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        return client.get_model_metadata(name, as_json=True)["versions"]
    finally:
        client.close()


def test_a_tritonclient_holding_the_endpoint_predicts_through_an_update_and_a_crash(stack, models):
    import tritonclient.grpc as triton

    deployment = deploy(stack, "steady", models["v1"], models["dense8_csv"])
    endpoint = deployment["endpoint"]
    x = np.random.default_rng(6).normal(size=(3, 8)).astype(np.float32)
    v1, v2 = expected_dense8(models["v1"], x), expected_dense8(models["v2"], x)
    client = triton.InferenceServerClient(endpoint)  # one client for the whole test, as a user would hold it
    metadata = client.get_model_metadata("steady", as_json=True)
    tensor = triton.InferInput(metadata["inputs"][0]["name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    output = metadata["outputs"][0]["name"]

    def infer():
        result = client.infer("steady", [tensor])
        return result.get_response().model_version, result.as_numpy(output).ravel()

    with calls_in_a_loop(infer) as (answers, failures):
        wait_until(lambda: len(answers) >= 3, timeout=60, what="predictions before the update")
        updated = stack.cli_json("update", "steady", "--model", str(models["v2"]), "--wait")
        assert (updated["status"], updated["serving_revision"], updated["endpoint"]) == ("READY", 2, endpoint)
        wait_until(lambda: len(servers_of(stack, "steady")) == 1, timeout=60, what="revision 1's server to stop")
        seen = len(answers)
        wait_until(lambda: len(answers) >= seen + 5, timeout=60, what="predictions after revision 1 stopped")
    assert failures == []
    assert answers[0][0] == "1" and np.allclose(answers[0][1], v1, rtol=1e-4, atol=1e-5)
    assert answers[-1][0] == "2" and np.allclose(answers[-1][1], v2, rtol=1e-4, atol=1e-5)
    assert stack.cli_json("get", "steady")["endpoint"] == endpoint

    # A crashed server is started again on the same endpoint, where the same client finds it.
    [pid] = servers_of(stack, "steady")
    os.kill(pid, signal.SIGKILL)

    def answered():
        try:
            return client.infer("steady", [tensor]).get_response().model_version
        except triton.InferenceServerException:
            return None

    assert wait_until(answered, timeout=120, interval=0.5, what="the restarted server to answer") == "2"
    assert stack.cli_json("get", "steady")["endpoint"] == endpoint
    client.close()
    stack.cli("delete", "steady", "--wait")


def test_manifest_dropped_into_the_bucket_deploys_itself(stack, models):
    folder = stack.bucket / "dropped-v1"
    folder.mkdir()
    shutil.copy(models["v1"], folder / "model.keras")
    shutil.copy(models["dense8_csv"], folder / "train.csv")
    # The manifest is written last, as an upload tool would.
    (folder / "modelrun.json").write_text(json.dumps(
        {"name": "dropped", "model": "model.keras", "training_data": "train.csv"}))
    client = stack.client()
    deployment = wait_until(lambda: _ready(client, "dropped"), timeout=180, interval=0.5,
                            what="the manifest's deployment to be READY")
    assert deployment["status"] == "READY", deployment
    x = np.random.default_rng(5).normal(size=(2, 8)).astype(np.float32)
    predicted = single_output(client.predict("dropped", rows_of(x, models["features"])))
    np.testing.assert_allclose(predicted, expected_dense8(models["v1"], x), rtol=1e-4, atol=1e-5)
    client.close()
    stack.cli("delete", "dropped", "--wait")


def _ready(client, name):
    from modelrun import errors

    try:
        deployment = client.get(name)
    except errors.NotFound:
        return None
    return deployment if deployment["status"] in ("READY", "FAILED") else None


def test_canary_update_then_promote_and_rollback(stack, models, tmp_path):
    deploy(stack, "trial", models["v1"], models["dense8_csv"])
    canary = tmp_path / "canary.json"
    canary.write_text(json.dumps({"canary_percent": 10}))
    updated = stack.cli("update", "trial", "--model", str(models["v2"]), "--config", str(canary), "--wait")
    assert "canary: revision 2 gets 10% of the traffic" in updated.stdout, updated.stdout
    shown = stack.cli_json("get", "trial")
    assert (shown["status"], shown["serving_revision"], shown["canary"]["revision"]) == ("READY", 1, 2)
    assert shown["canary"]["endpoint"] != shown["endpoint"]  # locally the canary answers on its own endpoint

    promoted = stack.cli_json("promote", "trial", "--wait")
    assert (promoted["status"], promoted["serving_revision"], promoted["canary"]) == ("READY", 2, None)
    assert promoted["endpoint"] == shown["endpoint"]  # the promoted revision took over the deployment's endpoint
    # Revision 1 drains for a while on the shared port, but from READY on every new connection reaches revision 2.
    assert [versions(promoted["endpoint"], "trial") for _ in range(6)] == [["2"]] * 6
    assert "no canary to promote" in one_error_line(stack.cli("promote", "trial", check=False))

    stack.cli("update", "trial", "--model", str(models["v1"]), "--config", str(canary), "--wait")
    rolled = stack.cli("rollback", "trial", "--wait")
    assert "rolled back; revision 2 serves all the traffic" in rolled.stdout
    after = stack.cli_json("get", "trial")
    assert (after["status"], after["serving_revision"], after["revision"], after["canary"]) == ("READY", 2, 3, None)
    assert "rolled back on request" in after["error"]
    assert after["endpoint"] == promoted["endpoint"]

    wait_until(lambda: len(servers_of(stack, "trial")) == 1, timeout=60,
               what="the rolled-back canary's and the replaced revision's servers to stop")
    stack.cli("delete", "trial", "--wait")
