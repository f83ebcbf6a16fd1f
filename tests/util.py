"""Small helpers shared by every test package."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy and return its value; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def serving_processes(home: Path) -> list[int]:
    """Pids of live `python -m serving` processes started for `home` (by command line or environment)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"serving" not in cmdline or (entry / "stat").read_text().split()[2] == "Z":
                continue
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(home).encode() in b" ".join(cmdline) or f"MODELRUN_HOME={home}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def build_wheel(checkout: Path, dest: Path) -> Path:
    """modelrun's wheel built from `checkout` into `dest` (from a copy of what it packs, so no build/ or
    *.egg-info is left in the checkout)."""
    import shutil
    import subprocess
    import sys

    source = dest / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("modelrun", "serving", "dashboard"):
        shutil.copytree(checkout / folder, source / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(checkout / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dest), str(source)], check=True, capture_output=True, timeout=120)
    (wheel,) = dest.glob("modelrun-*.whl")
    return wheel
