"""Drift end to end: a real `modelrun up`, a real model server logging to SQLite, MariaDB or PostgreSQL,
predictions through the client, then `modelrun drift` and the published dashboard files."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import BACKENDS, fresh_database_url
from tests.e2e.conftest import Stack, one_error_line, write_csv
from tests.serving import models as m
from tests.util import wait_until

pytestmark = pytest.mark.slow
COLUMNS = ["age", "rooms", "city", "garden"]


def rows(n: int, seed: int, age_shift: float = 0.0) -> list[dict]:
    data = m.tabular_rows(n, seed)
    return [{"age": float(data["age"][i, 0]) + age_shift, "rooms": int(data["rooms"][i, 0]),
             "city": str(data["city"][i, 0]), "garden": bool(data["garden"][i, 0])} for i in range(n)]


@pytest.fixture(params=BACKENDS)
def drift_stack(request, tmp_path):
    """`modelrun up` on a fresh database; drift refreshes only when asked (the interval is an hour)."""
    url, drop = fresh_database_url(request.param, tmp_path)
    stack = Stack(tmp_path / "home", {"MODELRUN_DATABASE_URL": url, "MODELRUN_DRIFT_INTERVAL": "3600"})
    try:
        yield stack.up()
    finally:
        stack.cleanup()
        drop()


def test_predictions_reach_the_report_and_only_the_shifted_feature_drifts(drift_stack, tmp_path):
    stack = drift_stack
    training = rows(1200, seed=0)
    data = write_csv(tmp_path / "train.csv", COLUMNS, [[r[c] for c in COLUMNS] for r in training])
    model = m.save_tabular(tmp_path / "model")
    deployed = stack.cli_json("deploy", "homes", "--model", str(model), "--training-data", str(data), "--wait")
    assert deployed["status"] == "READY"

    client = stack.client()
    sent = 0
    for batch in range(30):  # like production traffic: many small requests
        sent += len(client.predict("homes", rows(10, seed=100 + batch)))
    for batch in range(20):  # then older buyers: age moves up by 40 years
        sent += len(client.predict("homes", rows(10, seed=200 + batch, age_shift=40.0)))
    client.close()
    assert sent == 500

    result = stack.cli_json("drift", "homes")
    assert result["deployment"] == "homes"
    report = next(w for w in result["windows"] if w["window"]["id"] == "all")
    assert report["schema"] == 1 and report["rows"] == {"reference": 1200, "production": 500}
    features = {c["name"]: c for c in report["features"]}
    assert set(features) == set(COLUMNS)
    assert features["age"]["drifted"] and features["age"]["test"] == "wasserstein"
    assert [name for name, c in features.items() if c["drifted"]] == ["age"]
    assert features["city"]["type"] == "categorical" and features["garden"]["type"] == "categorical"
    outputs = {c["name"]: c for c in report["outputs"]}
    assert set(outputs) == {"price", "expensive"} and report["prediction"]["name"] in outputs
    assert all(c["production"]["count"] == 500 and c["reference"]["count"] == 1200 for c in outputs.values())
    assert {w["window"]["id"] for w in result["windows"]} >= {"all", "last-24h"}

    one = stack.cli_json("drift", "homes", "--window", "last-24h")
    assert one["window"]["id"] == "last-24h" and one["rows"]["production"] == 500

    table = stack.cli("drift", "homes", "--window", "all")
    assert table.returncode == 0
    age_line = next(line for line in table.stdout.splitlines() if " age " in f" {line} ")
    assert "✖" in age_line and "wasserstein" in age_line
    assert "✖" not in next(line for line in table.stdout.splitlines() if " rooms " in f" {line} ")

    index = json.loads((stack.home / "dashboard" / "data" / "index.json").read_text())
    assert [d["name"] for d in index["deployments"]] == ["homes"]
    page = httpx.get(f"{stack.api}/dashboard/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    served = httpx.get(f"{stack.api}/dashboard/data/deployments/homes.json", timeout=10).json()
    assert served["windows"][0]["rows"]["production"] == 500

    missing = one_error_line(stack.cli("drift", "homes", "--window", "1999-01-01", check=False))
    assert "no drift window '1999-01-01'" in missing and "last-24h" in missing
    assert "no deployment named 'nobody'" in one_error_line(stack.cli("drift", "nobody", check=False))


def test_up_refreshes_drift_and_the_dashboard_by_itself(tmp_path):
    stack = Stack(tmp_path / "home", {"MODELRUN_DRIFT_INTERVAL": "1"})
    try:
        stack.up()
        index = stack.home / "dashboard" / "data" / "index.json"
        wait_until(index.exists, timeout=30, interval=0.2, what="the first published dashboard")
        data = write_csv(tmp_path / "train.csv", COLUMNS, [[r[c] for c in COLUMNS] for r in rows(300, seed=0)])
        stack.cli_json("deploy", "homes", "--model", str(m.save_tabular(tmp_path / "model")), "--training-data",
                       str(data), "--wait")
        with stack.client() as client:
            for batch in range(15):
                client.predict("homes", rows(10, seed=300 + batch))

        def counted():
            found = {d["name"]: d for d in json.loads(index.read_text())["deployments"]}
            return found.get("homes", {}).get("rows") == 150

        wait_until(counted, timeout=60, interval=0.5, what="the drift loop to count 150 rows")
    finally:
        stack.cleanup()
