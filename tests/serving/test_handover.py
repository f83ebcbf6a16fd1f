"""Steering a shared port's new connections to the newest listener (the local runner's update handover)."""

import logging
import socket
import subprocess
import sys
import time

import pytest

from serving import handover
from tests.util import free_port

OTHER_LISTENER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
print("listening", flush=True)
time.sleep(60)
"""


def listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def accepted_of(sock: socket.socket, connections: int, port: int) -> int:
    """Open `connections` connections to `port`; how many of them `sock` accepted."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    time.sleep(0.1)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            break
        conn.close()
        count += 1
    for client in clients:
        client.close()
    return count


@pytest.fixture
def old_server():
    """Another process listening on a shared port, as the previous revision's server does."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", OTHER_LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "listening"
    yield port, proc
    proc.kill()
    proc.wait()


def test_the_newest_listener_takes_every_new_connection_and_keeps_them_when_the_old_one_leaves(old_server):
    port, old = old_server
    ours = listener(port)
    try:
        assert 0 < accepted_of(ours, 40, port) < 40  # the kernel's hash spreads connections over both
        assert handover.steer_new_connections_here(port)
        assert accepted_of(ours, 40, port) == 40
        old.kill()
        old.wait()
        assert accepted_of(ours, 40, port) == 40  # the program's index is past the end now: the hash, over one
    finally:
        ours.close()


def test_without_a_listener_of_its_own_it_says_so_and_changes_nothing(old_server, caplog):
    port, _ = old_server
    with caplog.at_level(logging.WARNING, logger="serving.handover"):
        assert not handover.steer_new_connections_here(port)
    assert f"no listening socket of ours on port {port}" in caplog.text
