"""Settings of the control plane and the CLI, from the environment (prefix MODELRUN_).

Built once at each program's entry point (the `api`/`on_upload` functions, `modelrun up`, the CLI)
and passed down; nothing else reads os.environ. The model server has its own class in
serving/settings.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELRUN_", extra="ignore")

    home: Path = Field(default=Path("~/.modelrun"))
    """Local state: the SQLite database, the bucket folder, model bundles, logs and the API token."""

    api: str = "http://127.0.0.1:8080"
    """Where the CLI and the Python client find the control plane."""

    token: str | None = None
    """Bearer token for the REST API. Unset: read from $MODELRUN_HOME/token (written by the first `modelrun up`)."""

    id_token: Literal["auto", "always", "never"] = "auto"
    """Whether the CLI and the Python client sign in to Google Cloud endpoints with an ID token from
    Application Default Credentials (audience: the endpoint's URL) instead of sending `token`: `auto`
    for https URLs on `*.run.app` (Cloud Run model servers) and `*.cloudfunctions.net` (the `api`
    function), `always` for every https URL (a custom domain in front of them), `never` to send none.
    Cleartext (http://, host:port) endpoints never get one."""

    grpc_max_message_bytes: int = 64 * 1024 * 1024
    """Largest gRPC message the client sends or receives (a big batch of rows or of predictions)."""

    database_url: str | None = None
    """SQLAlchemy URL for deployments and predictions. Unset: SQLite at $MODELRUN_HOME/modelrun.db."""

    storage: str = "local"
    """Storage backend: `local` (a folder as the bucket) or `gcs` (Cloud Storage: gs:// URIs; the client
    library's STORAGE_EMULATOR_HOST points it at an emulator)."""

    dashboard_bucket: str | None = None
    """With `storage=gcs`: the bucket the drift dashboard is published to (unset: not published)."""

    builder: str = "local"
    """Builder backend: `local` (stage model and training data into a bundle folder)."""

    runner: str = "local"
    """Runner backend: `local` (a model-server process on a free loopback port)."""

    reconcile_interval: float = 2.0
    """Seconds between reconciler passes in `modelrun up` (API writes also wake it at once)."""

    auth: Literal["token", "none"] = "token"
    """REST API authentication: `token` (bearer token, see `token`) or `none` (behind IAM on Google Cloud)."""

    max_body_bytes: int = 65536
    """Largest REST request body (and upload manifest) the control plane reads; larger ones get 413."""

    lease_seconds: float = 300.0
    """How long one control-plane process may act on a deployment before another may take over (a process
    that dies holding a deployment delays it this long); longer than any one reconciler step."""

    start_timeout: float = 180.0
    """Seconds a model server may take from start to SERVING before its revision is FAILED."""

    drain_grace: float = 5.0
    """Seconds the previous revision keeps serving after an update switched the endpoint, then it is stopped."""

    stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a local model server is stopped."""

    restart_limit: int = 5
    """Crashes of a serving revision's model server within `restart_window` seconds before it is FAILED
    (each crash is restarted after a backoff: `restart_backoff` seconds, doubling, at most 60)."""

    restart_window: float = 600.0
    """Seconds over which crashes are counted; a crash after a quiet window starts the count again."""

    restart_backoff: float = 1.0
    """Seconds before restarting after the first crash; doubles with each crash within the window."""

    drift_interval: float = 60.0
    """Seconds between drift refreshes in `modelrun up` (on Google Cloud a scheduler calls the `drift` function)."""

    drift_webhook: str | None = None
    """URL every drift alert is POSTed to (a deployment's `drift.webhook` config takes precedence)."""

    drift_reservoir: int = 20000
    """Production rows per window kept (a deterministic uniform sample) for the exact tests (KS, Wasserstein)."""

    drift_sample_rows: int = 100000
    """Training rows kept for the exact tests: every row up to this many, a seeded uniform sample beyond."""

    drift_gap_grace: float = 120.0
    """Seconds a hole in the prediction log's ids may stay open (a writer's transaction still running)
    before drift stops waiting for it."""

    @property
    def dashboard_dir(self) -> Path:
        """Where the local Storage publishes the drift dashboard (served at /dashboard/ by `modelrun up`)."""
        return self.home_dir / "dashboard"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def bucket_dir(self) -> Path:
        return self.home_dir / "bucket"

    @property
    def token_file(self) -> Path:
        return self.home_dir / "token"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'modelrun.db'}"

    @property
    def bundles_dir(self) -> Path:
        return self.home_dir / "bundles"

    @property
    def logs_dir(self) -> Path:
        return self.home_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Pidfiles of the local model servers this home's control plane started."""
        return self.home_dir / "run"

    @property
    def journal_dir(self) -> Path:
        return self.home_dir / "journal"

    def server_environment(self, extra: dict[str, str]) -> dict[str, str]:
        """Environment for a child model server: this process's environment plus `extra`."""
        return {**os.environ, **extra}

    def resolved_token(self) -> str | None:
        """The token from MODELRUN_TOKEN, else the one `modelrun up` stored, else None."""
        if self.token:
            return self.token
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None
