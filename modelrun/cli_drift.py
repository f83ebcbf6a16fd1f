"""What `modelrun drift` prints: per window a verdict line and a table of columns sorted by severity."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

VERDICTS = {"drift": "[bold red]DRIFT[/bold red]", "no_drift": "[green]no drift[/green]",
            "not_enough_data": "[yellow]not enough data[/yellow]"}


def _console() -> Console:
    # Piped output would otherwise be cut to 80 columns and wrap the table.
    return Console() if sys.stdout.isatty() else Console(width=120)


def print_reports(reports: list[dict]) -> None:
    console = _console()
    if not reports:
        console.print("no drift reports yet: the deployment needs a reference profile (built when it deploys) "
                      "and logged predictions", highlight=False)
    for report in reports:
        print_report(report, console)


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or _console()
    window = report["window"]
    rows = report["rows"]
    share = report["drifted_share"]
    console.print(f"[bold]{report['deployment']}[/bold] window [bold]{window['id']}[/bold] "
                  f"({window.get('start') or '?'} → {window.get('end') or '?'}), revision {report['revision']}: "
                  f"{VERDICTS.get(report['status'], report['status'])} — {rows['production']} production rows vs "
                  f"{rows['reference']} training rows, {share:.0%} of columns drifted{_rule(report)}",
                  highlight=False)
    table = Table("", "COLUMN", "TYPE", "TEST", "SCORE", "THRESHOLD", "MISSING train → prod", "FLAGS",
                  box=None, header_style="bold")
    for entry in report["features"] + report["outputs"]:
        kind = "output" if entry in report["outputs"] else entry["type"]
        flags = [name.replace("_", " ") for name, check in entry.get("checks", {}).items() if check.get("flagged")]
        table.add_row("[bold red]✖[/bold red]" if entry["drifted"] else "", entry["name"], kind, entry["test"] or "-",
                      _number(entry["score"]), _number(entry["threshold"]),
                      f"{entry['missing']['reference']:.1%} → {entry['missing']['production']:.1%}", ", ".join(flags))
    console.print(table, highlight=False)
    for other in report.get("other_revisions", []):
        console.print(f"  revision {other['revision']} in this window: {other['rows']['production']} rows, "
                      f"{VERDICTS.get(other['status'], other['status'])} against its own reference", highlight=False)
    for note in report.get("notes", []):
        console.print(f"  note: {note}", highlight=False)
    console.print()


def _rule(report: dict) -> str:
    threshold = report.get("drift_share_threshold")
    if threshold is None:
        return f" (method {report['method']}: any drifted column is dataset drift)"
    return f" (method {report['method']}: dataset drift at {threshold:.0%})"


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
