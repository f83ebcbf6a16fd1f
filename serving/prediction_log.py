"""The prediction log writer: every ModelInfer request becomes a row in `predictions`, nothing is lost.

`log()` runs on the request path: it only samples and appends an entry to a bounded in-memory queue. An
entry is one request (`PredictionRecord`) or, as the server logs them, one model call's requests
(`PredictionBatch`). A background thread turns queued entries into rows (all JSON encoding happens
there; a request too large for one row becomes several "pieces", see `modelrun.db.predictions`) and
writes about `batch_rows` requests at a time as multi-row INSERTs in one transaction (group commit).
When the database fails, the failed batch and every later one go to a local journal (JSON
lines, fsync'd per batch) while the thread probes the database with backoff; when it answers again the
journal is replayed in chunks and the replayed files are deleted. Inserts skip an existing (deployment,
request_id), so a replay that is interrupted or repeated never makes a second row. A full queue spills
entries to the journal from `log()` itself rather than block. Journals left by an earlier process are
replayed after `start()`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from random import random

import numpy as np
import sqlalchemy as sa

from modelrun.db import create_schema, make_engine
from modelrun.db.cloudsql import CloudSql
from modelrun.db.predictions import (encode_columns, encode_each_row, encode_rows, insert_ignoring_duplicates,
                                     make_row, predictions, rows_of)
from modelrun.errors import ModelrunError
from serving.prediction_journal import Journal, read_rows
from serving.remote_journal import RemoteJournal

log = logging.getLogger("modelrun.predictions")

_PROBE_FIRST, _PROBE_MAX = 0.2, 3.0  # seconds between database probes while it is down (doubling)
_IO_TIMEOUT = 5.0  # a batch INSERT the database has not answered by then counts as a failure
_CLOSE_RESERVE = 1.0  # of close()'s timeout, kept for journaling what the database did not take
_REMOTE_SECONDS = 1.5  # for uploading the journal at shutdown (Cloud Run's 10 s after SIGTERM are nearly up)


@dataclass
class PredictionRecord:
    """One request, with an id of the caller's choosing."""

    deployment: str
    revision: int
    request_id: str  # unique per deployment
    client_request_id: str  # the gRPC request's `id`, may be ""
    ts: datetime  # UTC, when the request arrived
    features: dict[str, np.ndarray]  # input features by feature name; must not be mutated after log()
    outputs: dict[str, np.ndarray]
    latency_ms: float

    size = 1  # requests

    def rows(self) -> list[dict]:
        return rows_of(self)


# Request ids (40 hex digits): this process's prefix (start time in seconds, then 64 random bits), the
# batch's sequence number, the request's index in it. Unique across processes, and increasing within one, so the unique index
# on (deployment, request_id) grows at its end instead of at random places.
_ID_PREFIX = f"{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"
_batch_numbers = itertools.count()


@dataclass
class PredictionBatch:
    """The requests of one model call: their inputs and outputs stacked, rows in request order."""

    deployment: str
    revision: int
    features: dict[str, np.ndarray]  # by feature name; must not be mutated after log()
    outputs: dict[str, np.ndarray]
    requests: list[tuple[str, datetime, float, int]]  # (client request id, arrival UTC, latency ms, rows)
    number: int = field(default_factory=_batch_numbers.__next__)  # taken at creation: a retry keeps its ids
    kept: list[bool] | None = None  # per request, when sampling: whether it is logged

    @property
    def size(self) -> int:  # requests
        return len(self.requests)

    def rows(self) -> list[dict]:
        prefix = f"{_ID_PREFIX}{self.number:012x}"
        if len(self.requests) == 1:  # the arrays are the request's own, whatever their first dimensions
            (client_id, arrived, latency, _), = self.requests
            if self.kept is not None and not self.kept[0]:
                return []
            return encode_rows(self.deployment, self.revision, f"{prefix}0000", client_id, arrived,
                               self.features, self.outputs, latency)
        if self.kept is None and all(count == 1 for *_, count in self.requests):
            return self._one_row_each(prefix)
        rows, start = [], 0
        features, outputs = self.features.items(), self.outputs.items()
        for index, (client_id, arrived, latency, count) in enumerate(self.requests):
            end = start + count
            if self.kept is not None and not self.kept[index]:
                start = end
                continue
            rows.extend(encode_rows(self.deployment, self.revision, f"{prefix}{index:04x}", client_id, arrived,
                                    {name: array[start:end] for name, array in features},
                                    {name: array[start:end] for name, array in outputs}, latency))
            start = end
        return rows

    def _one_row_each(self, prefix: str) -> list[dict]:
        """Rows of requests of one row each (the usual traffic), their texts encoded for the whole call at once."""
        n = len(self.requests)
        features = encode_each_row(self.features) or _each_slice(self.features, n)
        outputs = encode_each_row(self.outputs) or _each_slice(self.outputs, n)
        return [make_row(self.deployment, self.revision, f"{prefix}{index:04x}", client_id, arrived, 1,
                         features_text, outputs_text, latency, 0)
                for index, ((client_id, arrived, latency, _), features_text, outputs_text)
                in enumerate(zip(self.requests, features, outputs))]


def _each_slice(columns: dict[str, np.ndarray], n: int) -> list[str]:
    return [encode_columns({name: array[i:i + 1] for name, array in columns.items()}) for i in range(n)]


def _sample(entry: PredictionRecord | PredictionBatch, rate: float) -> bool:
    """Keep each request with probability `rate`; False when none of the entry's is kept."""
    if isinstance(entry, PredictionRecord):
        return random() < rate
    entry.kept = [random() < rate for _ in entry.requests]
    return any(entry.kept)


def _rows(entries) -> list[dict]:
    rows = []
    for entry in entries:
        try:
            rows.extend(entry.rows())
        except Exception:  # one unencodable entry must not sink its batch
            log.exception("prediction log: dropping an entry that cannot be encoded (%s)", _describe(entry))
    return rows


def _describe(entry: PredictionRecord | PredictionBatch) -> str:
    if isinstance(entry, PredictionRecord):
        return f"request {entry.request_id}"
    return f"{entry.size} requests of one model call"


class PredictionLogger:
    def __init__(self, database_url: str, deployment: str, *, sample_rate: float = 1.0, journal_dir: Path,
                 queue_size: int = 10000, batch_rows: int = 500, flush_interval: float = 0.05,
                 cloudsql: CloudSql | None = None, remote_journal: RemoteJournal | None = None):
        """`queue_size` counts entries (so up to queue_size x max batch size requests) held in memory before
        log() spills to the journal; `batch_rows` is about how many rows one transaction writes; `cloudsql`
        reaches the database through the Cloud SQL connector (see `make_engine`); `remote_journal` keeps the
        journal in Cloud Storage when the process stops, and replays what earlier instances kept there."""
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate}")
        self.deployment = deployment
        self._url, self._cloudsql, self._sample_rate = database_url, cloudsql, sample_rate
        self._queue_size, self._batch_rows, self._flush_interval = queue_size, max(1, batch_rows), flush_interval
        self._queue: deque[PredictionRecord] = deque()
        self._wake = threading.Event()
        self._engine: sa.Engine | None = None
        prefix = f"predictions-{deployment}."  # "." is in no deployment name: "a." never matches "a-b."
        self._journal_dir = Path(journal_dir)
        self._journal = Journal(self._journal_dir, prefix)  # the writer thread's, for batches
        self._spill = Journal(self._journal_dir, prefix)  # log()'s and close()'s, when the queue is full
        self._rejected = Journal(self._journal_dir, f"rejected-{deployment}.")  # rows the database refused
        self._thread: threading.Thread | None = None
        # The writer moves records from the queue to `_inflight` under `_handoff`; a close() that times
        # out takes both under the same lock and journals them itself.
        self._handoff = threading.Lock()
        self._inflight: list[PredictionRecord] = []
        self._abandoned = self._stopping = self._closed = False
        self._down_since: float | None = None
        self._kept_before = 0
        self._next_probe, self._backoff = 0.0, _PROBE_FIRST
        self._replay_needed = True
        self._remote, self._remote_pending = remote_journal, remote_journal is not None
        self._replayed = {"files": 0, "rows": 0, "new": 0, "bad": 0}
        self._quiet_until = 0.0
        self.counts = {"written": 0, "journaled": 0, "spilled": 0, "rejected": 0}

    # ---- the request path --------------------------------------------------------------------------

    def log(self, record: PredictionRecord | PredictionBatch) -> None:
        try:
            if self._sample_rate < 1.0 and not _sample(record, self._sample_rate):
                return
            queue = self._queue
            if len(queue) < self._queue_size and not self._closed:
                queue.append(record)
                if len(queue) >= self._batch_rows:
                    self._wake.set()
            else:  # overloaded or closed: never block, never drop
                self._spill.append(_rows([record]), sync=self._closed)
                self.counts["spilled"] += 1
                if self._closed:
                    self._spill.rotate()  # unlocked, so the next process replays it even while this one lives
        except Exception:
            self._complain(f"prediction log: lost an entry ({_describe(record)})")

    def _complain(self, message: str) -> None:
        """log.exception, at most once a minute (a full disk must not flood the log)."""
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + 60.0
            log.exception(message)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the table if missing (when the database answers) and start the writer thread, which
        first replays journals left by earlier runs."""
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        self._engine = make_engine(self._url, connect_timeout=2.0, io_timeout=_IO_TIMEOUT, cloudsql=self._cloudsql)
        try:
            create_schema(self._engine)
        except Exception as error:
            self._went_down(error)
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{self.deployment}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 8.0) -> None:
        """Write everything still queued to the database, or to the journal when the database cannot
        take it within `timeout` seconds. Records logged afterwards go straight to the journal."""
        if self._closed:
            return
        self._closed = self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout - _CLOSE_RESERVE))
        with self._handoff:
            self._abandoned = True
            leftovers = self._inflight + [self._queue.popleft() for _ in range(len(self._queue))]
            self._inflight = []
        if leftovers:
            self._spill.append(_rows(leftovers), sync=True)
            log.warning("prediction log: database did not take %d rows within %.1fs of shutdown; kept them in "
                        "the journal %s", len(leftovers), timeout, self._journal_dir)
        self._spill.close()
        if thread is None or not thread.is_alive():
            self._journal.close()
        self._keep_remotely()
        log.info("prediction log closed: %(written)d rows written, %(journaled)d journaled, %(spilled)d spilled "
                 "from a full queue, %(rejected)d refused", self.counts)
        if (thread is None or not thread.is_alive()) and self._engine is not None:  # a stuck writer still
            self._engine.dispose()  # owns its journal and its connection

    def _keep_remotely(self) -> None:
        """The instance's disk goes with it: journal files still here go to Cloud Storage."""
        files = sorted(self._journal_dir.glob(f"{self._journal.prefix}*.jsonl"))
        if self._remote is None or not files:
            return
        kept = self._remote.upload(files, seconds=_REMOTE_SECONDS)
        log.warning("prediction log: kept %d journal file(s) in gs://%s/%s for the next instance to replay",
                    kept, self._remote.bucket, self._remote.prefix)

    # ---- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._abandoned:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                if not self._drain():
                    return
                self._spill.sync()
                if self._stopping:
                    self._report_replay()
                    return
                self._maintain()
            except Exception:
                self._complain("prediction log: writer error; rows stay queued and are retried")
                time.sleep(max(self._flush_interval, 0.5))

    def _drain(self) -> bool:
        """Write out the queue batch by batch. False when close() has taken over."""
        while True:
            with self._handoff:
                if self._abandoned:
                    return False
                queue, batch, requests = self._queue, [], 0
                while queue and requests < self._batch_rows:  # about batch_rows rows per transaction
                    batch.append(queue.popleft())
                    requests += batch[-1].size
                self._inflight = batch
            if not batch:
                return True
            try:
                self._write(_rows(batch))
            except Exception:  # neither database nor journal took them (disk full?): keep them, retry later
                with self._handoff:
                    if not self._abandoned:
                        self._queue.extendleft(reversed(self._inflight))
                    self._inflight = []
                raise
            with self._handoff:
                self._inflight = []

    def _write(self, rows: list[dict]) -> None:
        if self._down_since is None:
            try:
                self.counts["written"] += self._insert(rows)
                return
            except Exception as error:
                self._went_down(error)
        if self._abandoned:
            return  # close() gave up on us and journaled this batch itself
        self._journal.append(rows, sync=True)
        self.counts["journaled"] += len(rows)

    def _insert(self, rows: list[dict]) -> int:
        """Insert a batch; raises only when the database is unreachable. When it answers but refuses the
        batch, each half is tried on its own, down to the single rows it refuses, which are set aside
        (a poison row must not turn into an endless outage)."""
        try:
            with self._engine.begin() as conn:
                return insert_ignoring_duplicates(conn, rows)
        except Exception as error:
            if not self._reachable():
                raise
            if len(rows) > 1:
                half = len(rows) // 2
                return self._insert(rows[:half]) + self._insert(rows[half:])
            self._rejected.append(rows, sync=True)
            self._rejected.rotate()
            self.counts["rejected"] += 1
            log.error("prediction log: the database refused the row of request %s (kept in %s): %s",
                      rows[0]["request_id"], self._journal_dir, str(error).splitlines()[0])
            return 0

    def _reachable(self) -> bool:
        """Can we write to the table right now? (A write, so a locked SQLite file does not count.)"""
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(predictions).where(sa.false()))
            return True
        except Exception:
            return False

    def _went_down(self, error: Exception) -> None:
        if self._down_since is None:
            log.warning("prediction log: database unreachable (%s); keeping rows in the journal %s until it "
                        "returns", str(error).splitlines()[0] if str(error) else type(error).__name__,
                        self._journal_dir)
            self._down_since = time.monotonic()
            self._kept_before = self.counts["journaled"] + self.counts["spilled"]
        self._backoff = _PROBE_FIRST
        self._next_probe = time.monotonic() + self._backoff
        if self._engine is not None:
            self._engine.dispose()  # pooled connections to a failed server are useless

    def _maintain(self) -> None:
        """While down: probe with backoff. While up: replay one journal file per call, so live rows
        keep flowing between files."""
        if self._down_since is not None:
            if time.monotonic() >= self._next_probe:
                self._probe()
            return
        if self._spill.rows and len(self._queue) < self._batch_rows:
            self._spill.rotate()
            self._replay_needed = True
        if self._replay_needed:
            self._replay_next_file()

    def _probe(self) -> None:
        try:
            create_schema(self._engine)
            reachable = self._reachable()
        except Exception:
            reachable = False
        if not reachable:
            self._backoff = min(self._backoff * 2, _PROBE_MAX)
            self._next_probe = time.monotonic() + self._backoff
            return
        kept = self.counts["journaled"] + self.counts["spilled"] - self._kept_before
        log.warning("prediction log: database is back after %.1fs (%d rows journaled meanwhile); replaying the "
                    "journal", time.monotonic() - self._down_since, kept)
        self._down_since = None
        self._journal.rotate()
        self._replay_needed = True

    def _replay_next_file(self) -> None:
        for path in sorted(self._journal_dir.glob(f"{self._journal.prefix}*.jsonl")):
            try:
                result = read_rows(path, self._batch_rows, self._replay_chunk)
            except Exception as error:
                self._went_down(error)
                return
            if result is not None:  # None: a live process owns it, or it is gone
                rows, bad = result
                self._replayed["files"] += 1
                self._replayed["rows"] += rows
                self._replayed["bad"] += bad
                return
        if self._remote_pending:
            self._remote_pending = False  # once per start; the control plane replays what comes later
            self._replay_remote()
        self._replay_needed = False
        self._report_replay()

    def _replay_remote(self) -> None:
        try:
            objects, rows = self._remote.replay(self._replay_chunk, self._batch_rows)
        except ModelrunError as error:  # Cloud Storage: the control plane's reconciler replays it later
            log.warning("prediction log: could not replay the journal kept in gs://%s/%s: %s", self._remote.bucket,
                        self._remote.prefix, error.message)
            return
        except Exception as error:  # the database: try again once it is back
            self._remote_pending = True
            self._went_down(error)
            return
        self._replayed["files"] += objects
        self._replayed["rows"] += rows

    def _report_replay(self) -> None:
        done, self._replayed = self._replayed, {"files": 0, "rows": 0, "new": 0, "bad": 0}
        if done["files"]:
            log.warning("prediction log: replayed %d rows from %d journal file(s) into the database (%d new, "
                        "%d already there%s)", done["rows"], done["files"], done["new"], done["rows"] - done["new"],
                        f", {done['bad']} unreadable lines skipped" if done["bad"] else "")

    def _replay_chunk(self, rows: list[dict]) -> None:
        self._replayed["new"] += self._insert(rows)
