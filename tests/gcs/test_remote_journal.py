"""Prediction logging on Cloud Run loses nothing: rows the database did not take before an instance
stopped go to Cloud Storage (the emulator) and are replayed exactly once, by the next instance or by the
control plane's reconciler."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelrun.control import build_control_plane
from modelrun.db import create_schema, make_engine
from modelrun.db.predictions import count_predictions
from modelrun.settings import Settings
from serving.prediction_log import PredictionLogger
from serving.remote_journal import RemoteJournal
from tests.control.conftest import home  # noqa: F401 (fixture)
from tests.serving.conftest import launch, model_files  # noqa: F401 (fixture)
from tests.serving.test_prediction_log import DEPLOYMENT, record
from tests.util import free_port, wait_until


def unreachable_database() -> str:
    """Cloud SQL as an instance sees it when it is down: nothing answers."""
    return f"mysql+pymysql://root@127.0.0.1:{free_port()}/test"


def logger(url: str, journal_dir, remote: RemoteJournal) -> PredictionLogger:
    started = PredictionLogger(url, DEPLOYMENT, journal_dir=journal_dir, remote_journal=remote)
    started.start()
    return started


def test_rows_kept_in_cloud_storage_at_shutdown_are_replayed_once_by_the_next_instance(bucket, tmp_path, sqlite_url):
    remote = RemoteJournal(bucket.uri("journal"), DEPLOYMENT)
    first = logger(unreachable_database(), tmp_path / "instance1", remote)
    for i in range(300):
        first.log(record(i))
    first.close(timeout=3.0)
    kept = bucket.names("journal/")
    assert kept and all(name.startswith(f"journal/{DEPLOYMENT}/") for name in kept)
    assert not list((tmp_path / "instance1").glob("*.jsonl"))  # that disk goes with the instance

    engine = make_engine(sqlite_url)
    create_schema(engine)
    for instance in ("instance2", "instance3"):  # the next instance replays; the one after finds nothing
        later = logger(sqlite_url, tmp_path / instance, remote)
        wait_until(lambda: not bucket.names("journal/"), timeout=30, what="the kept journal to be replayed")
        later.close()
        assert count_predictions(engine, DEPLOYMENT) == 300


def test_a_second_replay_of_the_same_rows_adds_nothing(bucket, tmp_path, sqlite_url):
    remote = RemoteJournal(bucket.uri("journal"), DEPLOYMENT)
    first = logger(unreachable_database(), tmp_path / "a", remote)
    for i in range(50):
        first.log(record(i))
    first.close(timeout=3.0)
    (name,) = bucket.names("journal/")
    copy = bucket.handle.blob(name).download_as_bytes()

    engine = make_engine(sqlite_url)
    create_schema(engine)
    from modelrun.control.journals import Journals
    journals = Journals(engine, bucket.uri("journal"))
    assert journals.replay() == 50
    bucket.put(name, copy)  # a replay that died before deleting the object: its rows come again
    assert journals.replay() == 50
    assert count_predictions(engine, DEPLOYMENT) == 50 and bucket.names("journal/") == []


def test_bad_journal_uri_is_refused_when_the_server_starts():
    from pydantic import ValidationError

    from serving.settings import ServingSettings
    with pytest.raises(ValidationError) as error:
        ServingSettings(model_uri="/m.keras", model_name="m", journal_uri="gs://bucket")
    assert "add a folder" in str(error.value)


def test_model_server_stopped_while_cloud_sql_is_down_keeps_its_rows_for_the_reconciler(
        bucket, home, model_files, tmp_path, monkeypatch):  # noqa: F811
    journal = bucket.uri("journal")
    server = launch(model_files["dense8"], "churn8", env={"MODELRUN_DATABASE_URL": unreachable_database(),
                                                            "MODELRUN_JOURNAL_URI": journal})
    try:
        server.wait_serving()
        client = triton.InferenceServerClient(server.address)
        for _ in range(20):
            tensor = triton.InferInput("x", [1, 8], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 8), np.float32))
            client.infer("churn8", [tensor])
    finally:
        assert server.stop() == 0  # SIGTERM, as Cloud Run stops an instance
    assert bucket.names("journal/churn8/"), server.log()
    assert "kept 1 journal file(s) in gs://" in server.log()

    monkeypatch.setenv("MODELRUN_JOURNAL_URI", journal)
    plane = build_control_plane(Settings())
    try:
        plane.reconcile_once()  # no deployment needs anything; the kept journal is replayed
        assert bucket.names("journal/") == []
        assert count_predictions(plane.engine, "churn8") == 20
        plane.reconcile_once()
        assert count_predictions(plane.engine, "churn8") == 20
    finally:
        plane.shutdown()
