"""The prediction log's local journal: rows the database could not take yet, as JSON lines.

Each `Journal` appends to one file at a time, named `<prefix><pid>-<ns>-<n>.jsonl` in its folder, and
holds an exclusive flock on it while it is open. `read_rows` only reads files it can lock, so a
replayer never touches a file another live process is still writing; a process that dies releases
its locks, and its files are replayed by whoever comes next. Files are rotated after `max_rows` rows,
which keeps each replay step short.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson

_sequence = itertools.count()


class Journal:
    def __init__(self, directory: Path, prefix: str, *, max_rows: int = 5000):
        self.directory, self.prefix, self._max_rows = Path(directory), prefix, max_rows
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.rows = 0  # rows in the open file

    def append(self, rows: list[dict], *, sync: bool) -> None:
        """Append rows (dicts with a datetime `ts`); with `sync`, fsync before returning."""
        if not rows:
            return
        data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(self._fd, view):]
            self.rows += len(rows)
            if sync:
                os.fsync(self._fd)
            if self.rows >= self._max_rows:
                self._close_locked()

    def sync(self) -> None:
        """fsync what was appended without `sync`, without holding up appenders during the fsync."""
        with self._lock:
            if self._fd is None:
                return
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rotate(self) -> None:
        """Close the current file (releasing its lock, so it can be replayed); the next append opens a new one."""
        with self._lock:
            self._close_locked()

    close = rotate

    def _close_locked(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)  # releases the flock
            self._fd, self.rows = None, 0

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.directory / f"{self.prefix}{os.getpid()}-{time.time_ns()}-{next(_sequence)}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A replayer may have taken the empty file between our create and our lock, and deleted it.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name survives a machine crash too
        finally:
            os.close(dir_fd)
        return fd


def _parse(line: bytes) -> dict:
    row = orjson.loads(line)
    row["ts"] = datetime.fromisoformat(row["ts"])
    row.setdefault("part", 0)  # journaled before requests came in pieces: a whole request
    return row


# Journal text handed to one `insert` call at most (unless one line is larger): rows may be pieces of
# up to MAX_PIECE_BYTES each, and `chunk` of those at once would be gigabytes of memory.
CHUNK_BYTES = 64 * 1024 * 1024


def read_rows(path: Path, chunk: int, insert: Callable[[list[dict]], None]) -> tuple[int, int] | None:
    """Feed the rows of one journal file to `insert` in chunks (of `chunk` rows or CHUNK_BYTES of text),
    then delete the file.

    Returns (rows, unreadable lines), or None when the file is gone or a live process holds it. An
    exception from `insert` leaves the file in place for the next attempt. The last line of a file
    whose writer died mid-write may be cut short: such lines are counted and skipped.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        if os.fstat(handle.fileno()).st_nlink == 0:  # another replayer finished it first
            return None
        total = bad = size = 0
        rows: list[dict] = []
        for line in handle:
            try:
                rows.append(_parse(line))
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            size += len(line)
            if len(rows) >= chunk or size >= CHUNK_BYTES:
                insert(rows)
                total, rows, size = total + len(rows), [], 0
        if rows:
            insert(rows)
            total += len(rows)
        path.unlink(missing_ok=True)
    return total, bad
