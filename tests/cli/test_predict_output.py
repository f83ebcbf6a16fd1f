"""What `modelrun predict` prints for a wide model: CSV a program can read back exactly when piped, and on
a terminal a table that shows the outputs whole and says how many input columns it left out."""

from __future__ import annotations

import csv
import io

from rich.console import Console

from modelrun.cli_predict import predictions_table, write_csv

FEATURES = [f"feature_{i}" for i in range(30)]


def wide_rows(n: int = 3) -> list[dict]:
    return [{name: 1 / (i + 3) + r for i, name in enumerate(FEATURES)} for r in range(n)]


def wide_predictions(n: int = 3) -> list[dict]:
    return [{"price": 123456.78901234567 + r, "probs": [0.1, 0.2 + r, 0.7]} for r in range(n)]


def csv_of(rows, predictions) -> str:
    out = io.StringIO()
    write_csv(rows, predictions, out)
    return out.getvalue()


def terminal(rows, predictions, width: int = 80) -> str:
    console = Console(record=True, width=width, force_terminal=True, file=io.StringIO())
    predictions_table(rows, predictions, console=console)
    return console.export_text()


def test_csv_has_every_input_column_then_every_output_value_in_full():
    rows, predictions = wide_rows(), wide_predictions()
    text = csv_of(rows, predictions)
    assert "…" not in text
    read = list(csv.reader(io.StringIO(text)))
    assert read[0] == [*FEATURES, "price", "probs[0]", "probs[1]", "probs[2]"]
    assert len(read) == 1 + len(rows)
    for line, row, prediction in zip(read[1:], rows, predictions, strict=True):
        assert [float(v) for v in line[:30]] == [row[f] for f in FEATURES]  # exactly, not rounded
        assert float(line[30]) == prediction["price"]
        assert [float(v) for v in line[31:]] == prediction["probs"]


def test_csv_keeps_the_input_columns_as_given():
    # Rows read from a CSV file are strings: written back unchanged, columns in the order the rows give them.
    rows = [{"id": "a-1", "city": "lyon", "area": "80.50"}, {"area": "12", "id": "b-2", "city": "Saint-Étienne, Loire"}]
    predictions = [{"price": 0.5, "label": "cheap", "ok": True}, {"price": 2.0, "label": "dear", "ok": False}]
    read = list(csv.reader(io.StringIO(csv_of(rows, predictions))))
    assert read == [["id", "city", "area", "price", "label", "ok"],
                    ["a-1", "lyon", "80.50", "0.5", "cheap", "true"],
                    ["b-2", "Saint-Étienne, Loire", "12", "2.0", "dear", "false"]]


def test_terminal_table_shows_outputs_first_and_counts_the_input_columns_that_do_not_fit():
    text = terminal(wide_rows(), wide_predictions())
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["price", "probs", "feature_0"]
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in text
    for r in range(3):  # every output value is there whole
        assert f"{123456.78901234567 + r:.6g}" in lines[1 + r]
        assert f"[0.1, {0.2 + r:.6g}, 0.7]" in lines[1 + r]
    shown = [name for name in lines[0].split() if name in FEATURES]
    assert shown == FEATURES[:len(shown)] and shown
    hidden = 30 - len(shown)
    note = " ".join(lines[4:])
    assert note.startswith(f"+ {hidden} more input columns, {FEATURES[len(shown)]} to feature_29")
    assert "--json" in note


def test_terminal_table_wraps_an_output_wider_than_the_terminal_rather_than_cutting_it():
    predictions = [{"scores": [0.123456 + i for i in range(20)]}]
    text = terminal(wide_rows(1), predictions, width=60)
    assert "…" not in text
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "".join(text.split()).startswith("scores[0.123456,1.12346,2.12346")
    assert "19.1235]" in "".join(text.split())
    assert "+ 30 more input columns" in text


def test_terminal_table_has_no_note_when_every_input_column_fits():
    text = terminal([{"rooms": 3, "city": "lyon"}], [{"price": 251234.5}], width=80)
    assert text.splitlines()[0].split() == ["price", "rooms", "city"]
    assert "more input" not in text
