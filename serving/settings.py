"""Settings of the model server: one class, from the environment (prefix MODELRUN_) and CLI flags.

Built once in `serving.__main__` and passed down; nothing else in serving reads os.environ.
`PORT` has no prefix because Cloud Run sets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelrun.settings import checked_cloudsql_instance, checked_journal_uri, cloudsql_of

if TYPE_CHECKING:
    from modelrun.db.cloudsql import CloudSql

MIB = 1024 * 1024


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELRUN_", extra="ignore", populate_by_name=True,
                                      use_attribute_docstrings=True)

    model_uri: str = Field(min_length=1)
    """The model to serve: a Keras `.keras` file or a TensorFlow SavedModel folder, as a path or `file://` URI."""

    model_name: str = Field(min_length=1)
    """The name clients call the model by (the deployment name); ModelInfer for any other name is NOT_FOUND."""

    port: int = Field(default=8080, ge=0, le=65535, validation_alias=AliasChoices("PORT", "MODELRUN_PORT"))
    """TCP port for gRPC (cleartext HTTP/2). Read from `PORT`, which Cloud Run sets. 0 picks a free port."""

    host: str = "0.0.0.0"
    """Interface to listen on: 0.0.0.0 for all (containers), 127.0.0.1 for a local deployment."""

    admin_port: int | None = Field(default=None, ge=1, le=65535)
    """A second TCP port, this server's alone, for health checks and the supervisor. Set: it opens first and
    answers NOT_SERVING while the model loads; `port` opens only once the model is warm, so a shared `port`
    never hands a connection to a server that cannot answer yet."""

    share_port: bool = False
    """Let other servers listen on `port` too (SO_REUSEPORT; the kernel spreads new connections over them):
    a new revision starts beside the old one on one endpoint. Unset: a port in use ends the process."""

    database_url: str | None = None
    """SQLAlchemy URL of the prediction log. Unset: SQLite at $MODELRUN_HOME/modelrun.db."""

    cloudsql_iam_auth: bool = False
    """Cloud SQL IAM database authentication: no password; the URL's user is the service account's IAM database
    user (PostgreSQL: `sa-name@project.iam`, written `sa-name%40project.iam` in the URL; MySQL: `sa-name`)."""

    cloudsql_ip_type: Literal["public", "private", "psc"] = "public"
    """Which address of the Cloud SQL instance to connect to: `public`, `private` (VPC) or `psc` (Private
    Service Connect)."""

    cloudsql_instance: str | None = None
    """Cloud SQL instance connection name, `project:region:instance`. Set: the prediction log is reached through
    the Cloud SQL connector, and `database_url` names only driver, user, optional password and database
    (`postgresql+pg8000://modelrun@/modelrun`, `mysql+pymysql://modelrun:secret@/modelrun`)."""

    revision: int = Field(default=1, ge=1)
    """The deployment revision this server runs; reported as the model version and logged with each prediction."""

    feature_names: Annotated[list[str] | None, NoDecode] = None
    """Comma-separated column names for a model with one 2-D input (the training data's feature columns),
    used to log each column under its name. Unset: `<input>_<i>`."""

    max_message_bytes: int = Field(default=64 * MIB, gt=0)
    """Largest request and response message in bytes; a larger request is refused with RESOURCE_EXHAUSTED."""

    max_batch_size: int = Field(default=256, ge=1)
    """Most rows one model call may combine from concurrent requests (a larger single request still runs whole)."""

    batch_max_wait_ms: float = Field(default=8.0, ge=0)
    """Longest a model call waits for more requests to batch, used only under concurrency. A call starts as soon
    as it holds as many requests as the largest of the last 4 calls (about how many callers there are), or
    `max_batch_size` rows; so this full wait is paid only when fewer callers than recently seen show up, which is
    why it can be generous (a call costs about the same for 1 row as for 32: batching raises throughput and
    lowers CPU per request). A sequential caller never waits. Requests that arrive while the model is busy are
    always batched into its next call. 0: never wait."""

    log_predictions: bool = True
    """Write every prediction (or a sample) to the prediction log."""

    log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of requests logged, 0..1."""

    training_data: Path | None = None
    """The revision's training data (CSV, JSON or Parquet). Set: before serving, the model's outputs on it are
    profiled once per revision as the reference for output drift. Unset: outputs are not monitored."""

    reference_rows: int = Field(default=100000, ge=1)
    """Training rows the outputs' reference is computed on (a seeded uniform sample beyond)."""

    journal_dir: Path | None = None
    """Where unwritten prediction-log rows are kept while the database is unreachable.
    Unset: $MODELRUN_HOME/journal/<model name>."""

    journal_uri: str | None = None
    """gs://BUCKET/PREFIX: when the server stops, journal files still waiting for the database go there
    (on Cloud Run the disk is memory and goes with the instance); the next instance replays them."""

    home: Path = Path("~/.modelrun")
    """Local state folder (the default database and journal live here)."""

    intra_op_threads: int = Field(default=1, ge=0)
    """TensorFlow threads inside one operation; 0 lets TensorFlow choose. 1 suits small tabular models best."""

    @field_validator("feature_names", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):
            if not value.strip():
                return None  # set but empty: same as unset
            names = [name.strip() for name in value.split(",")]
            if any(not name for name in names):
                raise ValueError("empty name in the comma-separated list")
            return names or None
        return value

    @field_validator("cloudsql_instance")
    @classmethod
    def _check_cloudsql(cls, value: str | None, info: ValidationInfo) -> str | None:
        return checked_cloudsql_instance(value, info)

    @field_validator("journal_uri")
    @classmethod
    def _check_journal_uri(cls, value: str | None) -> str | None:
        return checked_journal_uri(value)

    @property
    def cloudsql(self) -> CloudSql | None:
        """How to reach Cloud SQL, for `make_engine`; None when the database is not on Cloud SQL."""
        return cloudsql_of(self)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.expanduser() / 'modelrun.db'}"

    @property
    def resolved_journal_dir(self) -> Path:
        return (self.journal_dir or self.home / "journal" / self.model_name).expanduser()
