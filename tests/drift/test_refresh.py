"""Incremental drift over the prediction log in SQL, on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from modelrun.db.predictions import encode_row, insert_ignoring_duplicates
from modelrun.drift import store
from modelrun.drift.refresh import Refresher
from tests.drift.logutil import column, engine_for, houses, log_requests, save_reference, target, window


def _comparable(report: dict) -> dict:
    report = copy.deepcopy(report)
    report.pop("generated_at")
    report["window"].pop("end", None)
    return report


def test_counts_every_row_and_flags_only_the_shifted_feature(database_url):
    engine = engine_for(database_url)
    save_reference(engine, "houses", 1, houses(2000, 0))
    requests = log_requests(engine, "houses", 1, houses(300, 1), per_request=3)
    requests += log_requests(engine, "houses", 1, houses(300, 2, area_shift=40), prefix="s")
    assert requests == 400

    reports = Refresher(engine).refresh([target()])["houses"]

    assert [r["window"]["id"] for r in reports][:2] == ["all", "last-24h"]
    for report in reports:
        assert report["rows"] == {"reference": 2000, "production": 600}
        assert report["enough_data"] and report["method"] == "evidently"
        assert column(report, "area")["drifted"] and column(report, "area")["test"] == "wasserstein"
        assert not any(column(report, name)["drifted"] for name in ("rooms", "age", "city"))
        assert column(report, "city")["type"] == "categorical" and column(report, "rooms")["type"] == "categorical"
        price = report["prediction"]
        assert price["name"] == "price" and price["production"]["count"] == 600
        assert report["features"][0]["name"] == "area"  # most drifted first


def test_incremental_refreshes_equal_one_full_run(database_url):
    engine = engine_for(database_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    save_reference(engine, "houses", 1, houses(1500, 0), created=now - timedelta(days=2))
    refresher = Refresher(engine, reservoir=500)  # smaller than the window: the sample must still agree
    for part in range(4):
        log_requests(engine, "houses", 1, houses(400, 10 + part, area_shift=5 * part), per_request=4,
                     prefix=f"p{part}-", ts=now - timedelta(hours=30 - 8 * part))
        incremental = refresher.refresh([target()], now)["houses"]

    with engine.begin() as conn:
        for table in (store.buckets, store.state, store.reports):
            conn.execute(table.delete())
    full = Refresher(engine, reservoir=500).refresh([target()], now)["houses"]

    assert [_comparable(r) for r in incremental] == [_comparable(r) for r in full]
    assert window(full, "all")["rows"]["production"] == 1600
    assert window(full, "last-24h")["rows"]["production"] == 1200  # the first part is 30 h old


def test_a_small_window_says_not_enough_data(database_url):
    engine = engine_for(database_url)
    save_reference(engine, "houses", 1, houses(1000, 0))
    log_requests(engine, "houses", 1, houses(40, 1, area_shift=100))

    report = window(Refresher(engine).refresh([target(config={"drift": {"min_rows": 50}})])["houses"], "all")

    assert report["status"] == "not_enough_data" and not report["dataset_drift"]
    assert report["drifted_features"] == [] and not any(c["drifted"] for c in report["features"])
    assert column(report, "area")["test"] == "ks" and column(report, "area")["score"] < 1e-6  # shown, not judged
    assert any("not enough data" in note for note in report["notes"])


def test_each_revision_is_judged_against_its_own_reference(database_url):
    engine = engine_for(database_url)
    save_reference(engine, "houses", 1, houses(1500, 0))
    log_requests(engine, "houses", 1, houses(300, 1))
    # revision 2 was trained on bigger houses and serves bigger houses: no drift for either
    save_reference(engine, "houses", 2, houses(1500, 3, area_shift=60))
    log_requests(engine, "houses", 2, houses(300, 4, area_shift=60), prefix="v2-")

    reports = Refresher(engine).refresh([target(revision=2, serving=2)])["houses"]

    rolling = window(reports, "last-24h")
    assert rolling["revision"] == 2 and rolling["rows"]["production"] == 300 and rolling["status"] == "no_drift"
    assert [(o["revision"], o["rows"]["production"], o["status"]) for o in rolling["other_revisions"]] == \
        [(1, 300, "no_drift")]
    assert window(reports, "all")["revision"] == 2


def test_rows_from_before_the_reference_belong_to_an_earlier_deployment_of_that_name(database_url):
    engine = engine_for(database_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    log_requests(engine, "houses", 1, houses(200, 1), ts=now - timedelta(hours=3), prefix="old-")
    save_reference(engine, "houses", 1, houses(1000, 0), created=now - timedelta(hours=1))
    log_requests(engine, "houses", 1, houses(150, 2), ts=now - timedelta(minutes=1))

    report = window(Refresher(engine).refresh([target()], now)["houses"], "all")

    assert report["rows"]["production"] == 150


def test_an_empty_log_and_a_deployment_without_reference(database_url):
    engine = engine_for(database_url)
    refresher = Refresher(engine)
    assert refresher.refresh([target()]) == {"houses": []}  # nothing profiled yet
    save_reference(engine, "houses", 1, houses(500, 0))

    reports = refresher.refresh([target()])["houses"]

    assert {r["window"]["id"] for r in reports} == {"all", "last-24h"}
    assert all(r["rows"]["production"] == 0 and r["status"] == "not_enough_data" for r in reports)


def test_bad_production_values_are_counted_not_fatal(sqlite_url):
    engine = engine_for(sqlite_url)
    save_reference(engine, "houses", 1, houses(1000, 0))
    frame = houses(200, 1)
    log_requests(engine, "houses", 1, frame, drop=("city",))  # a feature missing from every request
    now = datetime.now(UTC).replace(tzinfo=None)
    weird = [encode_row("houses", 1, f"w{i}", "", now, {"rooms": np.array([2]), "area": np.array(["n/a"]),
                                                        "age": np.array([np.nan]), "city": np.array(["lyon"])},
                        {"price": np.array([1.0])}, 1.0) for i in range(10)]
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, weird)

    report = window(Refresher(engine).refresh([target()])["houses"], "all")

    assert report["rows"]["production"] == 210
    area, city, age = column(report, "area"), column(report, "city"), column(report, "age")
    assert area["invalid"] == {"production": 10} and area["production"]["count"] == 200
    assert area["missing"]["production"] == pytest.approx(10 / 210)
    assert city["production"]["count"] == 10 and city["missing"]["production"] == pytest.approx(200 / 210)
    assert city["checks"]["missing_rate"]["flagged"]
    assert age["missing"]["production"] == pytest.approx(10 / 210)


def test_a_row_committed_late_with_a_smaller_id_is_still_counted(database_url):
    """Two writers: the first takes an id, the second commits a bigger one, a refresh runs, then the first
    commits. The watermark must wait for the hole instead of skipping the row."""
    engine = engine_for(database_url)
    save_reference(engine, "houses", 1, houses(1000, 0))
    refresher = Refresher(engine, gap_grace=3600)
    now = datetime.now(UTC).replace(tzinfo=None)

    def row(key: str) -> dict:
        return encode_row("houses", 1, key, "", now, {"rooms": np.array([3]), "area": np.array([70.0]),
                                                      "age": np.array([10.0]), "city": np.array(["lyon"])},
                          {"price": np.array([200.0])}, 1.0)

    if engine.dialect.name == "sqlite":  # one writer at a time: ids commit in order, there are no holes
        with engine.begin() as conn:
            insert_ignoring_duplicates(conn, [row("a"), row("b")])
        assert window(refresher.refresh([target()], now)["houses"], "all")["rows"]["production"] == 2
        return
    slow = engine.connect()
    transaction = slow.begin()
    insert_ignoring_duplicates(slow, [row("slow")])  # takes the smaller id, not committed yet
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, [row("fast")])
    assert window(refresher.refresh([target()], now)["houses"], "all")["rows"]["production"] == 1
    transaction.commit()
    slow.close()

    assert window(refresher.refresh([target()], now)["houses"], "all")["rows"]["production"] == 2
    assert window(refresher.refresh([target()], now)["houses"], "all")["rows"]["production"] == 2  # never twice


def test_two_refreshers_never_count_a_row_twice(sqlite_url):
    engine = engine_for(sqlite_url)
    save_reference(engine, "houses", 1, houses(1000, 0))
    log_requests(engine, "houses", 1, houses(120, 1))
    first, second = Refresher(engine), Refresher(engine)
    first.refresh([target()])
    log_requests(engine, "houses", 1, houses(30, 2), prefix="more-")

    second.refresh([target()])
    report = window(first.refresh([target()])["houses"], "all")

    assert report["rows"]["production"] == 150


def test_config_overrides_test_threshold_and_method(sqlite_url):
    engine = engine_for(sqlite_url)
    save_reference(engine, "houses", 1, houses(1500, 0))
    log_requests(engine, "houses", 1, houses(400, 1, area_shift=5))
    config = {"drift": {"features": {"area": {"test": "psi", "threshold": 0.5}, "age": {"monitor": False}}}}

    report = window(Refresher(engine).refresh([target(config=config)])["houses"], "all")
    assert column(report, "area")["test"] == "psi" and column(report, "area")["threshold"] == 0.5
    assert "age" not in [c["name"] for c in report["features"]]

    vertex = window(Refresher(engine).refresh([target(config={"drift": {"method": "vertex"}})])["houses"], "all")
    assert column(vertex, "city")["test"] == "linf" and column(vertex, "area")["test"] == "js_divergence"
    assert column(vertex, "rooms")["test"] == "linf" and vertex["method"] == "vertex"


def test_deleting_a_deployment_forgets_its_drift(sqlite_url):
    engine = engine_for(sqlite_url)
    save_reference(engine, "houses", 1, houses(500, 0))
    log_requests(engine, "houses", 1, houses(120, 1))
    Refresher(engine).refresh([target()])
    with engine.begin() as conn:
        store.forget(conn, "houses")
        left = [conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.deployment == "houses")).scalar()
                for t in (store.profiles, store.samples, store.buckets, store.reports)]
    assert left == [0, 0, 0, 0]


def test_pandas_frames_with_nulls_profile_like_production(sqlite_url):
    engine = engine_for(sqlite_url)
    frame = houses(800, 0)
    frame.loc[::10, "age"] = np.nan
    frame["constant"] = 1.5
    frame["empty"] = pd.Series([None] * len(frame), dtype=object)
    save_reference(engine, "houses", 1, frame, outputs=False)
    log_requests(engine, "houses", 1, frame.sample(300, random_state=1))

    report = window(Refresher(engine).refresh([target()])["houses"], "all")

    assert column(report, "age")["missing"]["reference"] == pytest.approx(0.1)
    assert not column(report, "constant")["drifted"]
    assert column(report, "empty")["score"] is None and "no values" in column(report, "empty")["note"]
    # no outputs profile from the model server: the first production rows became the outputs' reference
    assert report["prediction"]["name"] == "price" and 80 <= report["prediction"]["reference"]["count"] <= 100
    assert any("first 100 production rows, not with the training data" in note for note in report["notes"])


class FolderStorage:
    """The Storage port's publish, into a dict (the dashboard files a refresh writes)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def publish(self, path: str, data: bytes, content_type: str) -> None:
        self.files[path] = data


def test_daily_windows_older_than_the_config_days_are_dropped(sqlite_url):
    from modelrun.drift.service import DriftService

    engine = engine_for(sqlite_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    save_reference(engine, "houses", 1, houses(500, 0), created=now - timedelta(days=10))
    for days_ago in (6, 3, 1, 0):
        log_requests(engine, "houses", 1, houses(120, days_ago), ts=now - timedelta(days=days_ago, minutes=1),
                     prefix=f"d{days_ago}-")
    service = DriftService(engine, FolderStorage())
    deployment = {"name": "houses", "status": "READY", "revision": 1, "serving_revision": 1}
    kept = service.refresh([deployment | {"config": {"drift": {"days": 30}}}])["houses"]
    assert len([r for r in kept if r["window"]["kind"] == "day"]) == 4

    trimmed = service.refresh([deployment | {"config": {"drift": {"days": 3}}}])["houses"]

    days = [r["window"]["id"] for r in trimmed if r["window"]["kind"] == "day"]
    assert days == [(now - timedelta(days=d)).strftime("%Y-%m-%d") for d in (0, 1)]
    assert window(trimmed, "all")["rows"]["production"] == 480  # the revision's whole life is kept
    published = json.loads(service.publisher.storage.files["data/deployments/houses.json"])
    assert [h["id"] for h in published["history"]] == list(reversed(days))
    assert {"index.html", "app.js", "style.css", "plotly.min.js", "data/index.json"} <= set(service.publisher.storage.files)


def test_without_the_server_s_outputs_reference_the_first_production_rows_are_the_reference(database_url):
    engine = engine_for(database_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    save_reference(engine, "houses", 1, houses(1500, 0), outputs=False, created=now - timedelta(hours=3))
    with engine.begin() as conn:
        store.save_profile(conn, "houses", 1, "outputs", None, now, error="could not run the model: boom")
    log_requests(engine, "houses", 1, houses(60, 1), ts=now - timedelta(hours=2))
    refresher = Refresher(engine)
    early = window(refresher.refresh([target()], now)["houses"], "all")
    assert early["outputs"] == [] and any("compared with the first 100 production rows" in n for n in early["notes"])

    log_requests(engine, "houses", 1, houses(60, 2), ts=now - timedelta(hours=1), prefix="b")
    log_requests(engine, "houses", 1, houses(300, 3, area_shift=60), ts=now - timedelta(minutes=5), prefix="c")
    report = window(refresher.refresh([target()], now)["houses"], "all")

    price = column(report, "price")
    assert price["reference"]["count"] == 100 and price["production"]["count"] == 420  # every row, recounted
    assert price["drifted"] and column(report, "area")["drifted"]
    assert any("first 100 production rows" in n and "boom" in n for n in report["notes"])
    again = window(refresher.refresh([target()], now)["houses"], "all")
    assert column(again, "price")["production"]["count"] == 420  # the reference is made once


def test_a_request_stored_in_pieces_is_counted_whole(sqlite_url):
    """A request larger than one row may hold (see modelrun/db/predictions.py) reaches drift in full: its
    pieces are lines longer than Arrow's JSON blocks, so this also covers the page decoder's other way."""
    from modelrun.db.predictions import encode_rows

    engine = engine_for(sqlite_url)
    save_reference(engine, "houses", 1, houses(1500, 0))
    big = houses(150_000, 5, area_shift=30)
    features = {c: big[c].to_numpy() for c in big.columns}
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = encode_rows("houses", 1, "big", "", now, features, {"price": np.zeros(len(big), np.float32)}, 1.0,
                       limit=1 << 21)
    assert len(rows) > 1 and max(len(r["features"]) for r in rows) > 1 << 20
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, rows)
    log_requests(engine, "houses", 1, houses(200, 6))

    report = window(Refresher(engine).refresh([target()])["houses"], "all")

    assert report["rows"]["production"] == 150_200
    assert column(report, "area")["drifted"] and column(report, "area")["production"]["count"] == 150_200
