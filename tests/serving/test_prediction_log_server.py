"""The prediction log end to end: a real model server, called by tritonclient, logging to a real database.

Each answered ModelInfer request must become exactly one row, with its features under the names from
MODELRUN_FEATURE_NAMES; through a database outage under load; and through SIGTERM under load (rows
still in the journal then are replayed by the next server on the same journal folder). A request too
large for one row becomes several (pieces), within MariaDB's default packet limit.
"""

from __future__ import annotations

import re
import threading
import uuid

import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton

from modelrun.db import create_schema, make_engine
from modelrun.db.predictions import MAX_PIECE_BYTES, count_predictions, count_rows, iter_predictions, read_predictions
from tests.conftest import fresh_database_url
from tests.serving.conftest import start_server
from tests.serving.dbfault import Outage
from tests.util import wait_until

pytestmark = pytest.mark.slow

NAME = "dense8"
FEATURES = [f"f{i}" for i in range(8)]


def server_env(url: str, journal) -> dict:
    return {"MODELRUN_DATABASE_URL": url, "MODELRUN_JOURNAL_DIR": str(journal),
            "MODELRUN_FEATURE_NAMES": ",".join(FEATURES), "MODELRUN_LOG_SAMPLE_RATE": "1.0"}


def infer(client: triton.InferenceServerClient, x: np.ndarray, request_id: str) -> np.ndarray:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(NAME, [tensor], request_id=request_id, client_timeout=30).as_numpy("y")


class Load:
    """`workers` threads sending distinct requests until stopped; records what was answered and what failed."""

    def __init__(self, address: str, workers: int = 8):
        self.address, self.answered, self.failed = address, {}, []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(w,), daemon=True) for w in range(workers)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def _work(self, worker: int) -> None:
        client = triton.InferenceServerClient(self.address)
        rng = np.random.default_rng(worker)
        try:
            while not self._stop.is_set():
                request_id = uuid.uuid4().hex
                x = rng.random((1, 8), dtype=np.float32)
                try:
                    y = infer(client, x, request_id)
                except Exception as error:  # noqa: BLE001 - recorded and asserted on by the test
                    with self._lock:
                        self.failed.append(repr(error))
                    if self._stop.is_set():
                        return
                    continue
                with self._lock:
                    self.answered[request_id] = (x, y)
        finally:
            client.close()


@pytest.fixture
def dense8(tmp_path_factory):
    from tests.serving import models

    return models.save_dense8(tmp_path_factory.mktemp("model"))


def rows_by_client_id(engine) -> dict[str, dict]:
    rows = read_predictions(engine, NAME)
    by_id = {row["client_request_id"]: row for row in rows}
    assert len(by_id) == len(rows), "a request was logged twice"
    return by_id


def test_every_request_is_one_row_with_named_features(database_url, dense8, tmp_path):
    engine = make_engine(database_url)
    sent = {}
    with start_server(dense8, NAME, env=server_env(database_url, tmp_path / "journal")) as server:
        client = triton.InferenceServerClient(server.address)
        rng = np.random.default_rng(7)
        for i in range(150):
            x = rng.random((1 + i % 3, 8), dtype=np.float32)  # some requests carry several rows
            request_id = f"req-{i}"
            sent[request_id] = (x, infer(client, x, request_id))
        client.close()
        wait_until(lambda: count_predictions(engine, NAME) >= 150, what="150 rows while the server runs")

    rows = rows_by_client_id(engine)
    assert set(rows) >= set(sent)
    # The server's warm-up may log nothing else: every row is one of our requests.
    assert count_predictions(engine, NAME) == 150
    for request_id, (x, y) in sent.items():
        row = rows[request_id]
        assert row["batch_size"] == len(x) and row["revision"] == 1 and len(row["request_id"]) == 40
        assert list(row["features"]) == FEATURES
        for i, name in enumerate(FEATURES):
            assert row["features"][name] == pytest.approx(x[:, i].tolist())
        assert row["outputs"] == {"y": pytest.approx(y.reshape(-1).tolist())}
    engine.dispose()


@pytest.fixture
def outage(database_url):
    engine = make_engine(database_url)
    create_schema(engine)  # as on a system that ran before (and a SQLite lock needs a file)
    engine.dispose()
    fault = Outage(database_url)
    yield fault
    fault.close()


def test_database_down_under_load_fails_no_prediction_and_loses_no_row(database_url, outage, dense8, tmp_path):
    engine = make_engine(database_url)
    with start_server(dense8, NAME, env=server_env(outage.url, tmp_path / "journal")) as server:
        with Load(server.address) as load:
            wait_until(lambda: load.count() >= 100, what="load before the outage")
            with outage.during():
                during = load.count()
                wait_until(lambda: load.count() >= during + 300, timeout=60, what="answers during the outage")
                wait_until(lambda: list((tmp_path / "journal").glob("*.jsonl")), what="rows going to the journal")
            after = load.count()
            wait_until(lambda: load.count() >= after + 300, timeout=60, what="answers after the outage")
        assert load.failed == [], load.failed[:3]
        answered = set(load.answered)
        wait_until(lambda: count_predictions(engine, NAME) == len(answered), timeout=60,
                   what=f"{len(answered)} rows after the database returned")
    assert set(rows_by_client_id(engine)) == answered
    engine.dispose()


def sigterm_under_load(server) -> set[str]:
    """SIGTERM while eight callers keep sending; the request ids that got an answer."""
    with Load(server.address) as load:
        wait_until(lambda: load.count() >= 300, timeout=60, what="load before SIGTERM")
        assert server.stop() == 0, server.log()
    assert load.answered
    return set(load.answered)


def test_sigterm_under_load_keeps_every_answered_prediction(database_url, dense8, tmp_path):
    engine = make_engine(database_url)
    journal = tmp_path / "journal"
    with start_server(dense8, NAME, env=server_env(database_url, journal)) as server:
        answered = sigterm_under_load(server)
    if list(journal.glob("*.jsonl")):  # the database was too slow for the shutdown budget: next start replays
        with start_server(dense8, NAME, env=server_env(database_url, journal)):
            wait_until(lambda: not list(journal.glob("*.jsonl")), timeout=60, what="the journal replayed")
    assert answered <= set(rows_by_client_id(engine))
    engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # one backend: two server starts
def test_sigterm_with_the_database_down_journals_and_the_next_start_replays(database_url, outage, dense8,
                                                                          tmp_path):
    engine = make_engine(database_url)
    journal = tmp_path / "journal"
    with start_server(dense8, NAME, env=server_env(outage.url, journal)) as server:
        wait_until(lambda: server.health() is not None, what="server up")
        with outage.during():
            answered = sigterm_under_load(server)
            assert list(journal.glob("*.jsonl")), "rows the database could not take must be in the journal"
    assert not answered <= set(rows_by_client_id(engine))

    with start_server(dense8, NAME, env=server_env(outage.url, journal)):
        wait_until(lambda: not list(journal.glob("*.jsonl")), timeout=60, what="the journal replayed")
    assert answered <= set(rows_by_client_id(engine))
    engine.dispose()


def test_concurrent_requests_to_a_model_with_named_inputs_each_log_their_own_values(sqlite_url, model_files,
                                                                                    tmp_path):
    """Requests that share model calls are split back into their own rows: one column per named input
    (numbers, strings, booleans) and every output, whatever outputs the caller asked for."""
    from tests.serving import models

    types = {"age": "FP32", "rooms": "INT64", "city": "BYTES", "garden": "BOOL"}
    sent: dict[str, dict] = {}
    lock = threading.Lock()

    def caller(worker: int, address: str) -> None:
        client = triton.InferenceServerClient(address)
        try:
            for i in range(12):
                rows = models.tabular_rows(1 + (worker + i) % 3, seed=worker * 100 + i)
                rows["city"] = np.vectorize(lambda s: s.encode(), otypes=[object])(rows["city"])
                inputs = []
                for name, array in rows.items():
                    inputs.append(triton.InferInput(name, list(array.shape), types[name]))
                    inputs[-1].set_data_from_numpy(array)
                request_id = f"w{worker}-{i}"
                result = client.infer("tabular", inputs, request_id=request_id,
                                      outputs=[triton.InferRequestedOutput("price")], client_timeout=30)
                with lock:
                    sent[request_id] = {"rows": rows, "price": result.as_numpy("price")}
        finally:
            client.close()

    engine = make_engine(sqlite_url)
    env = {"MODELRUN_DATABASE_URL": sqlite_url, "MODELRUN_JOURNAL_DIR": str(tmp_path / "journal")}
    with start_server(model_files["tabular"], "tabular", env=env) as server:
        threads = [threading.Thread(target=caller, args=(w, server.address)) for w in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wait_until(lambda: count_predictions(engine, "tabular") >= len(sent), what="a row per request")
    served = re.search(r"served (\d+) requests \(\d+ rows\) in (\d+) model calls", server.log())
    assert served and int(served[2]) < int(served[1]) == 16 * 12, "no two requests shared a model call"
    assert len(sent) == 16 * 12
    logged = {row["client_request_id"]: row for row in read_predictions(engine, "tabular")}
    assert len(logged) == len(sent)
    for request_id, want in sent.items():
        row, rows = logged[request_id], want["rows"]
        assert row["batch_size"] == len(rows["age"])
        assert row["features"] == {"age": pytest.approx(rows["age"][:, 0].tolist()),
                                   "rooms": rows["rooms"][:, 0].tolist(),
                                   "city": [c.decode() for c in rows["city"][:, 0]],
                                   "garden": rows["garden"][:, 0].tolist()}
        assert set(row["outputs"]) == {"price", "expensive"}
        assert row["outputs"]["price"] == pytest.approx(want["price"][:, 0].tolist(), rel=1e-5)
    engine.dispose()


def test_a_request_of_200000_rows_by_30_features_reaches_mariadb_with_its_default_settings(tmp_path):
    """About 70 MB of JSON in one request, against a 16 MiB max_allowed_packet: stored in pieces, every
    row of it, none set aside in a rejected-* journal file."""
    from tests.serving import models

    url, drop = fresh_database_url("mariadb", tmp_path)
    engine = make_engine(url)
    journal = tmp_path / "journal"
    try:
        with engine.connect() as conn:
            packet = int(conn.exec_driver_sql("SELECT @@GLOBAL.max_allowed_packet").scalar_one())
        assert packet <= 16 * 1024 * 1024, f"max_allowed_packet is {packet}: not MariaDB's default, proves nothing"
        model = models.save_dtype_model(tmp_path / "model", "FP32", width=30)  # x: FP32 [-1, 30] -> y [-1, 1]
        x = np.random.default_rng(11).normal(0, 1, (200_000, 30)).astype(np.float32)
        env = {"MODELRUN_DATABASE_URL": url, "MODELRUN_JOURNAL_DIR": str(journal), "MODELRUN_LOG_SAMPLE_RATE": "1.0"}
        with start_server(model, "wide", env=env) as server:
            client = triton.InferenceServerClient(server.address)
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            y = client.infer("wide", [tensor], request_id="large", client_timeout=120).as_numpy("y")
            client.close()
            assert y.shape == (200_000, 1)
            wait_until(lambda: count_rows(engine, "wide") == 200_000, timeout=120, what="the request's 200,000 rows")
        assert not list(journal.glob("*.jsonl")), [path.name for path in journal.glob("*.jsonl")]  # none rejected-*
        assert "the database refused" not in server.log() and ", 0 refused" in server.log()
        assert count_predictions(engine, "wide") == 1

        start = 0
        pieces = list(iter_predictions(engine, "wide"))  # one piece's values at a time would do; 70 MB is fine
        assert len(pieces) > 1 and [p["part"] for p in pieces] == list(range(len(pieces)))
        base = pieces[0]["request_id"]
        assert len(base) == 40 and [p["request_id"] for p in pieces[1:]] == [f"{base}.{k}" for k in
                                                                                 range(1, len(pieces))]
        for piece in pieces:
            assert piece["client_request_id"] == "large" and piece["ts"] == pieces[0]["ts"]
            end = start + piece["batch_size"]
            assert list(piece["features"]) == [f"x_{i}" for i in range(30)]
            sent = np.column_stack([np.array(piece["features"][f"x_{i}"], np.float32) for i in range(30)])
            assert np.array_equal(sent, x[start:end])  # every value, not only the first and last rows
            assert np.array_equal(np.array(piece["outputs"]["y"], np.float32), y[start:end, 0])
            text = len(orjson.dumps(piece["features"])) + len(orjson.dumps(piece["outputs"]))
            assert text <= MAX_PIECE_BYTES
            start = end
        assert start == 200_000
        assert pieces[0]["features"]["x_0"][0] == pytest.approx(float(x[0, 0]))
        assert pieces[-1]["features"]["x_29"][-1] == pytest.approx(float(x[-1, 29]))
    finally:
        engine.dispose()
        drop()
