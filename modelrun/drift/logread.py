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
from itertools import chain
from operator import itemgetter

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa

from modelrun.db.predictions import predictions
from modelrun.drift.aggregate import priorities
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


def read_pages(engine: sa.Engine, after_id: int, *, chunk_rows: int = CHUNK_ROWS, counted=None) -> Iterator[Page]:
    """Pages of the log rows with id > after_id (every deployment), in id order, by the primary key.
    `counted(ids)` may return a boolean mask of rows counted already; they are left out."""
    p = predictions
    last = after_id
    while True:
        with engine.connect() as conn:
            ts = sa.type_coerce(p.c.ts, sa.String) if conn.dialect.name == "sqlite" else p.c.ts
            query = (sa.select(p.c.id, p.c.revision, ts.label("ts"), p.c.batch_size, p.c.features, p.c.outputs,
                               p.c.deployment).where(p.c.id > last).order_by(p.c.id).limit(chunk_rows))
            rows = conn.execute(query).all()
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
    features = orjson.loads("[" + ",".join(r[4] for r in rows) + "]")
    outputs = orjson.loads("[" + ",".join(r[5] for r in rows) + "]")
    per_value = np.repeat(np.arange(count), batch)
    starts = np.cumsum(batch) - batch
    index = np.arange(len(per_value)) - np.repeat(starts, batch)
    columns = _columns(features, batch, "")
    columns.update(_columns(outputs, batch, OUTPUT_PREFIX))
    return Chunk(row_id=ids[per_value], revision=revisions[per_value], ts=stamps[per_value],
                 prio=priorities(ids[per_value], index), columns=columns)


def _columns(docs: list[dict], batch: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    if not docs:
        return {}
    total = int(batch.sum())
    first = tuple(docs[0])
    if all(tuple(doc) == first for doc in docs):  # one writer: the same keys in the same order
        flat = {name: list(chain.from_iterable(values)) for name, values in zip(first, zip(*(d.values() for d in docs)))}
        names = first
    else:
        names = tuple(dict.fromkeys(first)) + tuple(sorted(set().union(*docs) - set(first)))
        flat = {}
    columns = {}
    for name in names:
        values = flat.get(name)
        if values is None or len(values) != total:
            values = _flat(docs, name, batch)
        array = _array(values)
        if array.ndim == 2:  # several values per row (an output of shape [n, k])
            for i in range(array.shape[1]):
                columns[f"{prefix}{name}[{i}]"] = np.ascontiguousarray(array[:, i])
        else:
            columns[prefix + name] = array
    return columns


def _flat(docs: list[dict], name: str, batch: np.ndarray) -> list:
    """Every row's values of one column, in order; a request without the column gives None per row."""
    try:
        values = list(chain.from_iterable(map(itemgetter(name), docs)))
        if len(values) == int(batch.sum()):
            return values
    except (KeyError, TypeError):
        pass
    values = []
    for doc, size in zip(docs, batch.tolist()):
        got = doc.get(name)
        if isinstance(got, list) and len(got) == size:
            values.extend(got)
        else:  # absent, or a scalar (rank-0) input
            values.extend([got if not isinstance(got, list) else None] * size)
    return values


def _array(values: list) -> np.ndarray:
    try:
        array = np.array(values, dtype=np.float64)
        if array.ndim <= 2:
            return array
    except (TypeError, ValueError):
        pass
    if values and isinstance(values[0], str):
        try:
            return pd.Categorical(values)  # hashed once here; windows then count codes
        except TypeError:  # strings mixed with numbers: no order for the categories
            pass
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
