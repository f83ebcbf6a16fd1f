"""The control plane: one object that wires settings, SQL and the backends to the API, the upload
handler and the reconciler. `functions/main.py` builds one per process, lazily.
"""

from __future__ import annotations

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
