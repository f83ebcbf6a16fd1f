"""The control plane's tables, on the shared `modelrun.db.metadata`.

- `deployments`: one row per deployment name (unique), with the desired model/data/config of its newest
  revision, the status users see and the endpoint of the revision that serves traffic.
- `revisions`: one row per (deployment, revision): what it runs, how far it got (`state`), what the
  builder made (`artifact`) and what the runner started (`runtime`, backend-specific JSON).
- `deployment_events`: the status history (deployment, revision, from → to, message, time).
- `upload_events`: finalize events already handled, keyed by (bucket, object, generation).
- `reconcile_leases`: which control-plane process acts on a deployment now, until when.

Strings stay under MySQL's index limits; times are naive UTC.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from modelrun.db import metadata

_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_TIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),  # the newest revision: what status is about
    sa.Column("serving_revision", sa.Integer, nullable=True),  # the revision behind `endpoint`
    sa.Column("endpoint", sa.String(512), nullable=True),
    sa.Column("model_uri", _TEXT, nullable=False),
    sa.Column("training_data_uri", _TEXT, nullable=False),
    sa.Column("config", _TEXT, nullable=False),  # JSON object
    sa.Column("error", _TEXT, nullable=True),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
    # Where the deployment is served for its whole life (the runner's choice for its first serving revision;
    # locally 127.0.0.1:port); `endpoint` shows it while a revision serves. Added later: older rows have NULL.
    sa.Column("address", sa.String(512), nullable=True),
    sa.UniqueConstraint("name", name="uq_deployments_name"),
)

revisions = sa.Table(
    "deployment_revisions",
    metadata,
    sa.Column("deployment_id", _ID, sa.ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("model_uri", _TEXT, nullable=False),
    sa.Column("training_data_uri", _TEXT, nullable=False),
    sa.Column("config", _TEXT, nullable=False),
    sa.Column("features", _TEXT, nullable=True),  # JSON list: training-data feature columns
    sa.Column("build", _TEXT, nullable=True),  # a build still running, as the builder's JSON handle
    sa.Column("action", sa.String(16), nullable=True),  # CANARY: "promote" or "rollback", asked by a user
    sa.Column("artifact", _TEXT, nullable=True),  # builder output: bundle folder / image
    sa.Column("runtime", _TEXT, nullable=True),  # runner handle as JSON: {pid, port, ...} / service
    sa.Column("endpoint", sa.String(512), nullable=True),
    sa.Column("error", _TEXT, nullable=True),
    sa.Column("deadline", _TIME, nullable=True),  # DEPLOYING: give up then; DRAINING: stop then
    sa.Column("restarts", sa.Integer, nullable=True),  # crashes of its server since `crashed_at`
    sa.Column("crashed_at", _TIME, nullable=True),  # the first crash of the current window
    sa.Column("retry_at", _TIME, nullable=True),  # DEPLOYING after a crash: start again from then (backoff)
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
)

events = sa.Table(
    "deployment_events",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("deployment", sa.String(63), nullable=False),
    sa.Column("revision", sa.Integer, nullable=True),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("message", _TEXT, nullable=True),
    sa.Column("ts", _TIME, nullable=False),
    sa.Index("ix_deployment_events_deployment", "deployment", "id"),
)

upload_events = sa.Table(
    "upload_events",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # sha256 of bucket/object#generation
    sa.Column("bucket", sa.String(255), nullable=False),
    sa.Column("object", _TEXT, nullable=False),
    sa.Column("generation", sa.String(32), nullable=False),
    sa.Column("deployment", sa.String(63), nullable=True),
    sa.Column("outcome", _TEXT, nullable=False),
    sa.Column("ts", _TIME, nullable=False),
)

leases = sa.Table(
    "reconcile_leases",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),  # a deployment's name
    sa.Column("holder", sa.String(64), nullable=False),  # host:pid:random of the process that holds it
    sa.Column("expires_at", _TIME, nullable=False),
)
