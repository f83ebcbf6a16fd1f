"""What `modelrun predict` prints: CSV when standard output is not a terminal, a table on a terminal.

CSV (for `| head`, `> out.csv`, a spreadsheet): the input columns as given, then every output; an output
with several values per row is one column per value, `name[0]`, `name[1]`, …; floats are written in full
(their repr). On a terminal the outputs come first, then the input columns that fit the width, and a note
says how many were left out. `--json` is printed by `cli_output.echo_json`, not here.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import IO, Any

# Cells of a table column besides its text: rich's default padding, one space either side.
_PADDING = 2


def print_predictions(rows: list[dict], predictions: list[dict]) -> None:
    if sys.stdout.isatty():
        predictions_table(rows, predictions)
        return
    try:
        write_csv(rows, predictions, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` has read enough: stop quietly, without a traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def write_csv(rows: list[dict], predictions: list[dict], out: IO[str]) -> None:
    inputs = _keys(rows)
    outputs = _output_sizes(predictions)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*inputs, *(name if size is None else f"{name}[{i}]"
                                for name, size in outputs.items() for i in range(size or 1))])
    for row, prediction in zip(rows, predictions, strict=True):
        cells = [_cell(row.get(name)) for name in inputs]
        for name, size in outputs.items():
            value = prediction.get(name)
            if size is None:
                cells.append(_cell(value))
            else:
                values = value if isinstance(value, list) else [value]
                cells += [_cell(v) for v in values] + [""] * (size - len(values))
        writer.writerow(cells)


def predictions_table(rows: list[dict], predictions: list[dict], console=None) -> None:
    """Outputs first (never shortened: a cell too wide for the terminal wraps), then the input columns in
    their order for as long as they fit; a last line counts the ones left out."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(box=None, header_style="")
    columns, used = [], 0
    for name in _keys(predictions):
        columns.append([_fmt(p.get(name, "")) for p in predictions])
        used += _width(name, columns[-1])
        table.add_column(Text(name, style="bold"), style="bold", overflow="fold")
    inputs = _keys(rows)
    shown = 0
    for name in inputs:
        cells = [_fmt(row.get(name, "")) for row in rows]
        used += _width(name, cells)
        if used > console.width:
            break
        columns.append(cells)
        table.add_column(Text(name), no_wrap=True)
        shown += 1
    for cells in zip(*columns, strict=True):
        table.add_row(*map(Text, cells))
    console.print(table, highlight=False)
    hidden = inputs[shown:]
    if hidden:
        which = hidden[0] if len(hidden) == 1 else f"{hidden[0]} to {hidden[-1]}"
        console.print(f"+ {len(hidden)} more input column{'s' if len(hidden) > 1 else ''}, {which} "
                      f"(--json or a pipe shows all)", style="dim", highlight=False, markup=False)


def _keys(dicts: list[dict]) -> list[str]:
    """Every key, in the order the rows first give them."""
    return list(dict.fromkeys(key for d in dicts for key in d))


def _output_sizes(predictions: list[dict]) -> dict[str, int | None]:
    """Each output and its number of values per row; None for an output with one value (a scalar)."""
    sizes: dict[str, int | None] = {}
    for prediction in predictions:
        for name, value in prediction.items():
            if isinstance(value, list):
                sizes[name] = max(sizes.get(name) or 1, len(value))
            else:
                sizes.setdefault(name, None)
    return sizes


def _cell(value: Any) -> str:
    """A CSV cell: a float in full (repr, so it reads back exactly), a value as JSON would spell it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool | list | dict):
        return json.dumps(value)
    return str(value)


def _fmt(value: Any) -> str:
    """A table cell: floats to six significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _width(header: str, cells: list[str]) -> int:
    from rich.cells import cell_len

    return max(cell_len(line) for text in (header, *cells) for line in text.splitlines() or [""]) + _PADDING
