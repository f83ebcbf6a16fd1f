"""What the CLI shows: deploy progress, deployment tables, and reading prediction rows (JSON or CSV).

Predictions are printed by `cli_predict`.

Results go to standard output, progress and errors to standard error, so `--json` output can be piped.
rich is imported only when something is drawn.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from typing import Any

import click

from modelrun import errors

STAGES = {
    "PENDING": "queued for the reconciler",
    "BUILDING": "staging the model and training data",
    "DEPLOYING": "starting the model server",
    "READY": "serving",
    "FAILED": "failed",
    "DELETING": "tearing down",
}


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


class Progress:
    """`on_progress` for Client.wait: one line per stage with elapsed time (a live spinner on a TTY)."""

    def __init__(self, name: str, *, quiet: bool = False):
        self.name = name
        self.quiet = quiet
        self.started = time.monotonic()
        self.stage: str | None = None
        self.stage_started = self.started
        self.tty = sys.stderr.isatty()
        self._status = None

    def __enter__(self) -> Progress:
        if self.tty and not self.quiet:
            from rich.console import Console

            self.console = Console(stderr=True)
            self._status = self.console.status(f"{self.name}: submitted")
            self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, deployment: dict) -> None:
        status = deployment.get("status", "?")
        now = time.monotonic()
        if status != self.stage:
            if self.stage is not None:
                self._line(f"  {self.stage:<9} done in {now - self.stage_started:5.1f}s")
            self.stage, self.stage_started = status, now
            if status not in ("READY", "FAILED"):
                self._line(f"[{self.elapsed:6.1f}s] {self.name}: {status} — {STAGES.get(status, '')}")
        if self._status is not None:
            self._status.update(f"{self.name}: {status} — {STAGES.get(status, '')} ({self.elapsed:.1f}s)")

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        if self._status is not None:
            self.console.print(text, highlight=False)
        else:
            click.echo(text, err=True)


def deployment_table(deployments: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("NAME", "STATUS", "REV", "ENDPOINT", "MODEL", "UPDATED", box=None, header_style="bold")
    for d in deployments:
        table.add_row(d["name"], _status(d), str(d.get("revision") or ""), d.get("endpoint") or "-",
                      d.get("model_uri") or "", (d.get("updated_at") or "")[:19])
    Console().print(table)


def deployment_detail(d: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_header=False)
    for key in ("name", "status", "endpoint", "revision", "canary", "model_uri", "training_data_uri", "config",
                "features", "error", "created_at", "updated_at"):
        value = d.get(key)
        if key == "status":
            value = _status(d)
        elif key == "canary" and value:
            value = canary_line(value)
        elif key == "features" and isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        if value not in (None, "", {}) or key in ("status", "endpoint"):
            table.add_row(f"[bold]{key}[/bold]", str(value if value is not None else "-"))
    Console().print(table, highlight=False)


def canary_line(canary: dict) -> str:
    return (f"revision {canary['revision']} gets {canary['percent']}% of the traffic (on its own at "
            f"{canary['endpoint']}) until `modelrun promote` or `modelrun rollback`")


def _status(d: dict) -> str:
    colour = {"READY": "green", "FAILED": "red"}.get(d.get("status"), "yellow")
    return f"[{colour}]{d.get('status')}[/{colour}]"


def read_rows(source: str | None) -> list[dict]:
    """Rows from a JSON file (a list of objects, one object, or JSON lines) or a CSV file; '-' is stdin."""
    if source in (None, "-"):
        if source is None and sys.stdin.isatty():
            raise errors.InvalidInput("give a JSON or CSV file of rows, or pipe them on standard input (`-`)")
        text, kind = sys.stdin.read(), None
    else:
        try:
            with open(source, encoding="utf-8-sig") as f:
                text = f.read()
        except OSError as exc:
            raise errors.InvalidInput(f"cannot read {source}: {exc.strerror}") from None
        kind = {"csv": "csv", "json": "json", "jsonl": "json", "ndjson": "json"}.get(source.rsplit(".", 1)[-1].lower())
    stripped = text.lstrip()
    if not stripped:
        raise errors.InvalidInput("no rows given: the input is empty")
    if (kind or ("json" if stripped[0] in "[{" else "csv")) == "json":
        rows = _json_rows(stripped)
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise errors.InvalidInput("no rows given: the CSV has a header but no rows")
    return rows


def _json_rows(text: str) -> list[dict]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        try:  # JSON lines
            value = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise errors.InvalidInput(f"the rows are not valid JSON: {exc}") from None
    if isinstance(value, dict):
        value = value.get("rows", value.get("instances", [value]))
    if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
        raise errors.InvalidInput("JSON rows must be a non-empty list of objects keyed by feature name")
    return value
