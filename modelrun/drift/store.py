"""Drift state in SQL, on the shared `modelrun.db.metadata` (SQLite, MariaDB/MySQL, PostgreSQL).

- `drift_profiles`: the reference of each (deployment, revision): part "features" (written by the control
  plane while building) and part "outputs" (the model's outputs on the same rows, written by the model
  server before it serves; `error` says why when it could not). JSON without the samples.
- `drift_samples`: the numerical reference samples, one row per column (raw float64 bytes).
- `drift_buckets`: window aggregates per (deployment, revision, period, start): period "all" (the
  revision's whole life), "day" (UTC days) and "hour" (kept for the rolling 24 h window).
- `drift_state`: how far the log has been read (see watermark.py), for every deployment at once, and a
  version for optimistic concurrency between refreshers.
- `drift_reports`: the newest report per (deployment, window), and the verdict an alert was last sent for.
"""

from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from modelrun.db import metadata
from modelrun.drift.profile import OUTPUT_PREFIX, Profile

_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_TIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

profiles = sa.Table(
    "drift_profiles", metadata,
    sa.Column("deployment", sa.String(63), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("part", sa.String(16), primary_key=True),  # "features" | "outputs"
    sa.Column("meta", _TEXT, nullable=True),  # Profile.to_meta() as JSON; NULL when `error`
    sa.Column("error", _TEXT, nullable=True),
    sa.Column("created_at", _TIME, nullable=False),
    mysql_charset="utf8mb4",
)

samples = sa.Table(
    "drift_samples", metadata,
    sa.Column("deployment", sa.String(63), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(191), primary_key=True),  # 191 x 4 bytes keeps MySQL's key under its limit
    sa.Column("column_name", _TEXT, nullable=False),
    sa.Column("data", _BLOB, nullable=False),
    mysql_charset="utf8mb4",
)

buckets = sa.Table(
    "drift_buckets", metadata,
    sa.Column("deployment", sa.String(63), primary_key=True),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("period", sa.String(8), primary_key=True),  # "all" | "day" | "hour"
    sa.Column("start", _TIME, primary_key=True),  # naive UTC; 1970-01-01 for "all"
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("data", _BLOB, nullable=False),  # Aggregate.to_bytes()
    sa.Column("updated_at", _TIME, nullable=False),
)

state = sa.Table(
    "drift_state", metadata,
    sa.Column("scope", sa.String(63), primary_key=True),  # "predictions": the whole log, every deployment
    sa.Column("watermark", sa.BigInteger, nullable=False),  # every log id <= this is counted (or never was)
    sa.Column("pending", _TEXT, nullable=False),  # JSON [[first, last], ...]: counted ids above the watermark
    sa.Column("horizon_id", sa.BigInteger, nullable=True),  # ids <= this still missing at horizon_at ...
    sa.Column("horizon_at", _TIME, nullable=True),  # ... are given up once the gap grace has passed
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("refreshed_at", _TIME, nullable=True),
)

reports = sa.Table(
    "drift_reports", metadata,
    sa.Column("deployment", sa.String(63), primary_key=True),
    sa.Column("window_id", sa.String(32), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("report", _TEXT, nullable=False),
    sa.Column("alerted_status", sa.String(20), nullable=True),
    sa.Column("updated_at", _TIME, nullable=False),
)

def sample_key(column: str) -> str:
    """Column names can be long; the key is the name itself when short, else a digest of it."""
    if len(column) <= 191:
        return column
    import hashlib

    return "sha256:" + hashlib.sha256(column.encode()).hexdigest()


def save_profile(conn: sa.Connection, deployment: str, revision: int, part: str, profile: Profile | None,
                 now, error: str | None = None, source: str | None = None) -> None:
    """Store (or replace) one part of a revision's reference, samples included."""
    where = (profiles.c.deployment == deployment) & (profiles.c.revision == revision) & (profiles.c.part == part)
    conn.execute(profiles.delete().where(where))
    prefix = OUTPUT_PREFIX if part == "outputs" else ""
    meta = None
    if profile is not None:
        for column in profile.columns:
            column.name = column.name if column.name.startswith(prefix) else prefix + column.name
        meta = json.dumps(profile.to_meta() | ({"source": source} if source else {}))
        keys = [sample_key(c.name) for c in profile.columns]
        conn.execute(samples.delete().where((samples.c.deployment == deployment) & (samples.c.revision == revision)
                                            & samples.c.name.in_(keys)))
        for column, key in zip(profile.columns, keys):
            if column.sample is not None:
                conn.execute(samples.insert().values(deployment=deployment, revision=revision, name=key,
                                                     column_name=column.name,
                                                     data=np.ascontiguousarray(column.sample, "<f8").tobytes()))
    conn.execute(profiles.insert().values(deployment=deployment, revision=revision, part=part, meta=meta,
                                          error=error, created_at=now))


def load_profiles(conn: sa.Connection, deployment: str) -> dict[int, dict]:
    """{revision: {"profile": Profile of features + outputs, "created_at", "outputs_error"}} of every
    revision that has a features profile."""
    rows = conn.execute(sa.select(profiles).where(profiles.c.deployment == deployment)).all()
    stored = {(r.revision, r.column_name): r.data for r in conn.execute(
        sa.select(samples.c.revision, samples.c.column_name, samples.c.data).where(samples.c.deployment == deployment))}
    found: dict[int, dict] = {}
    for row in sorted(rows, key=lambda r: (r.revision, r.part != "features")):
        if row.part == "features":
            if row.meta is None:
                continue
            found[row.revision] = {"profile": _profile(row.meta, row.revision, stored), "created_at": row.created_at,
                                   "outputs_error": None, "has_outputs": False, "outputs_source": None}
        elif row.revision in found:
            entry = found[row.revision]
            if row.meta is None:
                entry["outputs_error"] = row.error
                continue
            outputs = _profile(row.meta, row.revision, stored)
            entry["profile"].columns.extend(outputs.columns)
            entry["has_outputs"] = True
            entry["outputs_source"] = json.loads(row.meta).get("source")
            entry["outputs_error"] = row.error  # with a production reference: why training data was not used
    return found


def _profile(meta: str, revision: int, stored: dict) -> Profile:
    data = json.loads(meta)
    names = [c["name"] for c in data["columns"]]
    return Profile.from_meta(data, {n: np.frombuffer(stored[(revision, n)], "<f8") for n in names
                                    if (revision, n) in stored})


def forget(conn: sa.Connection, deployment: str) -> None:
    """Remove everything drift keeps for a deployment (it is being deleted)."""
    for table in (profiles, samples, buckets, reports):
        conn.execute(table.delete().where(table.c.deployment == deployment))
