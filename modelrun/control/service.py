"""What the REST API and the upload handler ask for: validated writes that record desired state.

A write returns at once (the reconciler does the work) and sets `wake` so a local loop runs now.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from modelrun.control import models as m
from modelrun.control.backends import Storage
from modelrun.control.repository import Repository
from modelrun.errors import InvalidInput, NotFound


class Deployments:
    def __init__(self, repo: Repository, storage: Storage, wake: threading.Event,
                 refresh_drift: Callable[[], dict[str, list[dict]]]):
        self.repo = repo
        self.storage = storage
        self.wake = wake
        self.refresh_drift = refresh_drift

    def create(self, body: object) -> m.Deployment:
        request = m.parse(m.CreateRequest, body)
        self._check_uris(request.model_uri, request.training_data_uri)
        created = self.repo.create(request.name, request.model_uri, request.training_data_uri,
                                   m.config_dict(request.config))
        self.wake.set()
        return created

    def list(self) -> list[m.Deployment]:
        return self.repo.list()

    def get(self, name: str) -> m.Deployment:
        return self.repo.get(m.check_name(name))

    def update(self, name: str, body: object) -> m.Deployment:
        m.check_name(name)
        request = m.parse(m.UpdateRequest, body)
        if request.model_uri is None and request.training_data_uri is None and request.config is None:
            raise InvalidInput("nothing to update: give at least one of model_uri, training_data_uri, config")
        self._check_uris(request.model_uri, request.training_data_uri)
        config = None if request.config is None else m.config_dict(request.config)
        updated = self.repo.update(name, request.model_uri, request.training_data_uri, config)
        self.wake.set()
        return updated

    def delete(self, name: str) -> m.Deployment:
        deleting = self.repo.mark_deleting(m.check_name(name))
        self.wake.set()
        return deleting

    def promote(self, name: str) -> m.Deployment:
        """Ask that the canary get all the traffic (the reconciler moves it)."""
        return self._ask(name, m.PROMOTE)

    def rollback(self, name: str) -> m.Deployment:
        """Ask that the canary be dropped and the serving revision get all the traffic again."""
        return self._ask(name, m.ROLLBACK)

    def _ask(self, name: str, action: str) -> m.Deployment:
        found = self.repo.ask_canary(m.check_name(name), action)
        self.wake.set()
        return found

    def events(self, name: str) -> list[dict]:
        self.repo.get(m.check_name(name))
        return self.repo.events(name)

    def drift(self, name: str, window: str | None = None) -> dict:
        """Refresh drift, then the deployment's reports: every window, or the one named."""
        self.repo.get(m.check_name(name))
        reports = self.refresh_drift().get(name, [])
        if window is None:
            return {"deployment": name, "windows": reports}
        for report in reports:
            if report["window"]["id"] == window:
                return report
        known = ", ".join(r["window"]["id"] for r in reports) or "none yet (no reference or no predictions)"
        raise NotFound(f"deployment '{name}' has no drift window '{window}'; its windows: {known}")

    def _check_uris(self, *uris: str | None) -> None:
        for uri in uris:
            if uri is not None:
                self.storage.check_uri(uri)
