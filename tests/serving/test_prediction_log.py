"""The prediction log writer against real SQLite, MariaDB and PostgreSQL databases.

"Down" is real: a TCP proxy that resets or swallows connections to MariaDB/PostgreSQL, an exclusive
lock held on the SQLite file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from modelrun.db import create_schema, make_engine
from modelrun.db.predictions import count_predictions, encode_columns, encode_each_row, read_predictions, row_of
from serving.prediction_journal import Journal
from serving.prediction_log import PredictionBatch, PredictionLogger, PredictionRecord
from tests.conftest import fresh_database_url
from tests.serving.dbfault import Outage
from tests.util import wait_until

DEPLOYMENT = "churn"
ROOT = Path(__file__).resolve().parents[2]


def record(i: int, deployment: str = DEPLOYMENT) -> PredictionRecord:
    """A typical request: numeric, boolean and string features, one output."""
    return PredictionRecord(
        deployment=deployment, revision=3, request_id=uuid.uuid4().hex, client_request_id=f"client-{i}",
        ts=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=i),
        features={"age": np.array([20 + i % 50], np.int64), "income": np.array([1000.5 + i], np.float32),
                  "member": np.array([i % 2 == 0]), "city": np.array([b"Troms\xc3\xb8"], dtype=object)},
        outputs={"churn": np.array([[i / 1000]], np.float32)},
        latency_ms=0.25 + i)


class Database:
    """The test's database, the URL the logger should use, and a way to take the database down."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.outage = Outage(url)
        self.proxy, self.logger_url = self.outage.proxy, self.outage.url

    def count(self, deployment: str = DEPLOYMENT) -> int:
        return count_predictions(self.engine, deployment)

    def down(self, how: str = "refuse"):
        create_schema(self.engine)  # as on a system that ran before (and a SQLite lock needs a file)
        return self.outage.during(how)

    def close(self):
        self.outage.close()
        self.engine.dispose()


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.close()


@pytest.fixture
def open_logger(db, tmp_path):
    """Start loggers on the test database (through the proxy); all are closed at the end."""
    loggers = []

    def start(journal_dir: Path = tmp_path / "journal", deployment: str = DEPLOYMENT, **options) -> PredictionLogger:
        options.setdefault("flush_interval", 0.02)
        logger = PredictionLogger(db.logger_url, deployment, journal_dir=journal_dir, **options)
        logger.start()
        loggers.append(logger)
        return logger

    yield start
    for logger in loggers:
        logger.close()


def journal_rows(journal_dir: Path) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in journal_dir.glob("predictions-*.jsonl"))


def test_every_record_becomes_one_row_with_its_values(db, open_logger):
    records = [record(i) for i in range(300)]
    logger = open_logger()
    for r in records:
        logger.log(r)
    wait_until(lambda: db.count() == 300, what="300 rows")
    logger.close()

    rows = {row["request_id"]: row for row in read_predictions(db.engine, DEPLOYMENT)}
    assert len(rows) == 300 and db.count() == 300
    for i, r in enumerate(records):
        row = rows[r.request_id]
        assert (row["deployment"], row["revision"], row["client_request_id"]) == (DEPLOYMENT, 3, f"client-{i}")
        assert row["ts"] == r.ts and row["batch_size"] == 1 and row["latency_ms"] == pytest.approx(0.25 + i)
        assert row["features"] == {"age": [20 + i % 50], "income": [pytest.approx(1000.5 + i)],
                                   "member": [i % 2 == 0], "city": ["Tromsø"]}
        assert row["outputs"] == {"churn": [[pytest.approx(i / 1000)]]}


def test_a_batch_of_rows_in_one_request_keeps_its_columns(db, open_logger):
    many = PredictionRecord(DEPLOYMENT, 1, uuid.uuid4().hex, "", datetime.now(UTC),
                            features={"x": np.arange(6, dtype=np.float64).reshape(3, 2)[:, 1],  # not contiguous
                                      "word": np.array(["a", "bé", "c😀"]), "raw": np.array([b"\xff\xfe", b"ok", b""],
                                                                                          dtype=object)},
                            outputs={"p": np.array([[0.1, 0.9], [0.5, 0.5], [1.0, float("nan")]])}, latency_ms=2.0)
    logger = open_logger()
    logger.log(many)
    wait_until(lambda: db.count() == 1, what="the row")
    (row,) = read_predictions(db.engine, DEPLOYMENT)
    assert row["batch_size"] == 3 and row["client_request_id"] == ""
    assert row["features"] == {"x": [1.0, 3.0, 5.0], "word": ["a", "bé", "c😀"], "raw": ["\\xff\\xfe", "ok", ""]}
    assert row["outputs"] == {"p": [[0.1, 0.9], [0.5, 0.5], [1.0, None]]}


def model_call(first: int, counts: list[int]) -> PredictionBatch:
    """One model call's requests, as the server logs them: request k has counts[k] rows, x = its number."""
    x = np.concatenate([np.full(n, first + k, np.float32) for k, n in enumerate(counts)])
    requests = [(f"client-{first + k}", datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=first + k),
                 0.5 + k, n) for k, n in enumerate(counts)]
    return PredictionBatch(DEPLOYMENT, 3, features={"x": x, "double": x * 2}, outputs={"y": -x}, requests=requests)


def test_a_model_call_becomes_one_row_per_request_with_that_requests_rows(db, open_logger):
    logger = open_logger()
    logger.log(model_call(0, [1, 3, 2]))
    logger.log(model_call(3, [2]))
    wait_until(lambda: db.count() == 4, what="4 rows")
    rows = {row["client_request_id"]: row for row in read_predictions(db.engine, DEPLOYMENT)}
    for number, count in ((0, 1), (1, 3), (2, 2), (3, 2)):
        row = rows[f"client-{number}"]
        assert row["batch_size"] == count
        assert row["ts"] == datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=number)
        assert row["features"] == {"x": [number] * count, "double": [2 * number] * count}
        assert row["outputs"] == {"y": [-number] * count}
    assert [rows[f"client-{k}"]["latency_ms"] for k in range(3)] == [0.5, 1.5, 2.5]
    ids = [row["request_id"] for row in rows.values()]
    assert len(set(ids)) == 4 and all(len(i) == 40 for i in ids)
    assert sorted(ids) == [rows[f"client-{k}"]["request_id"] for k in range(4)]  # in logging order


def test_a_model_call_of_one_row_requests_logs_each_requests_own_values(db, open_logger):
    # The usual traffic: every request one row. Its rows are encoded for the whole call at once; each row must
    # hold exactly what that request sent and got, whatever the columns' types, and a column that cannot take
    # that path (strings) is encoded request by request.
    n = 7
    rng = np.random.default_rng(7)
    features = {"age": rng.integers(18, 90, n), "income": rng.random(n).astype(np.float32),
                "member": rng.random(n) > 0.5, 'odd "name" 100%': rng.random(n),
                "city": np.array([f"city-{k}".encode() for k in range(n)], dtype=object)}
    outputs = {"score": rng.random(n).astype(np.float32)}
    requests = [(f"client-{k}", datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=k), 0.5 + k, 1)
                for k in range(n)]
    logger = open_logger()
    logger.log(PredictionBatch(DEPLOYMENT, 3, features=features, outputs=outputs, requests=requests))
    wait_until(lambda: db.count() == n, what=f"{n} rows")
    rows = {row["client_request_id"]: row for row in read_predictions(db.engine, DEPLOYMENT)}
    for k in range(n):
        row = rows[f"client-{k}"]
        assert row["batch_size"] == 1 and row["latency_ms"] == 0.5 + k
        income = row["features"].pop("income")  # float32: written as its shortest text, read back as a float
        assert len(income) == 1 and np.float32(income[0]) == features["income"][k]
        assert row["features"] == {"age": [int(features["age"][k])], "member": [bool(features["member"][k])],
                                   'odd "name" 100%': [float(features['odd "name" 100%'][k])], "city": [f"city-{k}"]}
        (score,) = row["outputs"]["score"]
        assert list(row["outputs"]) == ["score"] and np.float32(score) == outputs["score"][k]


def test_rows_encoded_at_once_read_back_as_rows_encoded_one_by_one():
    rng = np.random.default_rng(3)
    columns = {"f32": rng.random(5).astype(np.float32), "f64": rng.random(5),
               "f16": rng.random(5).astype(np.float16), "i64": rng.integers(-2**62, 2**62, 5),
               "u64": np.array([0, 1, 2**64 - 1, 5, 7], np.uint64), "bool": np.array([True, False, True, True, False]),
               "not finite": np.array([np.nan, np.inf, -np.inf, 0, -0.0]),
               'a "quoted", %s key': np.arange(5, dtype=np.int8), "é": np.arange(5, dtype=np.uint16)}
    one_by_one = [encode_columns({name: a[k:k + 1] for name, a in columns.items()}) for k in range(5)]
    assert encode_each_row(columns) == one_by_one
    # what the one-call path does not take: the caller encodes each row's slice
    assert encode_each_row({"city": np.array([b"Oslo"], dtype=object)}) is None
    assert encode_each_row({"x": np.zeros((2, 3))}) is None
    assert encode_each_row({"x": np.zeros(0)}) is None
    assert encode_each_row({"x": np.zeros(2), "y": np.zeros(3)}) is None


def test_sampling_a_model_call_keeps_or_drops_each_request_whole(sqlite_url, tmp_path):
    logger = PredictionLogger(sqlite_url, DEPLOYMENT, sample_rate=0.5, journal_dir=tmp_path / "j")
    logger.start()
    for call in range(200):
        logger.log(model_call(10 * call, [1, 2, 3, 1, 1, 2, 1, 1, 4, 1]))
    logger.close()
    rows = read_predictions(make_engine(sqlite_url), DEPLOYMENT)
    assert abs(len(rows) - 1000) <= 6 * (2000 * 0.25) ** 0.5
    counts = [1, 2, 3, 1, 1, 2, 1, 1, 4, 1]
    for row in rows:
        number = int(row["client_request_id"].removeprefix("client-"))
        assert row["features"]["x"] == [number] * counts[number % 10]


def test_a_row_the_database_refuses_is_set_aside_and_holds_up_nothing(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    poison = record(999)
    poison.revision = 2**40  # out of INTEGER range: MariaDB and PostgreSQL refuse it, SQLite stores it
    good = [record(i) for i in range(100)]
    logger = open_logger(journal)
    for r in good[:50] + [poison] + good[50:]:
        logger.log(r)
    wait_until(lambda: db.count() >= 100, what="the good rows")
    logger.close()
    stored = {row["request_id"] for row in read_predictions(db.engine, DEPLOYMENT)}
    assert {r.request_id for r in good} <= stored
    set_aside = [line for path in journal.glob("rejected-*.jsonl") for line in path.read_bytes().splitlines()]
    assert len(stored) + len(set_aside) == 101  # the refused row is kept for a person, not replayed forever
    assert not list(journal.glob("predictions-*.jsonl"))


def test_database_down_under_load_loses_nothing(db, open_logger, tmp_path):
    logger = open_logger(queue_size=200)  # small, so the outage also overflows the queue into the journal
    first = [record(i) for i in range(200)]
    for r in first:
        logger.log(r)
    wait_until(lambda: db.count() == 200, what="rows before the outage")

    during = [record(i) for i in range(200, 3200)]
    with db.down():
        producers = [threading.Thread(target=lambda part=part: [logger.log(r) for r in part])
                     for part in (during[0::2], during[1::2])]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()
        # Every log() call returned while the database was still down: none waited for it.
        wait_until(lambda: journal_rows(tmp_path / "journal") == 3000, what="the outage's rows in the journal")
        assert db.count() == 200

    wait_until(lambda: db.count() == 3200, timeout=60, what="3200 rows after the database returned")
    wait_until(lambda: not list((tmp_path / "journal").glob("*.jsonl")), what="replayed journals deleted")
    logger.close()
    assert db.count() == 3200
    assert logger.counts["spilled"] > 0


def test_replaying_the_same_journal_twice_makes_no_second_row(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    with db.down():
        logger = open_logger(journal)
        for i in range(250):
            logger.log(record(i))
        logger.close()
    for original in list(journal.glob("*.jsonl")):
        shutil.copy(original, journal / original.name.replace(".jsonl", "-copy.jsonl"))

    open_logger(journal)
    wait_until(lambda: not list(journal.glob("*.jsonl")), what="both journal copies replayed")
    assert db.count() == 250  # and no row was refused as a duplicate: none set aside (rejected-*.jsonl)


def test_a_crash_after_insert_before_journal_delete_makes_no_second_row(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    records = [record(i) for i in range(100)]
    with db.down():
        logger = open_logger(journal)
        for r in records:
            logger.log(r)
        logger.close()
    saved = {path: path.read_bytes() for path in journal.glob("*.jsonl")}
    logger = open_logger(journal)  # replays, then deletes the files ...
    wait_until(lambda: not list(journal.glob("*.jsonl")), what="the journal replayed")
    for path, content in saved.items():
        path.write_bytes(content)  # ... which a crash would have left behind
    logger.close()

    open_logger(journal)
    wait_until(lambda: not list(journal.glob("*.jsonl")), what="the journal replayed again")
    assert db.count() == 100
    assert not list(journal.glob("rejected-*.jsonl")), "a replayed row was refused instead of skipped"


CRASHING_PROCESS = """
import os, sys, uuid
from datetime import datetime, UTC
from pathlib import Path
import numpy as np
from serving.prediction_journal import Journal
from serving.prediction_log import PredictionLogger, PredictionRecord
from tests.util import wait_until
url, journal, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
logger = PredictionLogger(url, "churn", journal_dir=journal, flush_interval=0.02)
logger.start()
for i in range(n):
    logger.log(PredictionRecord("churn", 1, uuid.uuid4().hex, str(i), datetime.now(UTC),
                                {"age": np.array([i])}, {"p": np.array([[0.5]])}, 1.0))
wait_until(lambda: logger.counts["journaled"] == n, what="rows journaled")
os._exit(9)  # no close(): the process dies with its journal open
"""


def test_journal_left_by_a_crashed_process_is_replayed_at_next_start(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    with db.down():
        done = subprocess.run([sys.executable, "-c", CRASHING_PROCESS, db.logger_url, str(journal), "400"],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
                              capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert journal_rows(journal) == 400 and db.count() == 0

    open_logger(journal)
    wait_until(lambda: db.count() == 400, what="the crashed process's rows replayed")
    wait_until(lambda: not list(journal.glob("*.jsonl")), what="its journal deleted")
    assert db.count() == 400


def test_close_with_the_database_down_keeps_everything_in_the_journal(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    logger = open_logger(journal)
    with db.down():
        for i in range(1000):
            logger.log(record(i))
        logger.close(timeout=4.0)
        assert journal_rows(journal) == 1000 and db.count() == 0

    open_logger(journal)
    wait_until(lambda: db.count() == 1000, timeout=60, what="the journal replayed after the restart")
    assert db.count() == 1000


@pytest.fixture(params=["mariadb", "postgresql"])
def server_db(request, tmp_path):
    url, drop = fresh_database_url(request.param, tmp_path)
    database = Database(url)
    yield database
    database.close()
    drop()


def test_starting_while_the_database_is_down_creates_the_table_when_it_returns(server_db, tmp_path):
    server_db.proxy.refuse()
    logger = PredictionLogger(server_db.logger_url, DEPLOYMENT, journal_dir=tmp_path / "j", flush_interval=0.02)
    try:
        logger.start()
        for i in range(100):
            logger.log(record(i))
        wait_until(lambda: journal_rows(tmp_path / "j") == 100, what="rows journaled")
        assert not sa.inspect(server_db.engine).has_table("predictions")
        server_db.proxy.restore()
        wait_until(lambda: sa.inspect(server_db.engine).has_table("predictions"), what="the table created")
        wait_until(lambda: server_db.count() == 100, what="the journaled rows written")
    finally:
        logger.close()


def test_close_with_a_hung_database_returns_and_keeps_everything(server_db, tmp_path):
    """A server that accepts connections and never answers: close() must not wait for it."""
    journal = tmp_path / "journal"
    logger = PredictionLogger(server_db.logger_url, DEPLOYMENT, journal_dir=journal, flush_interval=0.02)
    logger.start()
    with server_db.down("blackhole"):
        for i in range(1000):
            logger.log(record(i))
        logger.close(timeout=3.0)
        # At least every row; a batch that hung mid-INSERT is journaled by close() as well.
        assert journal_rows(journal) >= 1000 and server_db.count() == 0

    restarted = PredictionLogger(server_db.logger_url, DEPLOYMENT, journal_dir=journal, flush_interval=0.02)
    restarted.start()
    try:
        wait_until(lambda: server_db.count() == 1000, timeout=60, what="the journal replayed after the restart")
    finally:
        restarted.close()
    assert server_db.count() == 1000


def test_records_logged_after_close_are_kept_in_the_journal(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    logger = open_logger(journal)
    logger.close()
    logger.close()  # idempotent
    for i in range(10):
        logger.log(record(i))
    assert journal_rows(journal) == 10
    open_logger(journal)
    wait_until(lambda: db.count() == 10, what="late records replayed")


def test_a_journal_another_live_process_is_writing_is_left_alone(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    live = Journal(journal, f"predictions-{DEPLOYMENT}.")  # what another server's writer holds open
    live.append([row_of(record(i)) for i in range(50)], sync=True)
    logger = open_logger(journal)
    for i in (1, 2):  # the second row is written after the writer's first replay pass finished
        logger.log(record(1000 + i))
        wait_until(lambda i=i: db.count() == i, what=f"row {i}")
    logger.close()
    assert journal_rows(journal) == 50 and db.count() == 2

    live.close()  # that process ends: its file is anyone's to replay
    open_logger(journal)
    wait_until(lambda: db.count() == 52, what="the released journal replayed")


def test_each_deployment_replays_only_its_own_journal(db, open_logger, tmp_path):
    journal = tmp_path / "journal"  # shared by two deployments, one name a prefix of the other
    with db.down():
        other = open_logger(journal, deployment=f"{DEPLOYMENT}-v2")
        for i in range(20):
            other.log(record(i, deployment=f"{DEPLOYMENT}-v2"))
        other.close()
    mine = open_logger(journal)
    for i in (1, 2):  # the second row is written after the writer's first replay pass finished
        mine.log(record(i))
        wait_until(lambda i=i: db.count() == i, what=f"row {i}")
    mine.close()
    assert journal_rows(journal) == 20 and db.count(f"{DEPLOYMENT}-v2") == 0
    open_logger(journal, deployment=f"{DEPLOYMENT}-v2")
    wait_until(lambda: db.count(f"{DEPLOYMENT}-v2") == 20, what="its own journal replayed")


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_sampling_keeps_about_the_sampled_share(sqlite_url, tmp_path, rate):
    n = 4000
    logger = PredictionLogger(sqlite_url, DEPLOYMENT, sample_rate=rate, journal_dir=tmp_path / "j")
    logger.start()
    for i in range(n):
        logger.log(record(i))
    logger.close()
    kept = count_predictions(make_engine(sqlite_url), DEPLOYMENT)
    six_sigma = 6 * (n * rate * (1 - rate)) ** 0.5  # binomial: never flakes
    assert abs(kept - n * rate) <= six_sigma
    if rate == 0.0:
        assert kept == 0
