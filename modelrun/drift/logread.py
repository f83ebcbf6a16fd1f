"""Reading the prediction log for drift: rows past an id, in chunks, as columns of values.

A log row is one request (or one piece of a large one): `batch_size` rows of features and outputs as
columnar JSON. A `Chunk` flattens a page of log rows into value rows: per column one array (float64
when every value is a number, else objects), and per value row its log row id, revision, arrival time
and reservoir priority. Output columns are keyed `output:<name>`; an output with several values per row
becomes `output:<name>[i]` columns.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from modelrun.db.predictions import predictions
from modelrun.drift.aggregate import priorities
from modelrun.drift.logdecode import columns_of
from modelrun.drift.profile import OUTPUT_PREFIX

CHUNK_ROWS = 20_000  # log rows per page: bounded memory whatever the traffic


@dataclass
class Chunk:
    """The value rows of one deployment in one page of the log."""

    row_id: np.ndarray  # per value row: its log row's id
    revision: np.ndarray
    ts: np.ndarray  # datetime64[us], naive UTC
    prio: np.ndarray
    columns: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.row_id)


@dataclass
class Page:
    ids: np.ndarray  # every log row id read in this page, counted or not
    chunks: dict[str, Chunk]  # by deployment


def read_pages(engine: sa.Engine, after_id: int, *, chunk_rows: int = CHUNK_ROWS, counted=None,
               only: tuple[str, int] | None = None, until_id: int | None = None) -> Iterator[Page]:
    """Pages of the log rows with id > after_id (every deployment, or `only` one (deployment, revision);
    up to `until_id`), in id order, by the primary key. `counted(ids)` may return a boolean mask of rows
    to leave out."""
    last = after_id
    while True:
        rows = fetch_page(engine, last, chunk_rows, only, until_id)
        if not rows:
            return
        last, full = rows[-1][0], len(rows) == chunk_rows
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        done = counted(ids) if counted is not None else None
        groups: dict[str, list] = {}
        for index, row in enumerate(rows):
            if done is None or not done[index]:
                groups.setdefault(row[6], []).append(row)
        with _no_gc():
            chunks = {name: decode(group) for name, group in groups.items()}
        yield Page(ids=ids if done is None else ids[~done], chunks=chunks)
        if not full:
            return


def fetch_page(engine: sa.Engine, after_id: int, limit: int, only: tuple[str, int] | None = None,
           until_id: int | None = None) -> list[tuple]:
    """One page as plain tuples from the driver's own cursor: SQLAlchemy's row objects would cost as much as
    reading the rows. The bounds are integers and names are DNS labels, so they are written into the statement."""
    p = predictions
    with engine.connect() as conn:
        ts = sa.type_coerce(p.c.ts, sa.String) if conn.dialect.name == "sqlite" else p.c.ts
        query = (sa.select(p.c.id, p.c.revision, ts.label("ts"), p.c.batch_size, p.c.features, p.c.outputs,
                           p.c.deployment).where(p.c.id > int(after_id)).order_by(p.c.id).limit(int(limit)))
        if only is not None:
            query = query.where((p.c.deployment == only[0]) & (p.c.revision == int(only[1])))
        if until_id is not None:
            query = query.where(p.c.id <= int(until_id))
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchall()
        finally:
            cursor.close()


@contextlib.contextmanager
def _no_gc():
    """Decoding a page makes millions of small lists and floats that are all freed by reference counting;
    the cyclic collector would walk every live object again and again meanwhile (half the time spent)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode(rows) -> Chunk:
    """Log rows (id, revision, ts, batch_size, features JSON, outputs JSON) → one Chunk."""
    count = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=count)
    batch = np.fromiter((r[3] for r in rows), dtype=np.int64, count=count)
    revisions = np.fromiter((r[1] for r in rows), dtype=np.int64, count=count)
    stamps = np.array([r[2] for r in rows], dtype="datetime64[us]")
    per_value = np.repeat(np.arange(count), batch)
    starts = np.cumsum(batch) - batch
    index = np.arange(len(per_value)) - np.repeat(starts, batch)
    columns = columns_of([r[4] for r in rows], batch, "")
    columns.update(columns_of([r[5] for r in rows], batch, OUTPUT_PREFIX))
    return Chunk(row_id=ids[per_value], revision=revisions[per_value], ts=stamps[per_value],
                 prio=priorities(ids[per_value], index), columns=columns)
