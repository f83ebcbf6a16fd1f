"""The control plane: one object that wires settings, SQL and the backends to the API, the upload
handler and the reconciler. `functions/main.py` builds one per process, lazily.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import uuid

import flask
import sqlalchemy as sa

from modelrun.control.api import Api
from modelrun.control.backends import BUILDERS, RUNNERS, STORAGES, choose
from modelrun.control.journals import Journals
from modelrun.control.leases import Leases
from modelrun.control.reconciler import Reconciler
from modelrun.control.references import References
from modelrun.control.repository import Repository
from modelrun.control.service import Deployments
from modelrun.control.upload import UploadHandler
from modelrun.db import make_engine
from modelrun.drift.service import DriftService
from modelrun.errors import ModelrunError
from modelrun.settings import Settings

log = logging.getLogger(__name__)


class ControlPlane:
    """The interface `functions/main.py` and `modelrun up` use.

    `wake` is set by every API write and every upload that deployed something: a local loop waits on it
    (`wake.wait(settings.reconcile_interval)`, then `wake.clear()`) and calls `reconcile_once()`.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.wake = threading.Event()
        self.engine = make_engine(settings.resolved_database_url, cloudsql=settings.cloudsql)
        self.repo = Repository(self.engine)
        self.storage = choose(STORAGES, "storage", settings.storage)(settings)
        self.builder = choose(BUILDERS, "builder", settings.builder)(settings, self.storage)
        self.runner = choose(RUNNERS, "runner", settings.runner)(settings)
        self.drift = DriftService(self.engine, self.storage, webhook=settings.drift_webhook,
                                  reservoir=settings.drift_reservoir, gap_grace=settings.drift_gap_grace)
        self.deployments = Deployments(self.repo, self.storage, self.wake, self.refresh_drift)
        self.api = Api(settings, self.deployments)
        self.uploads = UploadHandler(settings, self.repo, self.storage, self.wake)
        self.references = References(self.engine, self.storage, sample_rows=settings.drift_sample_rows)
        leases = Leases(self.engine, holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                        ttl=settings.lease_seconds)
        self.journals = Journals(self.engine, settings.journal_uri)
        self.reconciler = Reconciler(settings, self.repo, self.builder, self.runner, self.references, leases)

    def handle_api(self, request: flask.Request) -> flask.Response:
        """The REST API of design 2.2 (never raises; errors are JSON responses)."""
        response = self.api.handle(request)
        self._reconcile_after_write()
        return response

    def handle_upload(self, event) -> None:
        """A `google.cloud.storage.object.v1.finalized` CloudEvent (design 2.3)."""
        self.uploads.handle(event)
        self._reconcile_after_write()

    def handle_reconcile(self, request: flask.Request) -> flask.Response:
        """The `reconcile` function (Cloud Scheduler calls it every minute): one pass; the statuses by name."""
        return self.api.handle_reconcile(request, self.reconcile_once)

    def _reconcile_after_write(self) -> None:
        """With `reconcile_on_write` (Cloud Functions, where no loop runs beside the request), a write is
        followed by one pass before the response, so a deploy starts now rather than at the next
        scheduled pass. Steps are short: builds and Cloud Run operations run on their own."""
        if not (self.settings.reconcile_on_write and self.wake.is_set()):
            return
        self.wake.clear()
        try:
            self.reconcile_once()
        except Exception:  # the write is recorded; the scheduled pass will do the work
            log.warning("the reconciler pass after a write failed; the next scheduled pass retries", exc_info=True)

    def kick(self) -> None:
        """Ask a waiting local loop to run a pass now (what API writes do)."""
        self.wake.set()

    def handle_build_event(self, event) -> bool:
        """A `google.cloud.pubsub.topic.v1.messagePublished` CloudEvent from Cloud Build's `cloud-builds` topic:
        when a revision waits on that build, run a reconcile pass now (polling stays the fallback). True when
        one did; builds nobody waits on (other builds of the project, a deleted revision) are logged and ignored."""
        build_id, status = _build_of(event)
        if not build_id:
            log.warning("build event without a build id ignored")
            return False
        waiting = [(name, rev) for name, rev, handle in self.repo.pending_builds()
                   if isinstance(handle, dict) and handle.get("build_id") == build_id]
        if not waiting:
            log.info("build event for Cloud Build %s (%s) ignored: no revision waits on it", build_id, status)
            return False
        name, rev = waiting[0]
        log.info("Cloud Build %s is %s: reconciling %s revision %d", build_id, status, name, rev)
        self.reconcile_once()
        return True

    def reconcile_once(self) -> None:
        """One pass over every deployment, then a replay of the prediction journals model servers kept in
        Cloud Storage when they stopped (with `journal_uri`); thread-safe (passes are serialized)."""
        self.reconciler.run_once()
        try:
            self.journals.replay()
        except (ModelrunError, sa.exc.SQLAlchemyError) as exc:  # storage or database down: the next pass retries
            log.warning("could not replay the prediction journals kept in %s: %s", self.settings.journal_uri,
                        getattr(exc, "message", None) or str(exc).splitlines()[0])

    def handle_drift(self, request: flask.Request) -> flask.Response:
        """The `drift` function (a scheduler calls it): refresh every deployment; a summary as JSON."""
        return self.api.handle_drift(request, self.refresh_drift)

    def refresh_drift(self) -> dict[str, list[dict]]:
        """Count new predictions into every deployment's drift, publish the dashboard; the reports by name."""
        return self.drift.refresh([d.to_json() for d in self.repo.list()])

    def shutdown(self) -> None:
        """Stop the local model servers of this home; deployments stay recorded and come back next start."""
        self.reconciler.stop_all()
        self.engine.dispose()


def _build_of(event) -> tuple[str | None, str | None]:
    """(build id, status) of a Pub/Sub CloudEvent from `cloud-builds`: the attributes, else the Build JSON."""
    data = event.data if hasattr(event, "data") else event
    message = (data or {}).get("message") or {}
    attributes = message.get("attributes") or {}
    build_id, status = attributes.get("buildId"), attributes.get("status")
    if not build_id and message.get("data"):
        try:
            build = json.loads(base64.b64decode(message["data"]))
            build_id, status = build.get("id"), build.get("status")
        except (ValueError, TypeError):
            return None, None
    return build_id, status
