"""Drift as the control plane offers it: refresh, keep the newest reports, alert, publish the dashboard.

`refresh(deployments)` is what the `drift` function, `modelrun up`'s loop and `GET .../drift` call; it
takes the control plane's deployments as plain dicts (name, status, revision, serving_revision, config).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import sqlalchemy as sa

from modelrun.db import write_transaction
from modelrun.drift import store
from modelrun.drift.alerts import Alerter, alert_payload
from modelrun.drift.config import drift_config
from modelrun.drift.publish import Publisher, order_windows
from modelrun.drift.refresh import Busy, Refresher, Target, utcnow
from modelrun.errors import Unavailable

log = logging.getLogger("modelrun.drift")


class DriftService:
    def __init__(self, engine: sa.Engine, storage, *, webhook: str | None = None, reservoir: int = 20000,
                 gap_grace: float = 120.0):
        self.engine = engine
        self.refresher = Refresher(engine, reservoir=reservoir, gap_grace=gap_grace)
        self.publisher = Publisher(storage)
        self.alerter = Alerter()
        self.webhook = webhook
        self._lock = threading.Lock()

    def refresh(self, deployments: list[dict]) -> dict[str, list[dict]]:
        """Count new predictions, store the new reports, send alerts, publish; return every stored report
        of each deployment, ordered as the dashboard shows them. Unavailable when the database is down."""
        try:
            return self._refresh(deployments)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise Unavailable(f"the database is unavailable: {str(exc.orig).splitlines()[0]}") from None

    def _refresh(self, deployments: list[dict]) -> dict[str, list[dict]]:
        with self._lock:
            targets = [Target(d["name"], d["status"], d["revision"], d.get("serving_revision"), d.get("config") or {})
                       for d in deployments if d["status"] != "DELETING"]
            now = utcnow()
            try:
                fresh = self.refresher.refresh(targets, now)
            except Busy:
                log.info("drift: another refresher ran at the same time; showing its reports")
                fresh = {}
            for target in targets:
                self._save(target, fresh.get(target.name, []), now)
            stored = {t.name: self.stored(t.name) for t in targets}
            try:
                self.publisher.publish([d for d in deployments if d["status"] != "DELETING"], stored, now)
            except Exception:  # the dashboard is a view; a failed write must not fail the refresh
                log.exception("drift: publishing the dashboard failed")
            return stored

    def stored(self, name: str) -> list[dict]:
        r = store.reports
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(r.c.report).where(r.c.deployment == name)).scalars().all()
        return order_windows([json.loads(text) for text in rows])

    def _save(self, target: Target, reports: list[dict], now) -> None:
        if not reports:
            return
        r = store.reports
        alerts = []
        url = drift_config(target.config).webhook or self.webhook
        with write_transaction(self.engine) as conn:
            before = {row.window_id: row for row in conn.execute(
                sa.select(r.c.window_id, r.c.status, r.c.alerted_status).where(r.c.deployment == target.name))}
            for report in reports:
                window = report["window"]["id"]
                old = before.get(window)
                alerted = old.alerted_status if old is not None else None
                if report["status"] == "drift" and alerted != "drift":
                    alerts.append(alert_payload(report, old.status if old is not None else None))
                    alerted = "drift"
                elif report["status"] != "drift":
                    alerted = report["status"]
                values = {"revision": report["revision"], "status": report["status"], "alerted_status": alerted,
                          "report": json.dumps(report, allow_nan=False), "updated_at": now}
                where = (r.c.deployment == target.name) & (r.c.window_id == window)
                if old is None:
                    conn.execute(r.insert().values(deployment=target.name, window_id=window, **values))
                else:
                    conn.execute(r.update().where(where).values(**values))
            self._forget_old_days(conn, target.name, drift_config(target.config).days, now)
        for payload in alerts:
            if url and _alert_window(payload["window"], now):
                self.alerter.send(url, payload)

    @staticmethod
    def _forget_old_days(conn, name: str, days: int, now) -> None:
        """Daily windows older than the config's `days` leave the reports and the stored aggregates."""
        first = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        r, b = store.reports, store.buckets
        conn.execute(r.delete().where((r.c.deployment == name) & r.c.window_id.like("____-__-__")
                                      & (r.c.window_id < first.strftime("%Y-%m-%d"))))
        conn.execute(b.delete().where((b.c.deployment == name) & (b.c.period == "day") & (b.c.start < first)))


def _alert_window(window: dict, now) -> bool:
    """Past days are history: a late row that tips yesterday's verdict is shown, not alerted."""
    return window.get("kind") != "day" or window["id"] == now.strftime("%Y-%m-%d")
