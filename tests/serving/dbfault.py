"""Take a database "down" for real: a TCP proxy in front of it, and an exclusive lock on a SQLite file.

`FaultProxy` listens on a free loopback port and forwards to the database server. `refuse()` resets
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


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.mode = FORWARD
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        threading.Thread(target=self._accept, name="dbfault-accept", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> tuple[FaultProxy, str]:
        """A proxy in front of the server of `url`, and the same URL pointed at the proxy."""
        parsed = sa.make_url(url)
        proxy = cls(parsed.host or "127.0.0.1", parsed.port)
        return proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    def refuse(self) -> None:
        self.mode = REFUSE
        self._drop_all()

    def blackhole(self) -> None:
        self.mode = BLACKHOLE

    def restore(self) -> None:
        self._drop_all()  # connections that lived through a blackhole have lost bytes: start clean
        self.mode = FORWARD

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            _reset(client)
            _reset(server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == REFUSE:
                _reset(client)
                continue
            if self.mode == BLACKHOLE:
                server = socket.socket()  # a placeholder: nothing is forwarded
            else:
                try:
                    server = socket.create_connection(self.target, timeout=5)
                    server.settimeout(None)
                except OSError:
                    _reset(client)
                    continue
            with self._lock:
                self._pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="dbfault-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
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
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def sqlite_locked(url: str):
    """Hold an exclusive lock on a SQLite database file: every writer gets "database is locked"."""
    path = sa.make_url(url).database
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()
