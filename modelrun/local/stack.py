"""The threads of `modelrun up`: the API server, the reconciler loop and the bucket watcher."""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
from pathlib import Path

from modelrun.errors import Unavailable
from modelrun.settings import Settings

log = logging.getLogger("modelrun.up")
HOST = "127.0.0.1"


class CannotStart(Exception):
    """`up` cannot start: its port is taken."""


class LocalStack:
    """Owns one control plane and everything that drives it; `stop()` undoes `start()`, model servers included."""

    def __init__(self, settings: Settings, port: int):
        self.settings = settings
        self.port = port
        self.functions = None  # the module functions-framework loaded `api` from
        self.control = None
        self.server = None
        self.watcher = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def bind(self) -> None:
        """Load the `api` function through functions-framework and bind its port (fails fast if taken)."""
        from werkzeug.serving import make_server

        # Bind the socket here (werkzeug would print two lines and exit on a taken port).
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise CannotStart(f"port {self.port} on {HOST} is already in use (another `modelrun up`?) — "
                            f"pick a free one with `modelrun up --port N`") from None
        app, self.functions = _load_api_function()
        app.wsgi_app = DashboardFiles(app.wsgi_app, self.settings.dashboard_dir)
        with sock:
            self.server = make_server(HOST, self.port, app, threaded=True, fd=sock.fileno())
        self.port = self.server.port

    def start(self) -> None:
        from modelrun.local.watcher import BucketWatcher

        self.control = self.functions.control_plane()  # the one `api` uses, so API writes wake our reconciler
        self._spawn("reconciler", self._reconcile_loop)
        self._spawn("drift", self._drift_loop)
        self.watcher = BucketWatcher(self.settings.bucket_dir, self.control.handle_upload)
        self.watcher.start()
        self._spawn("api", self.server.serve_forever)

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            if any(t.name == "api" for t in self._threads):
                self.server.shutdown()
            self.server.server_close()
        if self.watcher is not None:
            self.watcher.stop()
        if self.control is not None:
            self.control.kick()
        for thread in self._threads:
            thread.join(timeout=60)
            if thread.is_alive():
                log.warning("%s thread did not stop within 60s", thread.name)
        if self.control is not None:
            self.control.shutdown()

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _reconcile_loop(self) -> None:
        """One reconciler pass now, then one each time an API write wakes us or the interval passes."""
        wake = self.control.wake
        while not self._stop.is_set():
            try:
                self.control.reconcile_once()
            except Exception:  # keep reconciling: the next pass resumes from what is recorded
                log.exception("reconciler pass failed")
            wake.wait(self.settings.reconcile_interval)
            wake.clear()

    def _drift_loop(self) -> None:
        """Refresh drift (and the dashboard) now, then every `drift_interval` seconds."""
        while not self._stop.is_set():
            try:
                self.control.refresh_drift()
            except Unavailable as exc:  # the database is down: say so in one line, try again next time
                log.warning("drift refresh skipped: %s", exc.message)
            except Exception:  # keep going: the next refresh reads on from the stored watermark
                log.exception("drift refresh failed")
            self._stop.wait(self.settings.drift_interval)


class DashboardFiles:
    """WSGI middleware: /dashboard/ serves the published dashboard folder (no token: it is read-only
    and local); every other path goes to the API."""

    def __init__(self, app, folder):
        from werkzeug.middleware.shared_data import SharedDataMiddleware

        self.app = app
        self.files = SharedDataMiddleware(_not_published, {"/dashboard": str(folder)}, cache=False)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/dashboard":
            start_response("301 Moved Permanently", [("Location", "/dashboard/"), ("Content-Length", "0")])
            return [b""]
        if path.startswith("/dashboard/"):
            if path == "/dashboard/":
                environ = {**environ, "PATH_INFO": "/dashboard/index.html"}
            return self.files(environ, start_response)
        return self.app(environ, start_response)


def _not_published(environ, start_response):
    body = b"not found: the dashboard is written by the first drift refresh (a few seconds after start)\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _load_api_function():
    """functions-framework's app for `api`, loaded from modelrun/functions.py as Cloud Functions loads
    functions/main.py (installed or checkout alike), and the module it executed for it."""
    from importlib.util import find_spec

    from functions_framework import create_app

    source = Path(find_spec("modelrun.functions").origin)  # its file, not imported: create_app executes it
    path_before = list(sys.path)
    app = create_app(target="api", source=str(source))
    sys.path[:] = path_before  # it appended modelrun/ itself, which would make `settings`, `errors`… top-level names
    return app, sys.modules[source.stem]
