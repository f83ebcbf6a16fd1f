"""Deployments in SQL (SQLAlchemy Core; SQLite, MariaDB/MySQL, PostgreSQL).

Every write is one transaction. The unique name makes two concurrent creates of one name end in exactly
one row (the loser gets Conflict). The deployment's `status`/`error`/`endpoint` are derived from its
revisions in `_refresh`, in the same transaction as the revision change, and each revision state change
is written to the event history.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from modelrun.control import models as m
from modelrun.control.schema import deployments, events, revisions, upload_events
from modelrun.db import create_schema, write_transaction
from modelrun.drift import store as drift_store
from modelrun.errors import Conflict, NotFound, Unavailable


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _loads(text: str | None):
    return json.loads(text) if text else None


_serving = revisions.alias("serving")
_latest = revisions.alias("latest")
# A deployment row plus the feature columns of its serving revision (NULL while nothing serves) and the
# state and endpoint of its newest revision (a canary's).
_SELECT = sa.select(deployments, _serving.c.features.label("serving_features"),
                    _latest.c.state.label("latest_state"), _latest.c.endpoint.label("latest_endpoint")).select_from(
    deployments.outerjoin(_serving, (_serving.c.deployment_id == deployments.c.id)
                          & (_serving.c.revision == deployments.c.serving_revision))
    .outerjoin(_latest, (_latest.c.deployment_id == deployments.c.id) & (_latest.c.revision == deployments.c.revision)))


def _deployment(row) -> m.Deployment:
    config = _loads(row.config) or {}
    canary = None
    if row.latest_state == m.CANARY:
        canary = {"revision": row.revision, "percent": config.get("canary_percent"), "endpoint": row.latest_endpoint}
    return m.Deployment(
        name=row.name, status=row.status, endpoint=row.endpoint, model_uri=row.model_uri,
        training_data_uri=row.training_data_uri, config=config, revision=row.revision,
        serving_revision=row.serving_revision, features=_loads(row.serving_features), canary=canary,
        error=row.error, created_at=row.created_at, updated_at=row.updated_at, address=row.address,
    )


def derive_status(status: str, latest: str, latest_error: str | None, revision: int,
                  serving: int | None) -> tuple[str, str | None]:
    """The status and error users see, from the newest revision and whether an older one still serves.

    A failed update leaves the previous revision serving: the deployment stays READY and `error` says
    why the update failed. Without a serving revision a failure is FAILED.
    """
    if status == m.DELETING:
        return m.DELETING, None
    if latest == m.FAILED:
        if serving is not None and serving != revision:
            return m.READY, f"update to revision {revision} failed, revision {serving} keeps serving: {latest_error}"
        return m.FAILED, latest_error
    if latest == m.CANARY:  # the previous revision serves the rest of the traffic
        return m.READY, None
    return latest, None


class Repository:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                create_schema(self.engine)
                self._schema_ready = True

    def _tx(self, work: Callable[[sa.Connection], object]):
        try:
            if not self._schema_ready:
                self._ensure_schema()
            with write_transaction(self.engine) as conn:
                return work(conn)
        except sa.exc.IntegrityError:
            raise
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise Unavailable(f"the database is unavailable: {exc.orig}") from None

    # ---- what the API does -----------------------------------------------------------------------

    def create(self, name: str, model_uri: str, training_data_uri: str, config: dict) -> m.Deployment:
        try:
            return self._tx(lambda conn: self._create(conn, name, model_uri, training_data_uri, config))
        except sa.exc.IntegrityError:
            if self._tx(lambda conn: conn.execute(sa.select(deployments.c.status).where(
                    deployments.c.name == name)).scalar()) == m.DELETING:
                raise Conflict(f"deployment '{name}' is being deleted; create it again once it is gone") from None
            raise Conflict(f"a deployment named '{name}' already exists; update it with PATCH "
                           f"or delete it first") from None

    def get(self, name: str) -> m.Deployment:
        return self._tx(lambda conn: self._get(conn, name))

    def list(self) -> list[m.Deployment]:
        def work(conn):
            return [_deployment(r) for r in conn.execute(_SELECT.order_by(deployments.c.name))]
        return self._tx(work)

    def update(self, name: str, model_uri: str | None, training_data_uri: str | None,
               config: dict | None) -> m.Deployment:
        try:
            return self._tx(lambda conn: self._update(conn, name, model_uri, training_data_uri, config))
        except sa.exc.IntegrityError:
            raise Conflict(f"deployment '{name}' was updated at the same time; retry") from None

    def mark_deleting(self, name: str) -> m.Deployment:
        def work(conn):
            found = self._get(conn, name)
            if found.status != m.DELETING:
                now = utcnow()
                conn.execute(deployments.update().where(deployments.c.name == name)
                             .values(status=m.DELETING, error=None, updated_at=now))
                self._event(conn, name, None, found.status, m.DELETING, "delete requested", now)
            return self._get(conn, name)
        return self._tx(work)

    def apply_manifest(self, bucket: str, obj: str, generation: str, name: str, model_uri: str,
                       training_data_uri: str, config: dict | None) -> tuple[str, m.Deployment | None]:
        """Create or update `name` from an upload, once per (bucket, object, generation).

        Returns ("duplicate", None), ("created", d) or ("updated", d).
        """
        def work(conn):
            if not self._claim_upload(conn, bucket, obj, generation, name, "deploy"):
                return "duplicate", None
            exists = conn.execute(sa.select(deployments.c.id).where(deployments.c.name == name)).first()
            if exists is None:
                return "created", self._create(conn, name, model_uri, training_data_uri, config or {})
            return "updated", self._update(conn, name, model_uri, training_data_uri, config)
        try:
            return self._tx(work)
        except sa.exc.IntegrityError:
            return "duplicate", None

    def record_upload(self, bucket: str, obj: str, generation: str, outcome: str) -> bool:
        """Remember an upload that deployed nothing; False when it was seen before."""
        try:
            return self._tx(lambda conn: self._claim_upload(conn, bucket, obj, generation, None, outcome))
        except sa.exc.IntegrityError:
            return False

    def ask_canary(self, name: str, action: str) -> m.Deployment:
        """Record PROMOTE or ROLLBACK for the deployment's canary; Conflict when it has none."""
        def work(conn):
            found = self._get(conn, name)
            if found.canary is None:
                raise Conflict(f"deployment '{name}' has no canary to {action} (there is one while an update "
                               f"with config.canary_percent is on trial)")
            dep_id = conn.execute(sa.select(deployments.c.id).where(deployments.c.name == name)).scalar()
            conn.execute(revisions.update().where((revisions.c.deployment_id == dep_id)
                                                  & (revisions.c.revision == found.revision)).values(action=action))
            self._event(conn, name, found.revision, m.CANARY, m.CANARY, f"{action} requested", utcnow())
            return found
        return self._tx(work)

    def events(self, name: str) -> list[dict]:
        def work(conn):
            rows = conn.execute(sa.select(events).where(events.c.deployment == name).order_by(events.c.id))
            return [{"revision": r.revision, "from": r.from_status, "to": r.to_status, "message": r.message,
                     "time": m._iso(r.ts)} for r in rows]
        return self._tx(work)

    # ---- what the reconciler does ----------------------------------------------------------------

    def names(self) -> list[str]:
        return self._tx(lambda conn: list(conn.execute(sa.select(deployments.c.name)).scalars()))

    def load(self, name: str) -> tuple[m.Deployment, int, list[m.Revision]] | None:
        """The deployment, its id and all its revisions (oldest first); None if it is gone."""
        def work(conn):
            row = conn.execute(_SELECT.where(deployments.c.name == name)).first()
            if row is None:
                return None
            revs = conn.execute(sa.select(revisions).where(revisions.c.deployment_id == row.id)
                                .order_by(revisions.c.revision))
            return _deployment(row), row.id, [self._revision(row.id, name, r) for r in revs]
        return self._tx(work)

    def live_runtimes(self) -> list[tuple[str, int, dict]]:
        """(name, revision, runtime) of every revision that has something running."""
        return self._handles(revisions.c.runtime)

    def pending_builds(self) -> list[tuple[str, int, dict]]:
        """(name, revision, build handle) of every revision waiting on a build."""
        return self._handles(revisions.c.build)

    def _handles(self, column: sa.Column) -> list[tuple[str, int, dict]]:
        """(name, revision, the JSON in `column`) of every revision where `column` is set."""
        def work(conn):
            query = (sa.select(deployments.c.name, revisions.c.revision, column.label("handle"))
                     .join(revisions, revisions.c.deployment_id == deployments.c.id)
                     .where(column.is_not(None)))
            return [(r.name, r.revision, json.loads(r.handle)) for r in conn.execute(query)]
        return self._tx(work)

    def set_revision(self, rev: m.Revision, message: str | None = None, *, event: bool = False, **changes) -> None:
        """Change a revision's columns (state, artifact, runtime, ...), refresh its deployment, log the event
        (of a state change, or with `event` of this change whatever the state)."""
        def work(conn):
            now = utcnow()
            values = {k: (json.dumps(v) if k in ("runtime", "features", "config", "build") and v is not None else v)
                      for k, v in changes.items()}
            where = (revisions.c.deployment_id == rev.deployment_id) & (revisions.c.revision == rev.revision)
            before = conn.execute(sa.select(revisions.c.state).where(where)).scalar()
            if before is None:
                return
            conn.execute(revisions.update().where(where).values(updated_at=now, **values))
            state = changes.get("state", before)
            if state != before or event:
                self._event(conn, rev.name, rev.revision, before, state, message or changes.get("error"), now)
            if state == m.FAILED:
                conn.execute(deployments.update().where((deployments.c.id == rev.deployment_id)
                                                        & (deployments.c.serving_revision == rev.revision))
                             .values(serving_revision=None, endpoint=None))
            self._refresh(conn, rev.deployment_id, now)
        self._tx(work)
        for key, value in changes.items():
            setattr(rev, key, value)

    def switch_serving(self, rev: m.Revision, previous: m.Revision | None, drain_until: datetime) -> None:
        """Make `rev` the serving revision (READY) and let `previous` drain until `drain_until`."""
        def work(conn):
            now = utcnow()
            where = revisions.c.deployment_id == rev.deployment_id
            conn.execute(revisions.update().where(where & (revisions.c.revision == rev.revision))
                         .values(state=m.READY, error=None, deadline=None, action=None, updated_at=now))
            if rev.state != m.READY:
                self._event(conn, rev.name, rev.revision, rev.state, m.READY, f"serving at {rev.endpoint}", now)
            conn.execute(deployments.update().where(deployments.c.id == rev.deployment_id)
                         .values(serving_revision=rev.revision, endpoint=rev.endpoint,
                                 address=sa.func.coalesce(deployments.c.address, rev.endpoint)))
            if previous is not None and previous.revision != rev.revision:
                conn.execute(revisions.update().where(where & (revisions.c.revision == previous.revision))
                             .values(state=m.DRAINING, deadline=drain_until, updated_at=now))
                self._event(conn, rev.name, previous.revision, previous.state, m.DRAINING,
                            f"replaced by revision {rev.revision}", now)
            self._refresh(conn, rev.deployment_id, now)
        self._tx(work)
        rev.state, rev.action = m.READY, None

    def remove(self, deployment_id: int, name: str) -> None:
        def work(conn):
            conn.execute(revisions.delete().where(revisions.c.deployment_id == deployment_id))
            conn.execute(events.delete().where(events.c.deployment == name))
            conn.execute(deployments.delete().where(deployments.c.id == deployment_id))
            drift_store.forget(conn, name)
        self._tx(work)

    # ---- inside a transaction --------------------------------------------------------------------

    def _get(self, conn, name: str) -> m.Deployment:
        row = conn.execute(_SELECT.where(deployments.c.name == name)).first()
        if row is None:
            raise NotFound(f"no deployment named '{name}'")
        return _deployment(row)

    def _create(self, conn, name, model_uri, training_data_uri, config) -> m.Deployment:
        now = utcnow()
        result = conn.execute(deployments.insert().values(
            name=name, status=m.PENDING, revision=1, serving_revision=None, endpoint=None, model_uri=model_uri,
            training_data_uri=training_data_uri, config=json.dumps(config), error=None, created_at=now,
            updated_at=now))
        self._insert_revision(conn, result.inserted_primary_key[0], 1, model_uri, training_data_uri, config, now)
        self._event(conn, name, 1, None, m.PENDING, "deployment created", now)
        return self._get(conn, name)

    def _update(self, conn, name, model_uri, training_data_uri, config) -> m.Deployment:
        now = utcnow()
        # Bumping the revision first takes the row's write lock, so concurrent updates serialize.
        bumped = conn.execute(deployments.update().where((deployments.c.name == name)
                                                         & (deployments.c.status != m.DELETING))
                              .values(revision=deployments.c.revision + 1, updated_at=now))
        current = self._get(conn, name)
        if bumped.rowcount == 0:
            raise Conflict(f"deployment '{name}' is being deleted")
        model_uri = model_uri or current.model_uri
        training_data_uri = training_data_uri or current.training_data_uri
        config = current.config if config is None else config
        dep_id = conn.execute(sa.select(deployments.c.id).where(deployments.c.name == name)).scalar_one()
        conn.execute(deployments.update().where(deployments.c.id == dep_id).values(
            model_uri=model_uri, training_data_uri=training_data_uri, config=json.dumps(config)))
        self._insert_revision(conn, dep_id, current.revision, model_uri, training_data_uri, config, now)
        self._event(conn, name, current.revision, None, m.PENDING, "update requested", now)
        self._refresh(conn, dep_id, now)
        return self._get(conn, name)

    @staticmethod
    def _insert_revision(conn, dep_id, revision, model_uri, training_data_uri, config, now) -> None:
        conn.execute(revisions.insert().values(
            deployment_id=dep_id, revision=revision, state=m.PENDING, model_uri=model_uri,
            training_data_uri=training_data_uri, config=json.dumps(config), created_at=now, updated_at=now))

    def _refresh(self, conn, dep_id: int, now: datetime) -> None:
        dep = conn.execute(sa.select(deployments).where(deployments.c.id == dep_id)).first()
        latest = conn.execute(sa.select(revisions.c.state, revisions.c.error).where(
            (revisions.c.deployment_id == dep_id) & (revisions.c.revision == dep.revision))).first()
        status, error = derive_status(dep.status, latest.state, latest.error, dep.revision, dep.serving_revision)
        if (status, error) != (dep.status, dep.error):
            conn.execute(deployments.update().where(deployments.c.id == dep_id)
                         .values(status=status, error=error, updated_at=now))

    @staticmethod
    def _event(conn, name, revision, before, after, message, now) -> None:
        conn.execute(events.insert().values(deployment=name, revision=revision, from_status=before,
                                            to_status=after, message=message, ts=now))

    @staticmethod
    def _claim_upload(conn, bucket, obj, generation, name, outcome) -> bool:
        key = hashlib.sha256(f"{bucket}\0{obj}\0{generation}".encode()).hexdigest()
        if conn.execute(sa.select(upload_events.c.key).where(upload_events.c.key == key)).first():
            return False
        conn.execute(upload_events.insert().values(key=key, bucket=bucket[:255], object=obj,
                                                   generation=str(generation)[:32], deployment=name,
                                                   outcome=outcome, ts=utcnow()))
        return True

    @staticmethod
    def _revision(dep_id: int, name: str, r) -> m.Revision:
        return m.Revision(
            deployment_id=dep_id, name=name, revision=r.revision, state=r.state, model_uri=r.model_uri,
            training_data_uri=r.training_data_uri, config=_loads(r.config) or {}, features=_loads(r.features),
            build=_loads(r.build), action=r.action, artifact=r.artifact, runtime=_loads(r.runtime),
            endpoint=r.endpoint, error=r.error, deadline=r.deadline, restarts=r.restarts, crashed_at=r.crashed_at,
            retry_at=r.retry_at, created_at=r.created_at)
