"""Settings of the control plane and the CLI, from the environment (prefix MODELRUN_).

Built once at each program's entry point (the `api`/`on_upload` functions, `modelrun up`, the CLI)
and passed down; nothing else reads os.environ. The model server has its own class in
serving/settings.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from modelrun.db.cloudsql import CloudSql


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELRUN_", extra="ignore")

    home: Path = Field(default=Path("~/.modelrun"))
    """Local state: the SQLite database, the bucket folder, model bundles, logs and the API token."""

    api: str = "http://127.0.0.1:8080"
    """Where the CLI and the Python client find the control plane."""

    dashboard_url: str | None = None
    """Where `modelrun dashboard` points (Terraform's `dashboard_url` output on Google Cloud). Unset: the
    `/dashboard/` page that `modelrun up` serves on the API's port."""

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

    cloudsql_iam_auth: bool = False
    """Cloud SQL IAM database authentication: no password; the URL's user is the service account's IAM database
    user (PostgreSQL: `sa-name@project.iam`, written `sa-name%40project.iam` in the URL; MySQL: `sa-name`)."""

    cloudsql_ip_type: Literal["public", "private", "psc"] = "public"
    """Which address of the Cloud SQL instance to connect to: `public`, `private` (VPC) or `psc` (Private
    Service Connect)."""

    server_database_url: str | None = None
    """The database URL the model servers are given, when it differs from `database_url`: with Cloud SQL IAM
    database authentication each service account signs in as its own database user, so the model servers'
    URL names theirs (`mysql+pymysql://modelrun-server@/modelrun`). Unset: `database_url`."""

    cloudsql_instance: str | None = None
    """Cloud SQL instance connection name, `project:region:instance`. Set: connections go through the Cloud SQL
    connector, and `database_url` names only driver, user, optional password and database
    (`postgresql+pg8000://modelrun@/modelrun`, `mysql+pymysql://modelrun:secret@/modelrun`)."""

    storage: str = "local"
    """Storage backend: `local` (a folder as the bucket) or `gcs` (Cloud Storage: gs:// URIs; the client
    library's STORAGE_EMULATOR_HOST points it at an emulator)."""

    dashboard_bucket: str | None = None
    """With `storage=gcs`: the bucket the drift dashboard is published to (unset: not published)."""

    builder: str = "local"
    """Builder backend: `local` (stage model and training data into a bundle folder) or `cloudbuild` (Cloud Build
    checks the model against the training data and appends the bundle as one layer to `serving_image`, pushed to
    Artifact Registry as `REGION-docker.pkg.dev/PROJECT/REPOSITORY/models/NAME:rREVISION`)."""

    gcp_project: str | None = None
    """With `builder=cloudbuild`: the Google Cloud project that runs the builds and holds the images."""

    gcp_region: str = "us-central1"
    """With `builder=cloudbuild`: the region of the builds and of the Artifact Registry repository."""

    artifact_repository: str = "modelrun"
    """With `builder=cloudbuild`: the Artifact Registry Docker repository of the serving image and model images."""

    serving_image: str | None = None
    """With `builder=cloudbuild`: the serving base image every model image is built on (what cloudbuild.yaml
    pushes). Unset: `REGION-docker.pkg.dev/PROJECT/REPOSITORY/serving:latest`; pin a digest for repeatable builds."""

    build_service_account: str | None = None
    """With `builder=cloudbuild`: the service account builds run as (an email or its full resource name); it needs
    read access to the models bucket and write access to the repository. Unset: Cloud Build's default."""

    build_timeout: float = 1200.0
    """With `builder=cloudbuild`: seconds a build may run before Cloud Build stops it (TIMEOUT: the revision FAILED)."""

    cloudbuild_endpoint: str | None = None
    """With `builder=cloudbuild`: `host:port` of a Cloud Build API without TLS or credentials (an emulator or a
    test fake). Unset: the real API with Application Default Credentials."""

    artifactregistry_endpoint: str | None = None
    """With `builder=cloudbuild`: base URL of an Artifact Registry REST API without credentials (a test fake),
    used to delete model images. Unset: https://artifactregistry.googleapis.com with Application Default Credentials."""

    runner: str = "local"
    """Runner backend: `local` (a model-server process on a free loopback port) or `cloudrun` (one Cloud Run
    service per deployment, one Cloud Run revision per revision; needs `gcp_project`)."""

    gcp_project: str | None = None
    """Google Cloud project the Cloud Run services are created in."""

    gcp_region: str = "us-central1"
    """Region of the Cloud Run services."""

    run_service_account: str | None = None
    """Service account the model servers run as on Cloud Run (it needs the Cloud SQL client role when the
    prediction log is on Cloud SQL). Unset: Cloud Run's default (the Compute Engine default service account).
    A deployment's `config.run.service_account` takes precedence."""

    run_invokers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated IAM members given `roles/run.invoker` on every model server's Cloud Run service
    (`user:ann@example.com`, `serviceAccount:api@project.iam.gserviceaccount.com`, `group:...`). Unset:
    nobody: the services are private (callers need the role some other way, e.g. on the project). The
    control plane reads each new revision's model metadata, so its own service account needs the role too.
    `allUsers` makes them public and is given only when listed here."""

    run_vpc_connector: str | None = None
    """Serverless VPC Access connector (`projects/P/locations/R/connectors/NAME`) the model servers on Cloud Run
    send private-range traffic through, e.g. to a Cloud SQL instance on a private IP. Unset: no VPC access."""

    run_endpoint: str | None = None
    """`host:port` of a Cloud Run Admin API reached over cleartext gRPC without credentials (a fake, in tests).
    Unset: run.googleapis.com with Application Default Credentials."""

    run_api_timeout: float = 60.0
    """Seconds a Cloud Run Admin API call is retried (with backoff) while the API is unavailable, overloaded or
    times out; then the step fails with the error and the next reconciler pass tries again."""

    run_wait: float = 20.0
    """Seconds the Cloud Run runner waits for an operation (a traffic move, a deletion) before going on; new
    revisions are never waited for: their readiness is polled across reconciler passes."""

    run_sweep_interval: float = 300.0
    """Seconds between two sweeps of the Cloud Run services labelled `managed-by=modelrun` for ones no
    deployment owns (each sweep lists the project's services in the region)."""

    reconcile_interval: float = 2.0
    """Seconds between reconciler passes in `modelrun up` (API writes also wake it at once)."""

    auth: Literal["token", "none"] = "token"
    """REST API authentication: `token` (bearer token, see `token`) or `none` (behind IAM on Google Cloud)."""

    max_body_bytes: int = 65536
    """Largest REST request body (and upload manifest) the control plane reads; larger ones get 413."""

    reconcile_on_write: bool = False
    """Run one reconciler pass right after each API write and deploying upload, before answering (set it for
    Cloud Functions, where nothing runs between requests; `modelrun up` has its own loop)."""

    lease_seconds: float = 300.0
    """How long one control-plane process may act on a deployment before another may take over (a process
    that dies holding a deployment delays it this long); longer than any one reconciler step."""

    start_timeout: float = 180.0
    """Seconds a model server may take from start to SERVING before its revision is FAILED."""

    drain_grace: float = 5.0
    """Seconds the previous revision keeps serving after an update switched the endpoint, then it is stopped.
    Locally, keep it above a shared port's connection age (2 s, serving/handover.py): that is how long its
    clients take to move to the new revision."""

    stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a local model server is stopped."""

    restart_limit: int = 5
    """Crashes of a serving revision's model server within `restart_window` seconds before it is FAILED
    (each crash is restarted after a backoff: `restart_backoff` seconds, doubling, at most 60)."""

    restart_window: float = 600.0
    """Seconds over which crashes are counted; a crash after a quiet window starts the count again."""

    restart_backoff: float = 1.0
    """Seconds before restarting after the first crash; doubles with each crash within the window."""

    journal_uri: str | None = None
    """gs://BUCKET/PREFIX where model servers keep the prediction-log journal when they stop before the
    database took it (Cloud Run); each reconciler pass replays what is there. Passed to the model servers."""

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

    @field_validator("journal_uri")
    @classmethod
    def _check_journal_uri(cls, value: str | None) -> str | None:
        return checked_journal_uri(value)

    @field_validator("cloudsql_instance")
    @classmethod
    def _check_cloudsql(cls, value: str | None, info: ValidationInfo) -> str | None:
        return checked_cloudsql_instance(value, info)

    @field_validator("run_invokers", mode="before")
    @classmethod
    def _split_invokers(cls, value):
        if isinstance(value, str):
            value = [member.strip() for member in value.split(",") if member.strip()]
        for member in value or []:
            if member not in ("allUsers", "allAuthenticatedUsers") and ":" not in member:
                raise ValueError(f"{member!r} is no IAM member: write user:EMAIL, serviceAccount:EMAIL, "
                                 f"group:EMAIL, domain:DOMAIN or allUsers")
        return value

    @property
    def cloudsql(self) -> CloudSql | None:
        """How to reach Cloud SQL, for `make_engine`; None when the database is not on Cloud SQL."""
        return cloudsql_of(self)

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


def checked_cloudsql_instance(value: str | None, info: ValidationInfo) -> str | None:
    """`cloudsql_instance` after checking it and the database URL it goes with (declared before it); blank is unset.
    Shared with the model server's settings."""
    if value is None or not value.strip():
        return None
    from modelrun.db.cloudsql import settings_problem

    problem = settings_problem(value.strip(), info.data.get("database_url"), info.data.get("cloudsql_iam_auth", False))
    if problem:
        raise ValueError(problem)
    return value.strip()


def checked_journal_uri(value: str | None) -> str | None:
    """`journal_uri` after checking it names a Cloud Storage folder; blank is unset. Shared with the model server."""
    if value is None or not value.strip():
        return None
    from modelrun import gcs
    from modelrun.errors import InvalidInput

    try:
        gcs.parse(value.strip().rstrip("/") + "/")
    except InvalidInput as exc:
        raise ValueError(exc.message.replace(" a bucket, not an object", " a bucket; add a folder")) from None
    return value.strip()


def cloudsql_of(settings) -> CloudSql | None:
    if not settings.cloudsql_instance:
        return None
    from modelrun.db.cloudsql import CloudSql

    return CloudSql(settings.cloudsql_instance, iam_auth=settings.cloudsql_iam_auth, ip_type=settings.cloudsql_ip_type)
