"""Taking over a shared port from the previous revision without a failed call (Linux).

Two servers listen on one port with SO_REUSEPORT while a new revision replaces an old one. Left alone, the
kernel spreads new connections over both by a hash, and the old server's shutdown can fail calls in two ways:
a connection still waiting in its accept queue when its socket closes is reset, and a call a client sends on
an old connection at the very moment grpc's shutdown begins is cancelled (the server refuses new calls before
the client has read its GOAWAY). So the handover goes in two steps:

1. `steer_new_connections_here`: once warm, the new server attaches a classic BPF program to the port's
   reuseport group that picks its own socket, so every new connection comes to it and the old server's accept
   queue stays empty. A socket joins the group at the end of its array, so its index is the number of other
   listeners; when the old socket leaves, the kernel moves the last socket into its slot and the program's
   index points past the end, where the kernel falls back to its hash over whoever is left.
2. `AGE_OPTIONS`: connections to a shared port live at most `CONNECTION_AGE_S`. Ageing is grpc's graceful
   GOAWAY on a server that keeps running: calls sent before the client reads it are still answered, and the
   client reconnects (to the new server, by step 1). The control plane's drain period (5 s by default) is
   longer than an age, so when the old server is told to stop, its connections are gone already.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import stat
import struct
from pathlib import Path

log = logging.getLogger(__name__)

CONNECTION_AGE_S = 2.0  # grpc adds up to 10% jitter; the drain period must be longer
AGE_OPTIONS = [("grpc.max_connection_age_ms", int(CONNECTION_AGE_S * 1000)),
               ("grpc.max_connection_age_grace_ms", 5000)]

_SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return a constant
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def steer_new_connections_here(port: int) -> bool:
    """Make this process's listener on `port` receive every new connection to it. False (after one log
    line) where that cannot be done; the kernel's hash then spreads connections as before."""
    try:
        sock = _own_listener(port)
        if sock is None:
            log.warning("no listening socket of ours on port %d to take new connections with", port)
            return False
        with sock:
            index = _listeners(port) - 1
            program = ctypes.create_string_buffer(struct.pack("HBBI", _BPF_RET_K, 0, 0, index), 8)
            fprog = struct.pack("HxxxxxxP", 1, ctypes.addressof(program))  # struct sock_fprog
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)
        return True
    except OSError as exc:
        log.warning("cannot steer new connections on port %d to this server (%s); they are spread by hash",
                    port, exc)
        return False


def _own_listener(port: int) -> socket.socket | None:
    """A duplicate of this process's listening TCP socket on `port` (grpc owns the original)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if (sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname()[1] == port):
                return sock
        except OSError:
            pass
        sock.close()
    return None


def _listeners(port: int) -> int:
    """How many TCP sockets on this machine listen on `port` (every server of the group, this one included)."""
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == _LISTEN:
                count += 1
    return count
