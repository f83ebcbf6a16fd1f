"""End-to-end fixtures: `modelrun up` as a real subprocess and the `modelrun` CLI, as a user runs them.

Each `Stack` has its own MODELRUN_HOME and a free port; its finalizer stops `up` (SIGTERM, then SIGKILL)
and kills any model server still running from that home, so nothing outlives a failing test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.util import free_port, serving_processes, wait_until

# The console script `make setup` installs; `python -m modelrun` is the same program otherwise.
_SCRIPT = Path(sys.executable).parent / "modelrun"
MODELRUN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "modelrun"]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """Assert a command failed with exactly one `error: ...` line on stderr (no traceback); return it."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


class Stack:
    """One `modelrun up` and the environment a user's shell would have to talk to it."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None, command: list[str] = MODELRUN,
                 cwd: Path | None = None):
        self.home = home
        self.extra_env = extra_env or {}
        self.command = command  # how `modelrun` is run
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = home.parent / f"{home.name}-up.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELRUN_")}
        return env | {"MODELRUN_HOME": str(self.home), "MODELRUN_API": self.api, "PYTHONUNBUFFERED": "1",
                      "COLUMNS": "200"} | self.extra_env

    @property
    def bucket(self) -> Path:
        return self.home / "bucket"

    def up(self, port: int | None = None) -> Stack:
        self.port = port or free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.command, "up", "--port", str(self.port)], env=self.env, cwd=self.cwd,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._healthy, timeout=120, interval=0.2, what=f"`modelrun up` on port {self.port}")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"`modelrun up` exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.api}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cli(self, *args: str, input: str | None = None, check: bool = True, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, *args], env=env or self.env, cwd=self.cwd, input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"modelrun {' '.join(args)} exited {result.returncode}:\n{result.stderr}\n"
                                 f"--- modelrun up log ---\n{self.log_tail()}")
        return result

    def cli_json(self, *args: str, **kwargs):
        return json.loads(self.cli(*args, "--json", **kwargs).stdout)

    def client(self):
        from modelrun.client import Client

        return Client(api=self.api, token=(self.home / "token").read_text().strip())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int | None:
        """Signal `up` and wait for it; SIGKILL if it does not exit in time. Returns its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def cleanup(self) -> None:
        self.stop()
        for pid in serving_processes(self.home):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One running `modelrun up` shared by a test module."""
    s = Stack(tmp_path_factory.mktemp("e2e") / "home")
    try:
        yield s.up()
    finally:
        s.cleanup()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Real saved models and their training data: dense8 v1/v2 (.keras), dense8 as SavedModel, tabular."""
    import numpy as np

    from tests.serving import models as m

    d = tmp_path_factory.mktemp("models")
    v1, v2 = m.save_dense8(d / "v1", seed=0), m.save_dense8(d / "v2", seed=1)
    saved = m.export_savedmodel(m.build_dense8(seed=2, name="dense8_sm"), d / "sm")
    features = [f"f{i}" for i in range(8)]
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    write_csv(d / "dense8.csv", features, x.tolist())
    tab = m.save_tabular(d / "tab")
    t = m.tabular_rows(200)
    tab_cols = ["age", "rooms", "city", "garden"]
    write_csv(d / "tabular.csv", tab_cols,
              [[float(t["age"][i, 0]), int(t["rooms"][i, 0]), t["city"][i, 0], bool(t["garden"][i, 0])]
               for i in range(200)])
    return {"v1": v1, "v2": v2, "savedmodel": saved, "dense8_csv": d / "dense8.csv", "features": features,
            "tabular": tab, "tabular_csv": d / "tabular.csv", "dir": d}


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path
