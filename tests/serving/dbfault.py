"""Take a database "down" for real: a TCP proxy in front of it, and an exclusive lock on a SQLite file.

`Outage` wraps both for any test database URL. `FaultProxy` listens on a free loopback port and forwards to the database server. `refuse()` resets
every open connection and every new one (the server looks gone); `blackhole()` accepts connections
and swallows their bytes (the server looks hung); `restore()` forwards again.
"""

from __future__ import annotations

import socket
import sqlite3
import struct
import threading
from contextlib import contextmanager

import sqlalchemy as sa

FORWARD, REFUSE, BLACKHOLE = "forward", "refuse", "blackhole"


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN, as a crashed server's kernel would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _cut(sock: socket.socket) -> None:
    """End a connection another thread may be blocked reading. close() alone would not: the kernel
    keeps the connection open until that read returns, so the database would never learn that its
    client is gone (and would keep the client's transaction and locks)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked reader, which then closes (with an RST)
    except OSError:
        pass


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.mode = FORWARD
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, ...]] = []  # (client, server), or (client,) when held
        self._closed = False
        threading.Thread(target=self._accept, name="dbfault-accept", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> tuple[FaultProxy, str]:
        """A proxy in front of the server of `url`, and the same URL pointed at the proxy."""
        parsed = sa.make_url(url)
        proxy = cls(parsed.host or "127.0.0.1", parsed.port)
        return proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    def refuse(self) -> None:
        with self._lock:
            self.mode = REFUSE
        self._drop_all()

    def blackhole(self) -> None:
        self.mode = BLACKHOLE

    def restore(self) -> None:
        self._drop_all()  # connections that lived through a blackhole have lost bytes: start clean
        self.mode = FORWARD

    def close(self) -> None:
        self._closed = True
        _cut(self._listener)  # wakes the accept thread, which a bare close() would leave blocked
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _cut(sock)
            if len(pair) == 1:  # a held connection has no pump to close it
                pair[0].close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == REFUSE:
                _reset(client)
                continue
            if self.mode == BLACKHOLE:  # hold it open, never answer
                with self._lock:
                    self._pairs.append((client,))
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self.mode != FORWARD:  # went down while we were connecting
                    _reset(client)
                    _reset(server)
                    continue
                self._pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="dbfault-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy src to dst until either side ends; each socket is read (and finally closed) by one pump."""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.mode != FORWARD:
                continue  # swallowed
            try:
                dst.sendall(data)
            except OSError:
                break
        _cut(dst)  # ends the other pump too
        _cut(src)
        src.close()


class SqliteLock:
    """Hold an exclusive lock on a SQLite database file: every writer gets "database is locked"."""

    def __init__(self, url: str):
        self.path = sa.make_url(url).database
        self._conn: sqlite3.Connection | None = None

    def acquire(self) -> None:
        self._conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self._conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


@contextmanager
def sqlite_locked(url: str):
    lock = SqliteLock(url)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class Outage:
    """One way to take any test database down: `url` is what the code under test should use;
    `down()`/`up()` (or `with outage.during():`) switch it. MariaDB/PostgreSQL go through a
    FaultProxy (`how`: "refuse" or "blackhole"); SQLite gets an exclusive lock (the file must exist)."""

    def __init__(self, url: str):
        self.proxy: FaultProxy | None = None
        self.url = url
        if sa.make_url(url).get_backend_name() == "sqlite":
            self._lock = SqliteLock(url)
        else:
            self.proxy, self.url = FaultProxy.for_url(url)

    def down(self, how: str = REFUSE) -> None:
        if self.proxy is None:
            self._lock.acquire()
        elif how == BLACKHOLE:
            self.proxy.blackhole()
        else:
            self.proxy.refuse()

    def up(self) -> None:
        if self.proxy is None:
            self._lock.release()
        else:
            self.proxy.restore()

    @contextmanager
    def during(self, how: str = REFUSE):
        self.down(how)
        try:
            yield
        finally:
            self.up()

    def close(self) -> None:
        if self.proxy is None:
            self._lock.release()
        else:
            self.proxy.close()
