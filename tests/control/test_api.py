"""The `api` function through functions-framework: every route and every error status."""

from __future__ import annotations

import sys
import threading

import pytest

from tests.control.conftest import AUTH, REPO, wait_status, write_training_data
from tests.util import wait_until

BODY = {"name": "iris", "model_uri": "/models/iris.keras", "training_data_uri": "/data/iris.csv"}


def error_of(response) -> tuple[int, str, str]:
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in body["error"]["message"]
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_healthz_and_openapi_need_no_token(functions):
    assert functions.api.get("/healthz").get_json() == {"status": "ok"}
    assert functions.api.head("/healthz").status_code == 200
    document = functions.api.get("/openapi.yaml")
    assert document.status_code == 200 and document.mimetype == "application/yaml"
    assert b"/deployments/{name}" in document.data


def test_create_get_list_update_delete(functions):
    created = functions.api.post("/deployments", json={**BODY, "config": {"label": "species"}}, headers=AUTH)
    assert created.status_code == 202
    deployment = created.get_json()
    assert deployment["name"] == "iris" and deployment["status"] == "PENDING" and deployment["revision"] == 1
    assert deployment["endpoint"] is None and deployment["error"] is None and deployment["features"] is None
    assert deployment["config"] == {"label": "species"}
    assert set(deployment) >= {"name", "status", "endpoint", "model_uri", "training_data_uri", "config",
                               "revision", "features", "error", "created_at", "updated_at"}
    assert functions.plane.wake.is_set()

    assert functions.api.get("/deployments/iris", headers=AUTH).get_json()["model_uri"] == "/models/iris.keras"
    listed = functions.api.get("/deployments", headers=AUTH).get_json()["deployments"]
    assert [d["name"] for d in listed] == ["iris"]

    updated = functions.api.patch("/deployments/iris", json={"model_uri": "file:///models/iris2.keras"}, headers=AUTH)
    assert updated.status_code == 202
    assert updated.get_json()["revision"] == 2 and updated.get_json()["status"] == "PENDING"
    assert updated.get_json()["training_data_uri"] == "/data/iris.csv"  # kept
    assert updated.get_json()["config"] == {"label": "species"}  # kept

    events = functions.api.get("/deployments/iris/events", headers=AUTH).get_json()["events"]
    assert [(e["revision"], e["to"]) for e in events] == [(1, "PENDING"), (2, "PENDING")]

    deleted = functions.api.delete("/deployments/iris", headers=AUTH)
    assert deleted.status_code == 202 and deleted.get_json()["status"] == "DELETING"
    assert functions.api.delete("/deployments/iris", headers=AUTH).status_code == 202  # repeat while deleting
    assert functions.api.patch("/deployments/iris", json={"config": {}}, headers=AUTH).status_code == 409
    assert "being deleted" in error_of(functions.api.post("/deployments", json=BODY, headers=AUTH))[2]
    functions.plane.reconcile_once()
    assert error_of(functions.api.get("/deployments/iris", headers=AUTH))[:2] == (404, "not_found")
    assert functions.api.delete("/deployments/iris", headers=AUTH).status_code == 404  # gone
    assert functions.api.get("/deployments", headers=AUTH).get_json() == {"deployments": []}


@pytest.mark.parametrize("name", ["Iris", "1iris", "iris_model", "iris-", "", "a" * 41, "iris.v2", 7])
def test_invalid_names_are_400_with_the_rule(functions, name):
    status, code, message = error_of(functions.api.post("/deployments", json={**BODY, "name": name}, headers=AUTH))
    assert (status, code) == (400, "invalid_argument")
    assert "lowercase DNS label" in message and "40" in message


def test_longest_valid_name_is_accepted(functions):
    assert functions.api.post("/deployments", json={**BODY, "name": "a" * 40}, headers=AUTH).status_code == 202


@pytest.mark.parametrize("body, words", [
    ({"name": "iris", "model_uri": "/m.keras"}, ["missing field 'training_data_uri'"]),
    ({**BODY, "replicas": 3}, ["unknown field 'replicas'"]),
    ({**BODY, "config": {"log_sample_rate": 2}}, ["config.log_sample_rate"]),
    ({**BODY, "model_uri": "models/iris.keras"}, ["not an absolute path"]),
    ({**BODY, "model_uri": "s3://bucket/iris.keras"}, ["unsupported URI scheme"]),
    ([BODY], ["JSON object"]),
])
def test_bad_bodies_are_400(functions, body, words):
    status, code, message = error_of(functions.api.post("/deployments", json=body, headers=AUTH))
    assert status == 400 and code == "invalid_argument"
    for word in words:
        assert word in message


def test_non_json_body_is_400(functions):
    for data in (b"name=iris", b"{not json", b"", b"\xff\xfe\x00"):
        response = functions.api.post("/deployments", data=data, headers={**AUTH, "Content-Type": "application/json"})
        assert error_of(response)[:2] == (400, "invalid_argument")
        assert "JSON" in error_of(response)[2]


def test_empty_patch_is_400(functions):
    functions.api.post("/deployments", json=BODY, headers=AUTH)
    status, _, message = error_of(functions.api.patch("/deployments/iris", json={}, headers=AUTH))
    assert status == 400 and "nothing to update" in message


def test_gs_uri_in_local_mode_is_422(functions):
    status, code, message = error_of(
        functions.api.post("/deployments", json={**BODY, "model_uri": "gs://bucket/iris.keras"}, headers=AUTH))
    assert (status, code) == (422, "unprocessable") and "not available in local mode" in message


def test_body_over_the_limit_is_413(functions):
    huge = {**BODY, "config": {"notes": "x" * 70_000}}
    assert error_of(functions.api.post("/deployments", json=huge, headers=AUTH))[:2] == (413, "too_large")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="},
                                     {"Authorization": "Bearer"}])
def test_missing_or_wrong_token_is_401(functions, headers):
    for method, path in (("get", "/deployments"), ("post", "/deployments"), ("get", "/deployments/iris"),
                         ("patch", "/deployments/iris"), ("delete", "/deployments/iris")):
        response = getattr(functions.api, method)(path, json=BODY, headers=headers)
        assert error_of(response)[:2] == (401, "unauthenticated")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_no_token_configured_is_503(functions, monkeypatch):
    monkeypatch.delenv("MODELRUN_TOKEN")
    status, code, message = error_of(functions.api.get("/deployments", headers=AUTH))
    assert (status, code) == (503, "unavailable") and "token" in message


def test_token_from_home_file(functions, home, monkeypatch):
    monkeypatch.delenv("MODELRUN_TOKEN")
    home.mkdir(parents=True, exist_ok=True)
    (home / "token").write_text("from-file\n")
    assert functions.api.get("/deployments", headers={"Authorization": "Bearer from-file"}).status_code == 200
    assert functions.api.get("/deployments", headers=AUTH).status_code == 401


def test_unknown_names_and_routes_are_404_and_wrong_methods_405(functions):
    for method in ("get", "patch", "delete"):
        response = getattr(functions.api, method)("/deployments/nothing", json={"config": {}}, headers=AUTH)
        assert error_of(response)[:2] == (404, "not_found")
        assert "nothing" in error_of(response)[2]
    assert error_of(functions.api.get("/deployments/nothing/events", headers=AUTH))[0] == 404
    assert error_of(functions.api.get("/models", headers=AUTH))[:2] == (404, "not_found")
    assert error_of(functions.api.put("/deployments", json=BODY, headers=AUTH))[0] == 405
    assert error_of(functions.api.post("/deployments/iris", json=BODY, headers=AUTH))[0] == 405
    assert error_of(functions.api.get("/deployments/Bad_Name", headers=AUTH))[0] == 400


def test_post_of_an_existing_name_is_409(functions):
    assert functions.api.post("/deployments", json=BODY, headers=AUTH).status_code == 202
    status, code, message = error_of(functions.api.post("/deployments", json=BODY, headers=AUTH))
    assert (status, code) == (409, "conflict") and "already exists" in message


def post_twice_at_once(functions, body: dict) -> list[int]:
    """Two clients POST the same body at the same moment; their status codes."""
    statuses = []
    barrier = threading.Barrier(2)

    def post():
        client = functions.api_app.test_client()
        barrier.wait()
        statuses.append(client.post("/deployments", json=body, headers=AUTH).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_concurrent_posts_of_one_name_give_one_202_and_one_409(functions):
    functions.api.get("/deployments", headers=AUTH)  # create the schema first, like a running server
    for attempt in range(5):
        body = {**BODY, "name": f"race{attempt}"}
        assert sorted(post_twice_at_once(functions, body)) == [202, 409]
    assert len(functions.api.get("/deployments", headers=AUTH).get_json()["deployments"]) == 5


def test_api_on_each_database(database_url, functions, monkeypatch):
    """The same API on SQLite, MariaDB and PostgreSQL (MODELRUN_DATABASE_URL), including the create race."""
    monkeypatch.setenv("MODELRUN_DATABASE_URL", database_url)
    assert sorted(post_twice_at_once(functions, BODY)) == [202, 409]
    assert functions.api.patch("/deployments/iris", json={"config": {"label": "y"}}, headers=AUTH).status_code == 202
    assert functions.api.get("/deployments/iris", headers=AUTH).get_json()["revision"] == 2
    assert functions.plane.settings.resolved_database_url == database_url
    assert functions.api.delete("/deployments/iris", headers=AUTH).status_code == 202
    functions.plane.reconcile_once()
    assert functions.api.get("/deployments/iris", headers=AUTH).status_code == 404


def test_the_openapi_document_lists_exactly_the_routes_served(functions):
    import yaml

    document = yaml.safe_load(functions.api.get("/openapi.yaml").data)
    for path, item in document["paths"].items():
        concrete = path.replace("{name}", "iris")
        for method in ("get", "post", "patch", "delete", "put"):
            status = getattr(functions.api, method)(concrete, json={"config": {}}, headers=AUTH).status_code
            assert (status != 405) == (method in item), (method, path, status)


def test_database_down_is_503_and_the_reconciler_says_so(functions, monkeypatch):
    from modelrun.errors import Unavailable
    from tests.util import free_port

    monkeypatch.setenv("MODELRUN_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    status, code, message = error_of(functions.api.get("/deployments", headers=AUTH))
    assert (status, code) == (503, "unavailable") and "database is unavailable" in message
    assert error_of(functions.api.post("/deployments", json=BODY, headers=AUTH))[0] == 503
    with pytest.raises(Unavailable):
        functions.plane.reconcile_once()


@pytest.mark.slow
def test_a_ready_deployment_lists_its_feature_columns_in_training_data_order(functions, models_dir, tmp_path):
    """`features` is the serving revision's columns in file order, label left out; it switches with `endpoint`."""
    import schemathesis

    first = ["f3", "f1", "target", "f0", "f7", "f2", "f6", "f5", "f4"]
    second = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "target"]
    data1 = write_training_data(tmp_path / "one", first)
    data2 = write_training_data(tmp_path / "two", second, fmt="parquet")
    body = {"name": "cols", "model_uri": str(models_dir["dense8"]), "training_data_uri": str(data1),
            "config": {"label": "target"}}
    assert functions.api.post("/deployments", json=body, headers=AUTH).get_json()["features"] is None
    assert wait_status(functions.plane, "cols")["status"] == "READY"
    response = functions.api.get("/deployments/cols", headers=AUTH)
    ready = response.get_json()
    assert ready["features"] == [c for c in first if c != "target"], ready
    listed = functions.api.get("/deployments", headers=AUTH).get_json()["deployments"]
    assert listed[0]["features"] == ready["features"]
    # The fuzz test never gets this far; check a filled-in `features` against the document too.
    document = schemathesis.openapi.from_path(REPO / "modelrun" / "control" / "openapi.yaml")
    document["/deployments/{name}"]["GET"].validate_response(response)

    patched = functions.api.patch("/deployments/cols", json={"training_data_uri": str(data2)}, headers=AUTH)
    assert patched.get_json()["features"] == ready["features"]  # revision 1 serves until 2 is READY
    switched = wait_status(functions.plane, "cols")
    assert (switched["status"], switched["serving_revision"]) == ("READY", 2), switched
    assert functions.api.get("/deployments/cols", headers=AUTH).get_json()["features"] == second[:-1]


def test_the_openapi_document_ships_in_the_wheel_and_is_served_from_the_package(functions, tmp_path):
    import zipfile
    from importlib import resources

    from tests.util import build_wheel

    served = functions.api.get("/openapi.yaml").data
    assert served == (resources.files("modelrun.control") / "openapi.yaml").read_bytes()
    wheel = build_wheel(REPO, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("modelrun/control/openapi.yaml") == served


def test_reconcile_function_and_a_pass_after_each_write_on_cloud_functions(home, monkeypatch, models_dir):
    """On Cloud Functions nothing runs between requests: a write is followed by a pass, and the scheduler
    calls `reconcile`."""
    from functions_framework import create_app

    from tests.control.conftest import MAIN, Functions

    monkeypatch.setenv("MODELRUN_RECONCILE_ON_WRITE", "true")
    functions = Functions()
    try:
        created = functions.api.post("/deployments", headers=AUTH, json={
            "name": "eager", "model_uri": str(models_dir["dense8"]), "training_data_uri": str(models_dir["train8"]),
            "config": {"label": "target"}})
        assert created.status_code == 202 and created.get_json()["status"] == "PENDING"  # recorded first...
        found = functions.api.get("/deployments/eager", headers=AUTH).get_json()
        assert found["status"] == "DEPLOYING"  # ...then one pass ran before the answer: built, server starting

        scheduler = create_app(target="reconcile", source=MAIN).test_client()
        scheduler_module = sys.modules["main"]
        assert scheduler.post("/").status_code == 401
        wait_until(lambda: scheduler.post("/", headers=AUTH).get_json()["deployments"]["eager"] == "READY",
                   timeout=120, interval=0.5, what="the scheduled passes to bring eager to READY")
        scheduler_module.control_plane().shutdown()
    finally:
        functions.close()
