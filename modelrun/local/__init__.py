"""`modelrun up`: the whole control plane on one machine.

The same `api` function Cloud Functions runs, served by functions-framework's Flask app on
127.0.0.1:PORT (werkzeug, one thread per request); the reconciler loop (woken by API writes, else every
`reconcile_interval` seconds); and the bucket watcher, which turns a manifest written into the bucket
folder into the finalize CloudEvent the `on_upload` function gets from Cloud Storage. It runs until
SIGINT/SIGTERM and then stops what it started, model servers included.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading

from modelrun.settings import Settings

log = logging.getLogger("modelrun.up")


def ensure_home(settings: Settings) -> None:
    """Create MODELRUN_HOME and the bucket folder; on first run, a random API token (mode 0600)."""
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    settings.bucket_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(settings.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def run(settings: Settings, port: int, *, as_json: bool = False) -> int:
    """Run until a signal; return the exit status."""
    from modelrun.local.stack import LocalStack, CannotStart

    _configure_logging()
    ensure_home(settings)
    lock = _lock_home(settings)
    if lock is None:
        return 1
    stack = LocalStack(settings, port)
    try:
        stack.bind()
    except CannotStart as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        stack.start()
        _announce(settings, stack.url, as_json)
        stop.wait()
        log.info("stopping: model servers started here are stopped too")
    finally:
        stack.stop()
    log.info("stopped")
    return 0


def _lock_home(settings: Settings):
    """Hold $MODELRUN_HOME/up.lock while running: two control planes on one home would fight over its
    model servers. The kernel drops the lock when the process dies, even by SIGKILL."""
    import fcntl

    f = open(settings.home_dir / "up.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        print(f"error: another `modelrun up` (pid {owner}) is running for MODELRUN_HOME={settings.home_dir}; "
              f"use it, stop it, or set another MODELRUN_HOME", file=sys.stderr)
        return None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _announce(settings: Settings, url: str, as_json: bool) -> None:
    where = {"api": url, "openapi": f"{url}/openapi.yaml", "dashboard": f"{url}/dashboard/", "bucket": str(settings.bucket_dir),
             "token_file": str(settings.token_file), "home": str(settings.home_dir),
             "database": settings.resolved_database_url, "logs": str(settings.logs_dir), "pid": os.getpid()}
    if as_json:
        print(json.dumps(where), flush=True)
        return
    lines = [
        f"modelrun is up (pid {os.getpid()})",
        f"  API       {url}   (OpenAPI document: {url}/openapi.yaml)",
        f"  dashboard {url}/dashboard/   (drift, refreshed every {settings.drift_interval:.0f} s; no token needed)",
        f"  bucket    {settings.bucket_dir}   (a folder with a modelrun.json manifest deploys itself)",
        f"  token     {settings.token_file}   (the CLI reads it from MODELRUN_HOME, or set MODELRUN_TOKEN)",
        f"  database  {settings.resolved_database_url}",
        f"  logs      {settings.logs_dir}   (one file per model server)",
    ]
    if url != settings.api.rstrip("/"):
        lines.append(f"  point the CLI here with: export MODELRUN_API={url}")
    lines.append("Deploy with `modelrun deploy NAME --model FILE --training-data FILE --wait`. Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per API request (--wait polls)

