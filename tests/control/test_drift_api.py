"""Drift through the control plane: config checked at the door, the reference made while building, the
`drift` function and `GET /deployments/{name}/drift`, webhook alerts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelrun.drift import store
from modelrun.drift.alerts import Alerter
from tests.control.conftest import AUTH, MAIN, wait_status
from tests.drift.logutil import houses, log_requests, save_reference

BODY = {"name": "homes", "model_uri": "/tmp/m.keras", "training_data_uri": "/tmp/t.csv"}


@pytest.mark.parametrize("drift, words", [
    ({"method": "nannyml"}, "unknown method 'nannyml'; valid methods: evidently, vertex"),
    ({"features": {"age": {"test": "anderson"}}}, "unknown test 'anderson'; valid tests: chisquare, jensenshannon"),
    ({"windows": ["weekly"]}, "unknown window 'weekly'; valid windows: all, last-24h, daily"),
    ({"checks": {"skew": 0.2}}, "unknown check 'skew'; valid checks: missing_rate, out_of_range, unseen"),
    ({"min_rows": 0}, "drift.min_rows"),
    ({"webhook": "ftp://x"}, "drift.webhook"),
    ({"colour": "red"}, "unknown field 'config.drift.colour'"),
])
def test_bad_drift_config_is_400_naming_the_valid_choices(functions, drift, words):
    for response in (functions.api.post("/deployments", json=BODY | {"config": {"drift": drift}}, headers=AUTH),
                     functions.api.patch("/deployments/homes", json={"config": {"drift": drift}}, headers=AUTH)):
        assert response.status_code == 400, response.get_json()
        assert words in response.get_json()["error"]["message"]


def test_drift_config_is_kept_as_written(functions):
    config = {"label": "price", "drift": {"method": "vertex", "features": {"area": {"threshold": 0.2}}}}
    created = functions.api.post("/deployments", json=BODY | {"config": config}, headers=AUTH).get_json()
    assert created["config"] == config


def test_a_drift_config_naming_an_unknown_feature_fails_the_build(plane, models_dir):
    body = {"name": "typo", "model_uri": str(models_dir["dense8"]), "training_data_uri": str(models_dir["train8"]),
            "config": {"label": "target", "drift": {"features": {"f9": {"test": "psi"}}}}}
    plane.deployments.create(body)
    failed = wait_status(plane, "typo")
    assert failed["status"] == "FAILED"
    assert "the drift config names f9, which is not a feature column" in failed["error"]
    assert "f0, f1" in failed["error"]


def test_building_stores_the_reference_and_the_server_profiles_the_outputs(plane, models_dir):
    body = {"name": "homes", "model_uri": str(models_dir["tabular"]),
            "training_data_uri": str(models_dir["train_tabular"]), "config": {"label": "price"}}
    plane.deployments.create(body)
    assert wait_status(plane, "homes")["status"] == "READY"
    with plane.engine.connect() as conn:
        profiles = store.load_profiles(conn, "homes")
    names = [c.name for c in profiles[1]["profile"].columns]
    assert names == ["age", "rooms", "city", "garden", "output:price", "output:expensive"]
    assert profiles[1]["has_outputs"] and profiles[1]["profile"].rows == 2


def test_drift_route_and_function(functions, home):
    functions.api.get("/deployments", headers=AUTH)
    plane = functions.plane
    plane.repo.create("homes", "/m.keras", "/t.csv", {})
    save_reference(plane.engine, "homes", 1, houses(1200, 0))
    log_requests(plane.engine, "homes", 1, houses(300, 1, area_shift=40))

    everything = functions.api.get("/deployments/homes/drift", headers=AUTH)
    assert everything.status_code == 200
    windows = everything.get_json()["windows"]
    assert [w["window"]["id"] for w in windows][:2] == ["all", "last-24h"]
    one = functions.api.get("/deployments/homes/drift?window=all", headers=AUTH).get_json()
    assert one["rows"]["production"] == 300 and "area" in one["drifted_features"]
    missing = functions.api.get("/deployments/homes/drift?window=2001-01-01", headers=AUTH)
    assert missing.status_code == 404 and "its windows: all, last-24h" in missing.get_json()["error"]["message"]
    assert functions.api.get("/deployments/nobody/drift", headers=AUTH).status_code == 404
    assert functions.api.get("/deployments/homes/drift").status_code == 401

    from functions_framework import create_app

    function = create_app(target="drift", source=MAIN).test_client()
    answer = function.post("/", headers=AUTH)
    assert answer.status_code == 200
    assert answer.get_json()["deployments"]["homes"]["all"] in ("drift", "no_drift")
    assert function.post("/").status_code == 401
    published = json.loads((home / "dashboard" / "data" / "index.json").read_text())
    assert [d["name"] for d in published["deployments"]] == ["homes"]
    assert (home / "dashboard" / "plotly.min.js").stat().st_size > 1_000_000


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver that fails the first `failures` POSTs with 503."""

    received: list = []
    failures = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.failures > 0:
            Hook.failures -= 1
            self.send_response(503)
        else:
            Hook.received.append(body)
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.received, Hook.failures = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_an_alert_is_posted_once_per_change_of_verdict_and_retried(functions, webhook):
    functions.api.get("/deployments", headers=AUTH)
    plane = functions.plane
    plane.drift.alerter = Alerter(backoff=0.05)
    config = {"drift": {"webhook": webhook, "windows": ["all"], "share": 0.3}}
    plane.repo.create("homes", "/m.keras", "/t.csv", config)
    save_reference(plane.engine, "homes", 1, houses(1200, 0))
    log_requests(plane.engine, "homes", 1, houses(300, 1))
    Hook.failures = 2  # the endpoint is down for the first two attempts

    assert plane.refresh_drift()["homes"][0]["status"] == "no_drift"  # nothing sent
    log_requests(plane.engine, "homes", 1, houses(900, 2, area_shift=80), prefix="b")
    plane.refresh_drift()  # turns to drift: one alert
    plane.refresh_drift()  # still drifted: nothing more
    assert plane.drift.alerter.wait(10)

    assert len(Hook.received) == 1
    alert = Hook.received[0]
    assert alert["deployment"] == "homes" and alert["window"]["id"] == "all" and alert["status"] == "drift"
    assert alert["previous_status"] == "no_drift" and "area" in alert["drifted_features"]
    assert alert["rows"]["production"] == 1200


def test_an_unreachable_webhook_is_logged_and_never_blocks(caplog):
    alerter = Alerter(attempts=2, backoff=0.01, timeout=0.5)
    payload = {"deployment": "homes", "window": {"id": "all"}}
    alerter.send("http://127.0.0.1:9/hook", payload)  # nothing listens on port 9 (discard)
    assert alerter.wait(10)
    assert alerter.failed == 1 and alerter.sent == 0
    assert "not delivered" in caplog.text


def test_database_down_makes_the_drift_route_and_function_503(functions, monkeypatch):
    from functions_framework import create_app

    from tests.util import free_port

    monkeypatch.setenv("MODELRUN_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    route = functions.api.get("/deployments/homes/drift", headers=AUTH)
    assert route.status_code == 503 and "database is unavailable" in route.get_json()["error"]["message"]
    function = create_app(target="drift", source=MAIN).test_client().post("/", headers=AUTH)
    assert function.status_code == 503 and "database is unavailable" in function.get_json()["error"]["message"]
