"""The prediction log: one row per ModelInfer request, written by the model server, read by drift.

Features and outputs are stored as columnar JSON text, `{"age": [31, 45], "city": ["Oslo", "Rome"]}`
(one list per feature, one element per row of the request's batch). `encode_columns` turns the
server's numpy arrays into that text; `read_predictions` turns it back into dicts.

A request too large for one row (its features + outputs text over MAX_PIECE_BYTES) is stored as
several rows, "pieces", each holding a contiguous slice of the request's rows (features and outputs
sliced alike): piece k has `part` k and request_id `<request_id>.<k>` (piece 0 keeps the request's
own id), and every piece repeats the request's ts, client_request_id, revision and latency. So a
request is a row with part = 0 (`count_predictions`), the request's rows are the sum of batch_size
over its pieces (`count_rows`), and a piece is as exactly-once as a whole request: (deployment,
request_id) is unique. Rows written before `part` existed get 0: they are whole requests.
"""

from __future__ import annotations

import functools
import hashlib
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
    # Which piece of its request this row is (0: the first or only one). NOT NULL with a server default,
    # so a server of an earlier version, which does not name the column, still writes whole requests
    # as part 0; `modelrun.db.migrate` adds it to a table created before it existed.
    sa.Column("part", sa.Integer, nullable=False, default=0, server_default=sa.text("0")),
    sa.UniqueConstraint("deployment", "request_id", name="uq_predictions_deployment_request"),
    sa.Index("ix_predictions_deployment_ts", "deployment", "ts"),
    mysql_charset="utf8mb4",  # any text a client sends (a server default of utf8mb3 refuses emoji)
)

COLUMNS = ("deployment", "revision", "request_id", "client_request_id", "ts", "batch_size", "features",
           "outputs", "latency_ms", "part")

# The most features + outputs JSON text (UTF-8 bytes) one row holds; a larger request is split into pieces.
# Why 4 MiB: a row must fit in one statement, and MariaDB refuses (drops the connection on) a statement
# larger than max_allowed_packet, 16 MiB by default (MySQL 8.0: 64 MiB; Cloud SQL lets it be set, up to
# 1 GiB). PyMySQL quotes text by backslash-escaping `"` and `\`, which can at worst double JSON text (a
# string feature full of quotes); 2 x 4 MiB plus the other columns stays well under 16 MiB.
# PyMySQL packs an executemany's rows into statements of about 1 MB (Cursor.max_stmt_length) and sends
# a row larger than that alone, so many big rows never add up in one statement. PostgreSQL (1 GiB per
# value) and SQLite (1e9 bytes per value) allow more; one limit for all keeps rows alike everywhere.
# (MySQL 5.7's default max_allowed_packet, 4 MiB, needs a smaller value here.)
MAX_PIECE_BYTES = 4 * 1024 * 1024


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


def encode_each_row(columns: dict[str, np.ndarray]) -> list[str] | None:
    """The columnar JSON text of each row on its own, `{"a": [a_i], "b": [b_i]}` for row i: what encode_columns
    gives for each one-row slice, for all rows at once (one orjson call, then string splitting). Only for 1-D
    numeric columns of one length (at least 1); None otherwise, and the caller encodes each slice."""
    arrays = list(columns.values())
    if not arrays or any(a.ndim != 1 or a.dtype.kind not in _NUMERIC_KINDS or len(a) != len(arrays[0]) or not len(a)
                         for a in arrays):
        return None
    try:
        text = orjson.dumps(arrays, option=_NUMPY).decode()  # "[[a_0,a_1,..],[b_0,b_1,..]]": one list per column
    except TypeError:  # a dtype orjson cannot write as it is
        return None
    values = [column.split(",") for column in text[2:-2].split("],[")]  # numbers hold no comma or bracket
    template = "{" + ",".join(f"{_json_key(name)}:[%s]" for name in columns) + "}"
    return [template % row for row in zip(*values)]


def _json_key(name: str) -> str:
    return orjson.dumps(str(name)).decode().replace("%", "%%")  # literal text in a %-template


def batch_size_of(columns: dict[str, np.ndarray]) -> int:
    for array in columns.values():
        shape = np.shape(array)
        return int(shape[0]) if shape else 1
    return 0


def utc_naive(ts: datetime) -> datetime:
    if ts.tzinfo is UTC:  # the server's timestamps: no conversion needed
        return ts.replace(tzinfo=None)
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def _text(value, limit: int) -> str:
    return str(value).replace("\x00", "")[:limit]  # PostgreSQL text cannot hold NUL


def encode_row(deployment: str, revision: int, request_id: str, client_request_id: str, ts: datetime,
               features: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_ms: float) -> dict:
    """One request as one row (without id), however large. Strings are cut to fit their column."""
    return make_row(deployment, revision, request_id, client_request_id, ts, batch_size_of(features),
                    encode_columns(features), encode_columns(outputs), latency_ms, 0)


def make_row(deployment: str, revision: int, request_id: str, client_request_id: str, ts: datetime, batch_size: int,
             features_text: str, outputs_text: str, latency_ms: float, part: int) -> dict:
    latency = float(latency_ms)
    return {"deployment": _text(deployment, 63), "revision": int(revision),
            "request_id": _text(request_id, 64), "client_request_id": _text(client_request_id or "", 256),
            "ts": utc_naive(ts), "batch_size": batch_size, "features": features_text, "outputs": outputs_text,
            "latency_ms": latency if math.isfinite(latency) else -1.0, "part": part}


def row_of(r) -> dict:
    """A `serving.prediction_log.PredictionRecord` as one row (without id), however large."""
    return encode_row(r.deployment, r.revision, r.request_id, r.client_request_id, r.ts, r.features, r.outputs,
                      r.latency_ms)


def rows_of(r) -> list[dict]:
    """A `serving.prediction_log.PredictionRecord` as rows: one, or its pieces when it is too large."""
    return encode_rows(r.deployment, r.revision, r.request_id, r.client_request_id, r.ts, r.features, r.outputs,
                       r.latency_ms)


def encode_rows(deployment: str, revision: int, request_id: str, client_request_id: str, ts: datetime,
                features: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_ms: float, *,
                limit: int | None = None) -> list[dict]:
    """One request as rows (without id): one row, or pieces of at most `limit` (default MAX_PIECE_BYTES)
    bytes of features + outputs text each, when the request is larger (see the module docstring).

    A small request costs what `encode_row` costs plus two length checks: it is encoded once, and split
    only when its text turns out too long, or when it surely would be (every value takes at least two
    bytes of JSON, `0,`), in which case the whole request is never encoded in one piece. One row of a
    request that is alone over the limit stays one row (rows are not cut); so does a request whose
    arrays do not all have the same first dimension (there is no common row to cut at).
    """
    limit = MAX_PIECE_BYTES if limit is None else limit
    n = batch_size_of(features)
    if 2 * n * (len(features) + len(outputs)) <= limit:  # the hot path: may fit, encode it whole
        features_text, outputs_text = encode_columns(features), encode_columns(outputs)
        size = len(features_text) + len(outputs_text)  # characters; UTF-8 takes at most 4 bytes for one
        if 4 * size > limit:
            size = _utf8_len(features_text) + _utf8_len(outputs_text)
        if size <= limit or n < 2 or not _sliceable(n, features, outputs):
            return [make_row(deployment, revision, request_id, client_request_id, ts, n, features_text,
                             outputs_text, latency_ms, 0)]
        row_bytes = size / n
    elif not _sliceable(n, features, outputs):
        return [encode_row(deployment, revision, request_id, client_request_id, ts, features, outputs, latency_ms)]
    else:
        row_bytes = 0.0  # unknown yet: the first piece measures it
    return [make_row(deployment, revision, piece_id(request_id, part), client_request_id, ts, end - start,
                     features_text, outputs_text, latency_ms, part)
            for part, (start, end, features_text, outputs_text) in
            enumerate(_pieces(n, features, outputs, limit, row_bytes))]


def piece_id(request_id: str, part: int) -> str:
    """The request_id of a request's piece `part`: the request's own id for piece 0, `<id>.<part>` after.

    An id too long for the suffix to fit in 64 characters is replaced by a digest of it (40 hex digits),
    rather than cut: two long ids that share a beginning must not share their pieces' ids.
    """
    if part == 0:
        return request_id
    suffix = f".{part}"
    base = request_id.replace("\x00", "")
    if len(base) + len(suffix) > 64:
        base = hashlib.blake2b(base.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
    return base + suffix


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))  # isascii is O(1)


def _sliceable(n: int, features: dict, outputs: dict) -> bool:
    return all(np.ndim(a) >= 1 and np.shape(a)[0] == n for a in (*features.values(), *outputs.values()))


def _pieces(n: int, features: dict, outputs: dict, limit: int, row_bytes: float):
    """(start, end, features text, outputs text) of consecutive slices covering rows 0..n, each slice's
    text at most `limit` bytes (unless it is a single row). Each slice is sized from the bytes per row
    measured so far, aiming at 7/8 of the limit; one that comes out too long is encoded again, smaller."""
    target = limit * 7 // 8
    start = 0
    while start < n:
        if row_bytes > 0:
            count = int(target / row_bytes)
        else:  # a first guess that is small rather than too large: about 24 bytes per value at most
            count = target // (24 * sum(max(1, int(np.size(a)) // n) for a in (*features.values(), *outputs.values())))
        count = max(1, min(n - start, count))
        while True:
            end = start + count
            features_text = encode_columns({name: a[start:end] for name, a in features.items()})
            outputs_text = encode_columns({name: a[start:end] for name, a in outputs.items()})
            size = _utf8_len(features_text) + _utf8_len(outputs_text)
            if size <= limit or count == 1:
                break
            count = max(1, min(count - 1, int(count * target / size)))
        yield start, end, features_text, outputs_text
        row_bytes = size / count
        start = end


# ---- writing --------------------------------------------------------------------------------------

def insert_ignoring_duplicates(conn: sa.Connection, rows: Sequence[dict]) -> int:
    """Insert `rows` (dicts keyed by COLUMNS, `ts` naive UTC) in one statement; a (deployment,
    request_id) that is already there is skipped, so replaying a journal twice never makes a second row.

    SQLite gets multi-row `INSERT ... VALUES (..), (..) ON CONFLICT DO NOTHING` statements with plain
    parameters (an executemany would step, and let go of the GIL, once per row); PyMySQL rewrites an
    executemany into multi-row `INSERT IGNORE ... VALUES (..), (..)` statements. pg8000 would send one
    round trip per row, so PostgreSQL gets the batch as one JSON parameter, expanded server-side by
    json_to_recordset (about ten times less Python per row than a multi-row VALUES).
    Returns the number of rows actually inserted (duplicates excluded), as the driver reports it.

    Statement sizes, with rows of up to MAX_PIECE_BYTES of text each (checked in PyMySQL 2.2 and
    SQLAlchemy 2.1): SQLAlchemy hands a MySQL executemany without RETURNING to the driver as it is
    (no "insertmanyvalues" for MySQL then), and PyMySQL starts a new statement whenever the next row
    would take the current one past Cursor.max_stmt_length (1,024,000 bytes), so a statement is about
    1 MB, or one big row alone. PostgreSQL's JSON parameter is cut at _PG_STATEMENT_BYTES of row text.
    SQLite binds each value separately (SQLITE_MAX_LENGTH, 1e9 bytes, is per value, not per statement).
    """
    if not rows:
        return 0
    name = conn.dialect.name
    if name == "postgresql":
        inserted = 0
        for chunk in _chunks_of_text(rows, _PG_STATEMENT_BYTES):
            inserted += max(conn.execute(_PG_INSERT, {"batch": orjson.dumps(chunk).decode()}).rowcount, 0)
        return inserted
    elif name == "sqlite":
        return _sqlite_insert(conn, rows)
    elif name in ("mysql", "mariadb"):
        result = conn.execute(_MYSQL_INSERT, list(rows))
    else:
        raise NotImplementedError(f"prediction log: unsupported database {name!r} (sqlite, mysql, postgresql)")
    return max(result.rowcount, 0)


def _chunks_of_text(rows: Sequence[dict], limit: int) -> Iterator[list[dict]]:
    """`rows` in consecutive chunks of at most `limit` characters of features + outputs (at least one row
    each). The common batch of small rows is one chunk."""
    chunk, size = [], 0
    for row in rows:
        length = len(row["features"]) + len(row["outputs"])
        if chunk and size + length > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += length
    if chunk:
        yield chunk


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


_SQLITE_CHUNK = 999 // len(COLUMNS)  # rows per statement: parameters under SQLite's oldest limit of 999
# Row text per PostgreSQL statement. orjson escapes the JSON text inside the batch's JSON (`"` -> `\"`), at
# worst doubling it, and characters may take up to 4 bytes: still far from PostgreSQL's 1 GiB per value,
# and a bounded amount of memory for the server to parse at once. A single larger row goes alone.
_PG_STATEMENT_BYTES = 32 * 1024 * 1024
_TS_FROM_END = COLUMNS.index("ts") - len(COLUMNS)
_MYSQL_INSERT = sa.insert(predictions).prefix_with("IGNORE")
_PG_INSERT = _pg_insert()


# ---- reading --------------------------------------------------------------------------------------

def count_predictions(engine: sa.Engine, deployment: str) -> int:
    """Requests logged for `deployment` (a request stored in pieces counts once: its part 0)."""
    with engine.connect() as conn:
        query = (sa.select(sa.func.count()).select_from(predictions)
                 .where(predictions.c.deployment == deployment, predictions.c.part == 0))
        return int(conn.execute(query).scalar_one())


def count_rows(engine: sa.Engine, deployment: str) -> int:
    """Rows of the requests logged for `deployment`: the sum of batch_size over every row and piece."""
    with engine.connect() as conn:
        query = (sa.select(sa.func.coalesce(sa.func.sum(predictions.c.batch_size), 0))
                 .where(predictions.c.deployment == deployment))
        return int(conn.execute(query).scalar_one())


def read_predictions(engine: sa.Engine, deployment: str, *, since: datetime | None = None,
                     after_id: int | None = None, limit: int | None = None) -> list[dict]:
    """Rows of one deployment in id order, with `features`/`outputs` decoded and `ts` as aware UTC.
    `since` filters on ts (>=); `after_id` lets a reader resume from a watermark.

    A large request comes as several rows, its pieces (see the module docstring): part 0 with the
    request's id R, then parts 1, 2, ... with ids R.1, R.2, ..., written in that order (other requests'
    rows may come between them). Count requests as rows with part 0, rows of data by batch_size."""
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
