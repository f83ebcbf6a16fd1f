"""The prediction log: one row per ModelInfer request, written by the model server, read by drift.

Features and outputs are stored as columnar JSON text, `{"age": [31, 45], "city": ["Oslo", "Rome"]}`
(one list per feature, one element per row of the request's batch). `encode_columns` turns the
server's numpy arrays into that text; `read_predictions` turns it back into dicts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from modelrun.db import metadata

_LONGTEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")  # MySQL TEXT stops at 64 KiB
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")  # keep microseconds

predictions = sa.Table(
    "predictions",
    metadata,
    # SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("deployment", sa.String(63), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("client_request_id", sa.String(256), nullable=False, default=""),
    sa.Column("ts", _TIMESTAMP, nullable=False),  # naive UTC
    sa.Column("batch_size", sa.Integer, nullable=False),
    sa.Column("features", _LONGTEXT, nullable=False),
    sa.Column("outputs", _LONGTEXT, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.UniqueConstraint("deployment", "request_id", name="uq_predictions_deployment_request"),
    sa.Index("ix_predictions_deployment_ts", "deployment", "ts"),
    mysql_charset="utf8mb4",  # any text a client sends (a server default of utf8mb3 refuses emoji)
)

COLUMNS = ("deployment", "revision", "request_id", "client_request_id", "ts", "batch_size", "features",
           "outputs", "latency_ms")


# ---- encoding -------------------------------------------------------------------------------------

def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # not text: keep distinct values distinct and readable
        return value.decode("utf-8", "backslashreplace")


def _default(value):
    """orjson hook for what it does not serialize itself."""
    if isinstance(value, bytes | bytearray | memoryview):
        return _decode(bytes(value))
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


_NUMERIC_KINDS = frozenset("biuf")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def encode_columns(columns: dict[str, np.ndarray]) -> str:
    """`{name: array}` → columnar JSON text. Bytes become UTF-8 strings; NaN/inf become null."""
    try:  # the common case, numeric arrays orjson takes as they are, in one C call
        return orjson.dumps(columns, option=_NUMPY).decode()
    except TypeError:
        pass
    prepared = {}
    for name, array in columns.items():
        array = np.asarray(array)
        if array.dtype.kind in _NUMERIC_KINDS:
            # orjson writes contiguous native-endian numeric arrays in C, without a Python loop.
            if not array.flags.c_contiguous or not array.dtype.isnative:
                array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
            prepared[name] = array
        else:
            prepared[name] = array.tolist()
    try:
        return orjson.dumps(prepared, default=_default, option=_NUMPY).decode()
    except TypeError:  # a dtype orjson refuses (e.g. float16 on old builds): go through Python lists
        slow = {name: np.asarray(a).tolist() for name, a in columns.items()}
        return orjson.dumps(slow, default=_default).decode()


def batch_size_of(columns: dict[str, np.ndarray]) -> int:
    for array in columns.values():
        shape = np.shape(array)
        return int(shape[0]) if shape else 1
    return 0


def utc_naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def _text(value, limit: int) -> str:
    return str(value).replace("\x00", "")[:limit]  # PostgreSQL text cannot hold NUL


def encode_row(deployment: str, revision: int, request_id: str, client_request_id: str, ts: datetime,
               features: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_ms: float) -> dict:
    """One request as a row (without id). Strings are cut to fit their column."""
    latency = float(latency_ms)
    return {"deployment": _text(deployment, 63), "revision": int(revision),
            "request_id": _text(request_id, 64), "client_request_id": _text(client_request_id or "", 256),
            "ts": utc_naive(ts), "batch_size": batch_size_of(features),
            "features": encode_columns(features), "outputs": encode_columns(outputs),
            "latency_ms": latency if math.isfinite(latency) else -1.0}


def row_of(r) -> dict:
    """A `serving.prediction_log.PredictionRecord` as a row (without id)."""
    return encode_row(r.deployment, r.revision, r.request_id, r.client_request_id, r.ts, r.features, r.outputs,
                      r.latency_ms)


# ---- writing --------------------------------------------------------------------------------------

def insert_ignoring_duplicates(conn: sa.Connection, rows: Sequence[dict]) -> int:
    """Insert `rows` (dicts keyed by COLUMNS, `ts` naive UTC) in one statement; a (deployment,
    request_id) that is already there is skipped, so replaying a journal twice never makes a second row.

    SQLite gets multi-row `INSERT ... VALUES (..), (..) ON CONFLICT DO NOTHING` statements with plain
    parameters (an executemany would step, and let go of the GIL, once per row); PyMySQL rewrites an
    executemany into one multi-row `INSERT IGNORE ... VALUES (..), (..)`. pg8000 would send one
    round trip per row, so PostgreSQL gets the whole batch as one JSON parameter, expanded server-side
    by json_to_recordset (about ten times less Python per row than a multi-row VALUES).
    Returns the number of rows actually inserted (duplicates excluded), as the driver reports it.
    """
    if not rows:
        return 0
    name = conn.dialect.name
    if name == "postgresql":
        result = conn.execute(_PG_INSERT, {"batch": orjson.dumps(list(rows)).decode()})
    elif name == "sqlite":
        return _sqlite_insert(conn, rows)
    elif name in ("mysql", "mariadb"):
        result = conn.execute(_MYSQL_INSERT, list(rows))
    else:
        raise NotImplementedError(f"prediction log: unsupported database {name!r} (sqlite, mysql, postgresql)")
    return max(result.rowcount, 0)


def _pg_insert() -> sa.Insert:
    columns = [sa.column(name, predictions.c[name].type) for name in COLUMNS]
    batch = sa.cast(sa.bindparam("batch", type_=sa.Text), postgresql.JSON)
    recordset = sa.func.json_to_recordset(batch).table_valued(*columns).render_derived(name="batch", with_types=True)
    select = sa.select(*(recordset.c[name] for name in COLUMNS))
    return postgresql.insert(predictions).from_select(list(COLUMNS), select).on_conflict_do_nothing()


def _sqlite_insert(conn: sa.Connection, rows: Sequence[dict]) -> int:
    inserted = 0
    for start in range(0, len(rows), _SQLITE_CHUNK):
        chunk = rows[start:start + _SQLITE_CHUNK]
        values = []
        for row in chunk:
            values.extend(row[name] for name in COLUMNS)
            values[_TS_FROM_END] = _sqlite_time(values[_TS_FROM_END])
        inserted += max(conn.exec_driver_sql(_sqlite_statement(len(chunk)), tuple(values)).rowcount, 0)
    return inserted


def _sqlite_time(ts: datetime) -> str:
    return ts.isoformat(" ", "microseconds")  # the text SQLAlchemy's SQLite DateTime stores and compares


@functools.cache
def _sqlite_statement(rows: int) -> str:
    one = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    return (f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES {', '.join([one] * rows)} "
            "ON CONFLICT (deployment, request_id) DO NOTHING")


_SQLITE_CHUNK = 100  # rows per statement: 900 parameters, under SQLite's oldest limit of 999
_TS_FROM_END = COLUMNS.index("ts") - len(COLUMNS)
_MYSQL_INSERT = sa.insert(predictions).prefix_with("IGNORE")
_PG_INSERT = _pg_insert()


# ---- reading --------------------------------------------------------------------------------------

def count_predictions(engine: sa.Engine, deployment: str) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(predictions).where(predictions.c.deployment == deployment)
        return int(conn.execute(query).scalar_one())


def read_predictions(engine: sa.Engine, deployment: str, *, since: datetime | None = None,
                     after_id: int | None = None, limit: int | None = None) -> list[dict]:
    """Rows of one deployment in id order, with `features`/`outputs` decoded and `ts` as aware UTC.
    `since` filters on ts (>=); `after_id` lets a reader resume from a watermark."""
    return list(iter_predictions(engine, deployment, since=since, after_id=after_id, limit=limit))


def iter_predictions(engine: sa.Engine, deployment: str, *, since: datetime | None = None,
                     after_id: int | None = None, limit: int | None = None) -> Iterator[dict]:
    query = sa.select(predictions).where(predictions.c.deployment == deployment).order_by(predictions.c.id)
    if since is not None:
        query = query.where(predictions.c.ts >= utc_naive(since))
    if after_id is not None:
        query = query.where(predictions.c.id > after_id)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        for row in conn.execute(query).mappings():
            item = dict(row)
            item["ts"] = item["ts"].replace(tzinfo=UTC)
            item["features"] = orjson.loads(item["features"])
            item["outputs"] = orjson.loads(item["outputs"])
            yield item
