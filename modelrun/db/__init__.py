"""SQL for every modelrun program: one pooled SQLAlchemy engine per process, one shared MetaData.

The tables live in their own modules (`predictions`, and the control plane's) and register on
`metadata`; `create_schema` creates whatever is missing (tables, and columns added to a table since it
was created: `migrate`) and is safe to run from many processes. Cloud SQL is reached through its connector
(`cloudsql`), chosen by passing `make_engine` a `CloudSql`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from modelrun.db.cloudsql import CloudSql

metadata = sa.MetaData()
log = logging.getLogger("modelrun.db")

# Drivers we ship; a bare dialect in a URL gets ours.
_DEFAULT_DRIVERS = {"mysql": "mysql+pymysql", "mariadb": "mysql+pymysql", "postgresql": "postgresql+pg8000"}


def normalize_url(url: str) -> sa.URL:
    parsed = make_url(url)
    if parsed.drivername in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=_DEFAULT_DRIVERS[parsed.drivername])
    return parsed


def make_engine(url: str, *, connect_timeout: float = 3.0, io_timeout: float = 30.0,
                cloudsql: CloudSql | None = None) -> sa.Engine:
    """A pooled engine with short timeouts, so a database that is down fails fast instead of hanging.

    `connect_timeout` bounds connecting (and, on SQLite, waiting for another writer's lock);
    `io_timeout` bounds waiting for the server's answer to one statement on MySQL and PostgreSQL.
    With `cloudsql`, connections go through the Cloud SQL connector and `url` names no host
    (InvalidInput otherwise).
    """
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict = {"pool_pre_ping": True}
    if cloudsql is not None:
        kwargs = cloudsql.engine_options(parsed, connect_timeout=connect_timeout, io_timeout=io_timeout)
    elif backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": connect_timeout}
    elif backend == "mysql":
        seconds, io_seconds = max(1, int(connect_timeout)), max(1, math.ceil(io_timeout))
        kwargs["connect_args"] = {"connect_timeout": seconds, "read_timeout": io_seconds, "write_timeout": io_seconds}
        kwargs["pool_recycle"] = 1800
    elif backend == "postgresql":
        kwargs["connect_args"] = {"timeout": max(1, int(connect_timeout))}
        kwargs["pool_recycle"] = 1800
    engine = sa.create_engine(parsed, **kwargs)
    if backend == "sqlite":
        busy_ms = max(1, int(connect_timeout * 1000))
        sa.event.listen(engine, "connect", lambda dbapi_connection, _record: _sqlite_pragmas(dbapi_connection, busy_ms))
    elif backend == "postgresql":
        sa.event.listen(engine, "connect", lambda dbapi_connection, _record: _pg_io_timeout(dbapi_connection, io_timeout))
    return engine


def _pg_io_timeout(dbapi_connection, seconds: float) -> None:
    # pg8000 keeps its connect `timeout` on the socket for every later read, which would fail any
    # statement slower than connect_timeout; give statements io_timeout instead.
    sock = getattr(dbapi_connection, "_usock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _sqlite_pragmas(dbapi_connection, busy_ms: int) -> None:
    # WAL lets the control plane read while model servers write; busy_timeout waits for a writer
    # instead of failing at once, as long as `connect_timeout` (a fixed value here would override it).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


@contextlib.contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """`engine.begin()` for a transaction that writes. On SQLite it takes the write lock up front
    (BEGIN IMMEDIATE): a deferred transaction that reads and then writes can be refused at once when another
    writer holds the lock (upgrading could deadlock, so SQLite does not wait), where this one waits its turn
    for up to the busy timeout. Other databases lock rows as they go."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def create_schema(engine: sa.Engine) -> None:
    """Create missing tables, then add missing columns to existing ones (`migrate`). Two processes
    racing here is fine: the loser sees the tables and columns exist."""
    for attempt in range(5):  # each attempt creates what is still missing; a racer may take a table first
        try:
            metadata.create_all(engine, checkfirst=True)
            break
        except sa.exc.DatabaseError:
            if attempt == 4:
                raise
    migrate(engine)


def migrate(engine: sa.Engine) -> list[str]:
    """Add the columns a table created by an earlier version lacks, with ALTER TABLE ... ADD COLUMN, on
    SQLite, MySQL/MariaDB and PostgreSQL. Returns the `table.column`s this call added.

    Only additive changes: a new column must be nullable or have a server default (existing rows get it);
    one that is neither is logged as an error and left out.
    Each is cheap on a large table: SQLite only rewrites the schema text, MariaDB 10.3+ / MySQL 8.0.12+
    add a last column instantly, PostgreSQL 11+ stores a constant default without rewriting rows.
    Idempotent; when another process adds the same column first, our ALTER fails, we look again, and
    the column being there is success.
    """
    missing = []
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        existing = set(inspector.get_table_names())
        for table in metadata.sorted_tables:
            if table.name in existing:
                present = {column["name"] for column in inspector.get_columns(table.name)}
                missing += [(table, column) for column in table.columns if column.name not in present]
    return [f"{table.name}.{column.name}" for table, column in missing if _add_column(engine, table, column)]


def _add_column(engine: sa.Engine, table: sa.Table, column: sa.Column) -> bool:
    """ALTER TABLE ADD COLUMN; True when this call added it, False when someone else had."""
    if not column.nullable and column.server_default is None:
        log.error("cannot add %s.%s to the existing table: NOT NULL without a server default (a schema change "
                  "this function does not make)", table.name, column.name)
        return False
    preparer = engine.dialect.identifier_preparer
    ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
    try:
        with engine.begin() as conn:  # its own transaction: PostgreSQL's DDL is transactional
            conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {ddl}")
        return True
    except sa.exc.DatabaseError:
        with engine.connect() as conn:
            if column.name in {c["name"] for c in sa.inspect(conn).get_columns(table.name)}:
                return False  # a racing process added it
        raise
