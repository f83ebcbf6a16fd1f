"""Requests too large for one row are stored in pieces; the `part` column and its migration.

Unit tests of the splitting (`encode_rows`), then the writer and the migration against real SQLite,
MariaDB and PostgreSQL databases. Most use a small piece limit so that pieces are many and fast; the
statement-size test uses the real MAX_PIECE_BYTES against the servers' default settings.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from modelrun.db import _add_column, create_schema, make_engine, migrate
from modelrun.db import predictions as P
from modelrun.db.predictions import (count_predictions, count_rows, encode_columns, encode_rows, insert_ignoring_duplicates,
                                     piece_id, read_predictions)
from serving.prediction_journal import Journal
from serving.prediction_log import PredictionBatch, PredictionRecord
from tests.serving.test_prediction_log import (DEPLOYMENT, db, journal_rows, open_logger,  # noqa: F401 (fixtures)
                                               record)
from tests.util import wait_until

TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SMALL = 16 * 1024  # a piece limit for tests: many pieces from a few thousand rows


def mixed(n: int, seed: int = 0) -> tuple[dict, dict]:
    """n rows of every kind of column the server logs: numbers, booleans, strings (some non-ASCII, some
    long), and a 2-D output."""
    rng = np.random.default_rng(seed)
    words = np.array(["a", "Tromsø", 'quote"d', "x" * 40, "😀"], dtype=object)
    features = {"age": rng.integers(0, 100, n), "income": rng.normal(5e4, 1e4, n).astype(np.float32),
                "member": rng.integers(0, 2, n).astype(bool), "city": rng.choice(words, n)}
    outputs = {"p": rng.random((n, 3)), "label": rng.integers(0, 3, n).astype(np.int32)}
    return features, outputs


def decoded(rows: list[dict], key: str) -> dict[str, list]:
    """The columns of `key` ("features"/"outputs") of a request's pieces, concatenated in part order."""
    columns: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: r["part"]):
        for name, values in orjson.loads(row[key]).items():
            columns.setdefault(name, []).extend(values)
    return columns


def utf8_size(row: dict) -> int:
    return len(row["features"].encode()) + len(row["outputs"].encode())


# ---- splitting ------------------------------------------------------------------------------------

def test_a_request_under_the_limit_is_one_row_as_before():
    features, outputs = mixed(50)
    (row,) = encode_rows(DEPLOYMENT, 1, "r" * 40, "c", TS, features, outputs, 1.5)
    assert row == P.encode_row(DEPLOYMENT, 1, "r" * 40, "c", TS, features, outputs, 1.5)
    assert (row["request_id"], row["batch_size"], row["part"]) == ("r" * 40, 50, 0)


@pytest.mark.parametrize("n, limit", [(3000, SMALL), (3000, 4 * SMALL), (20_000, SMALL), (301, 2000)])
def test_pieces_cover_every_row_exactly_once_in_order(n, limit):
    features, outputs = mixed(n)
    rows = encode_rows(DEPLOYMENT, 4, "f" * 40, "client", TS, features, outputs, 2.5, limit=limit)
    assert len(rows) > 1
    assert [r["part"] for r in rows] == list(range(len(rows)))
    assert [r["request_id"] for r in rows] == ["f" * 40] + [f"{'f' * 40}.{k}" for k in range(1, len(rows))]
    assert sum(r["batch_size"] for r in rows) == n and all(r["batch_size"] >= 1 for r in rows)
    assert all(utf8_size(r) <= limit for r in rows)
    assert all(utf8_size(r) >= limit // 3 for r in rows[:-1]), "pieces much smaller than they may be"
    for r in rows:
        assert (r["deployment"], r["revision"], r["client_request_id"], r["ts"], r["latency_ms"]) == \
            (DEPLOYMENT, 4, "client", TS.replace(tzinfo=None), 2.5)
        assert all(len(values) == r["batch_size"] for values in orjson.loads(r["features"]).values())
        assert all(len(values) == r["batch_size"] for values in orjson.loads(r["outputs"]).values())
    # Features and outputs are cut at the same rows, and together they are the whole request.
    assert decoded(rows, "features") == orjson.loads(encode_columns(features))
    assert decoded(rows, "outputs") == orjson.loads(encode_columns(outputs))


def test_a_request_that_surely_does_not_fit_is_never_encoded_whole(monkeypatch):
    n = 50_000
    features = {f"x{i}": np.arange(n, dtype=np.float32) + i for i in range(30)}
    outputs = {"y": np.zeros(n, np.float32)}
    encoded_rows = []
    real = P.encode_columns
    monkeypatch.setattr(P, "encode_columns", lambda columns: encoded_rows.append(
        len(next(iter(columns.values())))) or real(columns))
    rows = encode_rows(DEPLOYMENT, 1, "id", "", TS, features, outputs, 1.0, limit=256 * 1024)
    assert sum(r["batch_size"] for r in rows) == n and all(utf8_size(r) <= 256 * 1024 for r in rows)
    assert max(encoded_rows) < n
    assert sum(encoded_rows) <= 2 * 2 * n, "each row encoded about once (features and outputs)"


def test_a_single_row_over_the_limit_stays_one_row():
    features = {"text": np.array(["x" * 5000, "y" * 5000, "z" * 5000], dtype=object)}
    rows = encode_rows(DEPLOYMENT, 1, "id", "", TS, features, {"p": np.zeros(3)}, 1.0, limit=4000)
    assert [r["batch_size"] for r in rows] == [1, 1, 1]  # rows are never cut; the database may refuse one
    assert decoded(rows, "features") == {"text": ["x" * 5000, "y" * 5000, "z" * 5000]}


def test_arrays_without_a_common_first_dimension_stay_one_row():
    features = {"x": np.arange(10_000, dtype=np.float64)}
    outputs = {"scalar": np.float64(3.0)}  # nothing to cut at
    (row,) = encode_rows(DEPLOYMENT, 1, "id", "", TS, features, outputs, 1.0, limit=SMALL)
    assert row["batch_size"] == 10_000 and row["part"] == 0


def test_piece_ids_fit_the_column_and_long_ids_never_share_pieces():
    assert piece_id("abc", 0) == "abc" and piece_id("abc", 12) == "abc.12"
    assert piece_id("h" * 40, 99999) == "h" * 40 + ".99999"
    one, two = "L" * 63 + "1", "L" * 63 + "2"  # the same first 60 characters
    assert piece_id(one, 0) == one
    assert len(piece_id(one, 3)) <= 64 and piece_id(one, 3) != piece_id(two, 3)
    assert piece_id(one, 3) == piece_id(one, 3)  # the same on every replay


def test_the_server_s_batch_entry_splits_a_large_request_among_small_ones(monkeypatch):
    monkeypatch.setattr(P, "MAX_PIECE_BYTES", SMALL)
    counts = [2, 5000, 3]
    x = np.concatenate([np.full(n, k, np.float32) for k, n in enumerate(counts)])
    batch = PredictionBatch(DEPLOYMENT, 1, features={"x": x}, outputs={"y": -x},
                            requests=[(f"c{k}", TS, 1.0, n) for k, n in enumerate(counts)])
    rows = batch.rows()
    by_client = {}
    for row in rows:
        by_client.setdefault(row["client_request_id"], []).append(row)
    assert [len(by_client[c]) for c in ("c0", "c2")] == [1, 1] and len(by_client["c1"]) > 1
    assert decoded(by_client["c1"], "features") == {"x": [1.0] * 5000}
    assert decoded(by_client["c1"], "outputs") == {"y": [-1.0] * 5000}
    ids = [row["request_id"] for row in rows]
    assert len(set(ids)) == len(ids)


# ---- the writer, on each database -----------------------------------------------------------------

def large_record(n: int, seed: int = 0) -> PredictionRecord:
    features, outputs = mixed(n, seed)
    return PredictionRecord(DEPLOYMENT, 2, uuid.uuid4().hex, f"large-{seed}", TS, features, outputs, 9.0)


def stored_pieces(engine, request_id: str) -> list[dict]:
    return [row for row in read_predictions(engine, DEPLOYMENT)
            if row["request_id"] == request_id or row["request_id"].startswith(f"{request_id}.")]


def assert_stored_whole(engine, r: PredictionRecord) -> None:
    pieces = stored_pieces(engine, r.request_id)
    assert [p["part"] for p in pieces] == list(range(len(pieces)))  # in id order too
    assert len(pieces) > 1 and sum(p["batch_size"] for p in pieces) == len(r.features["age"])
    assert {(p["client_request_id"], p["ts"], p["revision"]) for p in pieces} == {(r.client_request_id, TS, 2)}
    rows_as_text = [{"features": orjson.dumps(p["features"]).decode(), "outputs": orjson.dumps(p["outputs"]).decode(),
                     "part": p["part"]} for p in pieces]
    assert decoded(rows_as_text, "features") == orjson.loads(encode_columns(r.features))
    assert decoded(rows_as_text, "outputs") == orjson.loads(encode_columns(r.outputs))


def test_a_large_request_is_stored_in_pieces_and_counted_once(db, open_logger, monkeypatch, tmp_path):
    monkeypatch.setattr(P, "MAX_PIECE_BYTES", SMALL)
    large = large_record(4000)
    logger = open_logger()
    for i in range(20):
        logger.log(record(i))
    logger.log(large)
    wait_until(lambda: count_rows(db.engine, DEPLOYMENT) == 4020, what="every row of every request")
    logger.close()
    assert count_predictions(db.engine, DEPLOYMENT) == 21
    assert_stored_whole(db.engine, large)
    assert logger.counts["rejected"] == 0 and not list((tmp_path / "journal").glob("*.jsonl"))


def test_replaying_a_journal_of_pieces_twice_is_exactly_once(db, open_logger, monkeypatch, tmp_path):
    monkeypatch.setattr(P, "MAX_PIECE_BYTES", SMALL)
    journal = tmp_path / "journal"
    larges = [large_record(3000, seed) for seed in range(3)]
    with db.down():
        logger = open_logger(journal)
        for i, r in enumerate(larges):
            logger.log(r)
            logger.log(record(i))
        logger.close()
    pieces = journal_rows(journal)
    assert pieces > 3 + 3
    for original in list(journal.glob("*.jsonl")):
        shutil.copy(original, journal / original.name.replace(".jsonl", "-copy.jsonl"))

    open_logger(journal, batch_rows=7)  # replay chunks that cut through requests' pieces
    wait_until(lambda: not list(journal.glob("*.jsonl")), what="both journal copies replayed")
    assert count_predictions(db.engine, DEPLOYMENT) == 6
    assert count_rows(db.engine, DEPLOYMENT) == 3 * 3000 + 3
    assert len(read_predictions(db.engine, DEPLOYMENT)) == pieces
    for r in larges:
        assert_stored_whole(db.engine, r)
    assert not list(journal.glob("rejected-*.jsonl"))


def test_a_journal_written_before_parts_existed_replays_as_whole_requests(db, open_logger, tmp_path):
    journal = tmp_path / "journal"
    old = Journal(journal, f"predictions-{DEPLOYMENT}.")
    rows = [P.row_of(record(i)) for i in range(30)]
    for row in rows:
        del row["part"]  # as the earlier version journaled them
    old.append(rows, sync=True)
    old.close()
    open_logger(journal)
    wait_until(lambda: count_predictions(db.engine, DEPLOYMENT) == 30, what="the old journal replayed")
    assert {row["part"] for row in read_predictions(db.engine, DEPLOYMENT)} == {0}


def server_setting(engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT @@{name}").scalar_one())


def test_many_rows_just_under_the_limit_go_in_one_call_within_the_servers_defaults(database_url):
    """Eight rows of nearly MAX_PIECE_BYTES in one insert call (one transaction), half of them all quotes,
    which PyMySQL's escaping doubles: no statement may exceed the database's packet limit."""
    engine = make_engine(database_url, io_timeout=60)
    create_schema(engine)
    if engine.dialect.name == "mysql":
        assert server_setting(engine, "max_allowed_packet") <= 16 * 1024 * 1024, "not the default setting"
    limit = P.MAX_PIECE_BYTES
    rows = []
    for k in range(8):
        text = '"' * (limit // 2 - 40) if k % 2 else "1.25," * ((limit - 100) // 5)
        features = {"t": np.array([text], dtype=object)} if k % 2 else {"x": np.array([text], dtype=object)}
        row = P.encode_row(DEPLOYMENT, 1, f"big-{k}", "", TS, features, {"y": np.array([k])}, 1.0)
        assert limit - 200 <= utf8_size(row) <= limit
        rows.append(row)
    statements = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(1))
    with engine.begin() as conn:
        assert insert_ignoring_duplicates(conn, rows) == 8
    assert count_predictions(engine, DEPLOYMENT) == 8 and count_rows(engine, DEPLOYMENT) == 8
    if engine.dialect.name == "postgresql":
        assert len(statements) > 1, "the JSON parameter was not cut"
    stored = {row["request_id"]: row for row in read_predictions(engine, DEPLOYMENT)}
    assert stored["big-1"]["features"]["t"] == ['"' * (limit // 2 - 40)]
    engine.dispose()


def test_pymysql_still_cuts_executemany_statements_at_about_a_megabyte():
    import pymysql.cursors

    # insert_ignoring_duplicates relies on it for MySQL (see its docstring).
    assert pymysql.cursors.Cursor.max_stmt_length <= 2 * P.MAX_PIECE_BYTES


# ---- the migration --------------------------------------------------------------------------------

def old_predictions_table(metadata: sa.MetaData) -> sa.Table:
    """`predictions` as versions before `part` created it."""
    longtext = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    return sa.Table(
        "predictions", metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.String(63), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("client_request_id", sa.String(256), nullable=False, default=""),
        sa.Column("ts", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"), nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("features", longtext, nullable=False),
        sa.Column("outputs", longtext, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.UniqueConstraint("deployment", "request_id", name="uq_predictions_deployment_request"),
        sa.Index("ix_predictions_deployment_ts", "deployment", "ts"),
        mysql_charset="utf8mb4",
    )


@pytest.fixture
def old_database(database_url):
    """A database whose `predictions` table has the old layout and two rows an old server wrote."""
    engine = make_engine(database_url)
    old = old_predictions_table(sa.MetaData())
    old.create(engine)
    with engine.begin() as conn:
        conn.execute(old.insert(), [{"deployment": DEPLOYMENT, "revision": 1, "request_id": f"old-{i}",
                                     "client_request_id": "", "ts": TS.replace(tzinfo=None), "batch_size": 3,
                                     "features": '{"x":[1,2,3]}', "outputs": '{"y":[0,0,1]}', "latency_ms": 1.0}
                                    for i in range(2)])
    yield engine, old
    engine.dispose()


def columns_of(engine) -> set[str]:
    return {column["name"] for column in sa.inspect(engine).get_columns("predictions")}


def test_create_schema_adds_part_to_an_old_table_and_twice_is_fine(old_database):
    engine, old = old_database
    assert "part" not in columns_of(engine)
    create_schema(engine)
    assert "part" in columns_of(engine)
    create_schema(engine)
    assert migrate(engine) == []
    assert count_predictions(engine, DEPLOYMENT) == 2 and count_rows(engine, DEPLOYMENT) == 6
    assert [row["part"] for row in read_predictions(engine, DEPLOYMENT)] == [0, 0]
    # An old server that does not know the column still writes whole requests (part 0) ...
    with engine.begin() as conn:
        conn.execute(old.insert(), {"deployment": DEPLOYMENT, "revision": 1, "request_id": "old-2",
                                    "client_request_id": "", "ts": TS.replace(tzinfo=None), "batch_size": 1,
                                    "features": "{}", "outputs": "{}", "latency_ms": 1.0})
    # ... next to a new one's pieces.
    rows = encode_rows(DEPLOYMENT, 1, "new", "", TS, *mixed(2000), 1.0, limit=SMALL)
    with engine.begin() as conn:
        insert_ignoring_duplicates(conn, rows)
        insert_ignoring_duplicates(conn, rows)  # a replay: skipped
    assert count_predictions(engine, DEPLOYMENT) == 4 and count_rows(engine, DEPLOYMENT) == 6 + 1 + 2000


def test_processes_racing_to_migrate_all_succeed(old_database):
    engine, _ = old_database
    racers = 4
    engines = [make_engine(engine.url.render_as_string(hide_password=False), connect_timeout=10) for _ in range(racers)]
    barrier, results, errors = threading.Barrier(racers), [], []

    def race(own: sa.Engine) -> None:
        barrier.wait()
        try:
            results.append(migrate(own))
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    threads = [threading.Thread(target=race, args=(own,)) for own in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for own in engines:
        own.dispose()
    assert errors == []
    assert sorted(results) == [[]] * (racers - 1) + [["predictions.part"]]  # one added it, the others saw it
    assert "part" in columns_of(engine)


def test_adding_a_column_someone_else_just_added_is_success(old_database):
    """The losing side of a race, made certain: our ALTER fails because the column is there."""
    engine, _ = old_database
    assert migrate(engine) == ["predictions.part"]
    assert _add_column(engine, P.predictions, P.predictions.c.part) is False
