"""Drift alerts: one JSON POST to a webhook when a window's verdict turns to drifted.

Sending happens on one background thread, so drift computation never waits for a slow or dead endpoint.
A failed POST (network error, 429 or 5xx) is retried with exponential backoff; a 4xx other than 429
or the last failure is logged and dropped (the verdict stays on the dashboard).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger("modelrun.drift.alerts")


class Alerter:
    def __init__(self, *, attempts: int = 5, backoff: float = 1.0, timeout: float = 5.0):
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self._queue: queue.Queue = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0

    def send(self, url: str, payload: dict) -> None:
        """Queue one alert; returns at once."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="drift-alerts", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((url, payload))
        except queue.Full:
            log.error("drift alert for %s dropped: %d alerts are already waiting", payload.get("deployment"),
                      self._queue.qsize())

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait until every queued alert was sent or given up on (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            url, payload = self._queue.get()
            try:
                self._post(url, payload)
            finally:
                self._queue.task_done()

    def _post(self, url: str, payload: dict) -> None:
        import httpx

        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = httpx.post(url, json=payload, timeout=self.timeout)
                if response.status_code < 300:
                    self.sent += 1
                    log.info("drift alert sent for %s window %s", payload["deployment"], payload["window"]["id"])
                    return
                reason = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the endpoint refuses this alert; retrying will not help
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        self.failed += 1
        log.warning("drift alert for %s window %s not delivered to %s after %d attempt(s): %s",
                    payload["deployment"], payload["window"]["id"], url, attempt, reason)


def alert_payload(report: dict, previous: str | None) -> dict:
    """What the webhook receives."""
    return {"event": "drift", "deployment": report["deployment"], "revision": report["revision"],
            "window": report["window"], "status": report["status"], "previous_status": previous,
            "drifted_share": report["drifted_share"], "drifted_features": report["drifted_features"],
            "rows": report["rows"], "method": report["method"], "generated_at": report["generated_at"]}
