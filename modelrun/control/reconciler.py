"""The deploy pipeline as reconciliation (design 3.2): each pass moves every deployment forward from
whatever state it finds, one idempotent step after another, and never waits long for a server.

Per deployment, the newest revision goes PENDING → BUILDING (validate + stage + reference profile) → DEPLOYING (start, poll
health across passes, check the model's inputs against the training data) → READY, when it becomes the
serving revision and the previous one drains for `drain_grace` seconds before it is stopped. Every revision
but a canary starts at the deployment's address (its endpoint for life; see `_step`). Any failure
is FAILED with a one-line reason and whatever that revision had made is stopped and removed. A serving
server that died is restarted after a backoff (its revision shows DEPLOYING meanwhile, each crash is an
event); `restart_limit` crashes within `restart_window` make it FAILED. DELETING tears everything down.
Revisions that are neither the newest nor serving are stopped and removed (RETIRED).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from modelrun.control import inspect
from modelrun.control import models as m
from modelrun.control.backends import Builder, Pending, Runner
from modelrun.control.leases import Leases
from modelrun.control.references import References
from modelrun.control.repository import Repository, utcnow
from modelrun.errors import ModelrunError, Unavailable
from modelrun.settings import Settings

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, settings: Settings, repo: Repository, builder: Builder, runner: Runner,
                 references: References, leases: Leases):
        self.settings = settings
        self.repo = repo
        self.leases = leases
        self.builder = builder
        self.runner = runner
        self.references = references
        self._reference_tried: set[tuple[str, int]] = set()
        self._lock = threading.Lock()  # one pass at a time in this process; leases keep processes apart

    def run_once(self) -> None:
        with self._lock:
            for name in self.repo.names():
                if not self.leases.acquire(name):
                    continue  # another control-plane process is acting on it now
                try:
                    self._deployment(name)
                except Unavailable:
                    raise
                except Exception:  # one broken deployment must not stop the others
                    log.exception("reconciling deployment %s failed; retrying next pass", name)
                finally:
                    self.leases.release(name)
            self.runner.sweep(self._owned)

    def _owned(self) -> tuple[list[tuple[str, int, dict]], set[str]]:
        """What no sweep may stop: every live revision's server, and every deployment another process holds
        the lease of (it may be starting a server it has not recorded yet). Read after the runner listed its
        servers, so a server started since is never in that list."""
        busy = self.leases.held_by_others()
        return self.repo.live_runtimes(), busy

    def stop_all(self) -> None:
        """Stop every server this home runs. Revisions keep their state and forget the process, so the
        next start starts them again (READY ones on their previous port when it is free). Servers of a
        runner that outlives the control plane (`runner.detached`, Cloud Run) keep running."""
        if self.runner.detached:
            return
        with self._lock:
            try:
                for name in self.repo.names():
                    loaded = self.repo.load(name)
                    for rev in loaded[2] if loaded else []:
                        if rev.runtime:
                            self.runner.stop(rev.runtime)
                            self.repo.set_revision(rev, runtime=None)
            except Exception:  # the database is gone: the pidfiles still name every server
                log.warning("could not read the deployments while stopping; stopping by pidfile", exc_info=True)
            finally:
                self.runner.sweep(lambda: ([], set()))

    # ---- one deployment --------------------------------------------------------------------------

    def _deployment(self, name: str) -> None:
        loaded = self.repo.load(name)
        if loaded is None:
            return
        dep, dep_id, revs = loaded
        if dep.status == m.DELETING:
            self._teardown(dep_id, name, revs)
            return
        latest = next(r for r in revs if r.revision == dep.revision)
        serving = next((r for r in revs if r.revision == dep.serving_revision), None)
        address = dep.address or (serving.endpoint if serving else None)
        for rev in revs:
            if rev is not latest and rev is not serving:
                self._retire(rev, latest.revision)
        if serving is not None and serving is not latest:
            self._step(serving, address, previous=None, serving=True)
        self._step(latest, address, previous=serving if serving is not latest else None, serving=latest is serving)

    def _step(self, rev: m.Revision, address: str | None, previous: m.Revision | None,
              serving: bool = False) -> None:
        """`address`: the deployment's endpoint for life, where every revision but a canary is started (None
        until its first revision serves; a deployment from before addresses were kept has its serving
        revision's endpoint)."""
        if rev.state == m.PENDING:
            self.repo.set_revision(rev, state=m.BUILDING, message="validating and staging the model")
        if rev.state == m.BUILDING:
            try:
                build = self.builder.build(rev)
                if isinstance(build, Pending):
                    if build.handle != rev.build:
                        self.repo.set_revision(rev, build=build.handle, message=build.message, event=True)
                    return
                self.references.ensure(rev, build.features)
            except Unavailable as exc:  # storage or the database did not answer: try again next pass
                log.warning("%s revision %d: building waits: %s", rev.name, rev.revision, exc.message)
                return
            except (ModelrunError, OSError) as exc:
                return self._fail(rev, _reason(exc))
            self.repo.set_revision(rev, state=m.DEPLOYING, build=None, artifact=build.artifact,
                                   features=build.features, message="starting the model server")
        if rev.state == m.DEPLOYING:
            return self._deploying(rev, address, previous, serving)
        if rev.state == m.CANARY:
            return self._canary(rev, address, previous)
        if rev.state == m.READY:
            self._reference(rev)
            return self._supervise(rev, address)
        if rev.state == m.FAILED and (rev.runtime or rev.artifact or rev.build):
            self._fail(rev, rev.error or "failed")

    def _deploying(self, rev: m.Revision, address: str | None, previous: m.Revision | None,
                   serving: bool = False) -> None:
        # A revision that served before is restarted after a failed start, with backoff; a new one fails.
        give_up = self._crashed if serving else self._fail
        percent = rev.config.get("canary_percent")
        canary = previous is not None and bool(percent) and rev.action != m.PROMOTE
        if not rev.runtime:
            if rev.retry_at is not None and utcnow() < rev.retry_at:
                return  # backing off after a crash
            try:
                started = self.runner.start(rev, rev.features or [], None if canary else address)
            except (ModelrunError, OSError) as exc:  # OSError: the staged bundle is gone
                return give_up(rev, _reason(exc))
            deadline = utcnow() + timedelta(seconds=self.settings.start_timeout)
            self.repo.set_revision(rev, runtime=started.runtime, endpoint=started.endpoint, deadline=deadline)
            return
        probe = self.runner.probe(rev.runtime)
        if probe.state == "exited":
            reason = probe.reason or "the model server exited"
            if "FEATURE_NAMES" in reason:  # the server refused the training data's columns for its input
                reason += f" (the training data's feature columns: {', '.join(rev.features or [])})"
            return give_up(rev, reason)
        if probe.state != "serving":
            if rev.deadline is not None and utcnow() > rev.deadline:
                give_up(rev, f"the model server did not become ready within {self.settings.start_timeout:.0f} s")
            return
        try:
            inspect.check_inputs(self.runner.model_inputs(rev.runtime, rev.name), rev.features or [])
        except ModelrunError as exc:
            return self._fail(rev, exc.message)
        if canary:
            if self._move_traffic(rev, rev.runtime, previous.runtime, percent, give_up):
                self.repo.set_revision(rev, state=m.CANARY, deadline=None,
                                       message=f"canary at {rev.endpoint}: {percent}% of the traffic, revision "
                                               f"{previous.revision} the rest, until promoted or rolled back")
            return
        if address and rev.endpoint != address:  # started as a canary, its trial now over
            return self._relocate(rev, address, previous)
        self._switch(rev, previous, give_up)

    def _switch(self, rev: m.Revision, previous: m.Revision | None, give_up=None) -> None:
        if not self._move_traffic(rev, rev.runtime, previous.runtime if previous else None, 100,
                                  give_up or self._fail):
            return
        drain_until = utcnow() + timedelta(seconds=self.settings.drain_grace)
        self.repo.switch_serving(rev, previous, drain_until)
        log.info("%s revision %d is READY at %s", rev.name, rev.revision, rev.endpoint)

    def _move_traffic(self, rev: m.Revision, runtime: dict, other: dict | None, percent: int, give_up) -> bool:
        """`runtime` gets `percent` of the traffic, `other` the rest. False when it did not happen: the runner
        did not answer (the next pass tries again) or refused (`give_up(rev, reason)` was called)."""
        try:
            self.runner.serve(runtime, other, percent)
            return True
        except Unavailable as exc:
            log.warning("%s revision %d: moving traffic waits: %s", rev.name, rev.revision, exc.message)
        except ModelrunError as exc:
            give_up(rev, exc.message)
        return False

    def _canary(self, rev: m.Revision, address: str | None, previous: m.Revision | None) -> None:
        """A canary carries out what was asked of it; without a revision beside it, it takes all traffic."""
        stopped = (rev.action is None and previous is not None and rev.runtime is not None
                   and self.runner.probe(rev.runtime).state == "exited")
        if rev.action == m.ROLLBACK or stopped:
            reason = "the canary's model server stopped" if stopped else "rolled back on request"
            if previous is None or self._move_traffic(rev, previous.runtime, None, 100, self._fail):
                self._fail(rev, reason)
            return
        if not rev.runtime:  # stopped with `modelrun up`: start it again
            self.repo.set_revision(rev, state=m.DEPLOYING, retry_at=None, message="restarting the canary: not running")
            return self._deploying(rev, address, previous)
        if rev.action == m.PROMOTE or previous is None:
            if address and rev.endpoint != address:
                return self._relocate(rev, address, previous)
            self.repo.set_revision(rev, action=None)
            self._switch(rev, previous)

    def _relocate(self, rev: m.Revision, address: str, previous: m.Revision | None) -> None:
        """A canary that is to take all the traffic, on an endpoint of its own (locally), moves to the
        deployment's: a server of it starts there beside the serving one, and takes over as any update does.
        The canary's own server stops now: its endpoint ends with the trial."""
        self.runner.stop(rev.runtime)
        self.repo.set_revision(rev, state=m.DEPLOYING, action=m.PROMOTE, runtime=None, deadline=None, retry_at=None,
                               message=f"promoted: starting at the deployment's endpoint {address}")
        self._deploying(rev, address, previous)

    def _reference(self, rev: m.Revision) -> None:
        """A revision that was READY before drift monitoring existed gets its reference now (one try per
        process: its training data may be gone)."""
        key = (rev.name, rev.revision)
        if key in self._reference_tried:
            return
        self._reference_tried.add(key)
        try:
            self.references.ensure(rev, rev.features or [])
        except (ModelrunError, OSError) as exc:
            log.warning("%s revision %d: no drift reference: %s", rev.name, rev.revision, _reason(exc))

    def _supervise(self, rev: m.Revision, address: str | None) -> None:
        """A READY revision whose server crashed is restarted after a backoff; one that is not running (after
        a restart of `modelrun up`) is started again at once."""
        if rev.runtime:
            probe = self.runner.probe(rev.runtime)
            if probe.state != "exited":
                return
            return self._crashed(rev, probe.reason or "the model server exited")
        self.repo.set_revision(rev, state=m.DEPLOYING, runtime=None, retry_at=None, message="restarting: not running")
        self._deploying(rev, address, previous=None, serving=True)

    def _crashed(self, rev: m.Revision, reason: str) -> None:
        """The server of a revision that serves died, or could not start again: restart it after a backoff,
        or mark it FAILED when it crashed `restart_limit` times within `restart_window` seconds."""
        now, limit = utcnow(), self.settings.restart_limit
        window = timedelta(seconds=self.settings.restart_window)
        fresh = rev.crashed_at is None or now - rev.crashed_at > window
        count, first = (1, now) if fresh else ((rev.restarts or 0) + 1, rev.crashed_at)
        if count >= limit:
            return self._fail(rev, f"the model server crashed {count} times within "
                                   f"{self.settings.restart_window:.0f} s; the last time: {reason}")
        if rev.runtime:
            self.runner.stop(rev.runtime)
        delay = min(self.settings.restart_backoff * 2 ** (count - 1), 60.0)
        self.repo.set_revision(rev, state=m.DEPLOYING, runtime=None, deadline=None, restarts=count, crashed_at=first,
                               retry_at=now + timedelta(seconds=delay), event=True,
                               message=f"restarting in {delay:.1f} s (crash {count} of {limit} allowed within "
                                       f"{self.settings.restart_window:.0f} s): {reason}")
        log.warning("%s revision %d crashed (%d of %d): %s; restarting in %.1f s", rev.name, rev.revision, count,
                    limit, reason, delay)

    def _fail(self, rev: m.Revision, reason: str) -> None:
        self._release(rev)
        self.repo.set_revision(rev, state=m.FAILED, error=reason, runtime=None, build=None, artifact=None,
                               deadline=None, action=None)
        log.warning("%s revision %d FAILED: %s", rev.name, rev.revision, reason)

    def _retire(self, rev: m.Revision, newest: int) -> None:
        if rev.state == m.DRAINING and rev.runtime and rev.deadline and utcnow() < rev.deadline:
            return
        if rev.state in (m.FAILED, m.RETIRED) and not rev.runtime and not rev.artifact and not rev.build:
            return
        self._release(rev)
        state = m.FAILED if rev.state == m.FAILED else m.RETIRED
        self.repo.set_revision(rev, state=state, runtime=None, build=None, artifact=None, deadline=None,
                               message=f"stopped: superseded by revision {newest}")

    def _release(self, rev: m.Revision) -> None:
        """Stop what the revision has running and remove what was built for it (each step safe to repeat)."""
        if rev.build:
            self.builder.cancel(rev.build)
        if rev.runtime:
            self.runner.stop(rev.runtime)
        if rev.artifact:
            self.builder.remove(rev.artifact)

    def _teardown(self, dep_id: int, name: str, revs: list[m.Revision]) -> None:
        for rev in revs:
            self._release(rev)
        self.builder.remove_all(name)
        self.repo.remove(dep_id, name)
        log.info("deployment %s deleted", name)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ModelrunError):
        return exc.message
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
