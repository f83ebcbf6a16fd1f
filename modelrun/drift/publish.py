"""The dashboard's files, written through the Storage port (design 3.5).

The site is static: the HTML/JS/CSS of the `dashboard` package, plotly.js from the installed `plotly`
package (its pinned bundle, never a CDN), and JSON the page reads:
- data/index.json: every deployment with its status and the verdict of its summary window;
- data/deployments/<name>.json: its window reports and the daily history for "drift over time".
"""

from __future__ import annotations

import json
from importlib import resources

from modelrun.drift.report import SCHEMA, iso

SITE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
SUMMARY_WINDOWS = ("last-24h", "all")  # the window the home page shows, by preference


def site_files() -> dict[str, tuple[bytes, str]]:
    """{path: (bytes, content type)} of the static site."""
    site = resources.files("dashboard")
    files = {name: (site.joinpath(name).read_bytes(), kind) for name, kind in SITE_FILES.items()}
    plotly_js = resources.files("plotly") / "package_data" / "plotly.min.js"
    files["plotly.min.js"] = (plotly_js.read_bytes(), "text/javascript")
    return files


def order_windows(reports: list[dict]) -> list[dict]:
    """"all", "last-24h", then the days, newest first."""
    fixed = {"all": 0, "last-24h": 1}
    named = sorted((r for r in reports if r["window"]["id"] in fixed), key=lambda r: fixed[r["window"]["id"]])
    days = sorted((r for r in reports if r["window"]["id"] not in fixed), key=lambda r: r["window"]["id"], reverse=True)
    return named + days


def summary(deployment: dict, reports: list[dict], refreshed_at) -> dict:
    """One line of the home page."""
    by_id = {r["window"]["id"]: r for r in reports}
    chosen = next((by_id[w] for w in SUMMARY_WINDOWS if w in by_id), None)
    line = {"name": deployment["name"], "status": deployment["status"], "revision": deployment["revision"],
            "serving_revision": deployment.get("serving_revision"), "method": None, "window": None, "rows": 0,
            "drifted_share": None, "status_drift": "no_data", "drifted_features": [], "last_refresh": iso(refreshed_at)}
    if chosen is not None:
        line.update(method=chosen["method"], window=chosen["window"]["id"], rows=chosen["rows"]["production"],
                    drifted_share=chosen["drifted_share"], drifted_features=chosen["drifted_features"],
                    status_drift=chosen["status"] if chosen["rows"]["production"] else "no_data")
    return line


def detail(deployment: dict, reports: list[dict], generated_at) -> dict:
    ordered = order_windows(reports)
    days = [r for r in ordered if r["window"].get("kind") == "day"]
    history = [{"id": r["window"]["id"], "start": r["window"]["start"], "end": r["window"]["end"],
                "rows": r["rows"]["production"], "drifted_share": r["drifted_share"],
                "dataset_drift": r["dataset_drift"], "status": r["status"],
                "scores": {c["name"]: c["score"] for c in r["features"] + r["outputs"]},
                "drifted": {c["name"]: c["drifted"] for c in r["features"] + r["outputs"]}}
               for r in reversed(days)]
    return {"schema": SCHEMA, "deployment": deployment["name"], "status": deployment["status"],
            "revision": deployment["revision"], "generated_at": iso(generated_at), "windows": ordered,
            "history": history}


class Publisher:
    def __init__(self, storage):
        self.storage = storage
        self._site_written = False

    def publish(self, deployments: list[dict], reports: dict[str, list[dict]], now) -> None:
        """Write the site (once per process) and the JSON for `deployments` (dicts with name, status,
        revision, serving_revision) and their reports."""
        if not self._site_written:
            for path, (data, kind) in site_files().items():
                self.storage.publish(path, data, kind)
            self._site_written = True
        lines = [summary(d, reports.get(d["name"], []), now) for d in deployments]
        for d in deployments:
            self._json(f"data/deployments/{d['name']}.json", detail(d, reports.get(d["name"], []), now))
        self._json("data/index.json", {"schema": SCHEMA, "generated_at": iso(now), "deployments": lines})

    def _json(self, path: str, value: dict) -> None:
        self.storage.publish(path, json.dumps(value, allow_nan=False).encode(), "application/json")
