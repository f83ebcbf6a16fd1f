"""Checks on models and training data that need no TensorFlow (the control plane never imports it).

- A model is a Keras v3 `.keras` file (a zip with config.json) or a SavedModel folder (saved_model.pb).
- Training data is CSV, JSON (records or lines) or Parquet with at least one row; its columns, less a
  `label` column named in config, are the features.
- A running model's inputs must fit the features: one 2-D input of width k takes k feature columns;
  named inputs must each be a feature column.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from modelrun.errors import Unprocessable



@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1 for a dimension of any size


TRAINING_DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq")


def check_model(path: Path, uri: str) -> str:
    """Return "savedmodel" or "keras", or raise Unprocessable saying what the file is not."""
    if path.is_dir():
        if not any((path / f).is_file() for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise Unprocessable(f"{uri} is a folder but not a TensorFlow SavedModel: it has no saved_model.pb")
        if (path / "saved_model.pb").is_file() and (path / "saved_model.pb").stat().st_size == 0:
            raise Unprocessable(f"{uri} is a corrupt SavedModel: saved_model.pb is empty")
        return "savedmodel"
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise Unprocessable(f"{uri} is a corrupt .keras file: the zip archive is truncated or damaged")
        raise Unprocessable(f"{uri} is not a model: expected a Keras .keras file or a SavedModel folder "
                            f"(with saved_model.pb)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise Unprocessable(f"{uri} is a zip archive but not a Keras .keras model: it has no config.json")
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise Unprocessable(f"{uri} is a corrupt .keras file: {exc}") from None
    if broken:
        raise Unprocessable(f"{uri} is a corrupt .keras file: {broken} fails its checksum")
    return "keras"


def feature_columns(path: Path, uri: str, label: str | None) -> list[str]:
    """The training data's feature columns; Unprocessable when unreadable, empty or lacking the label."""
    suffix = path.suffix.lower()
    if suffix not in TRAINING_DATA_SUFFIXES:
        raise Unprocessable(f"{uri}: training data must be CSV, JSON or Parquet "
                            f"(a file ending in {', '.join(TRAINING_DATA_SUFFIXES)})")
    columns, rows = _read(path, uri, suffix)
    if rows < 1:
        raise Unprocessable(f"{uri}: the training data has no rows")
    if label is not None:
        if label not in columns:
            raise Unprocessable(f"{uri}: the label column '{label}' named in config is not in the training data "
                                f"(columns: {', '.join(columns)})")
        columns = [c for c in columns if c != label]
    if not columns:
        raise Unprocessable(f"{uri}: the training data has no feature columns")
    return columns


def _read(path: Path, uri: str, suffix: str) -> tuple[list[str], int]:
    kind = _kind(suffix)
    if kind == "Parquet":
        try:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path)
            return [str(c) for c in meta.schema_arrow.names], meta.metadata.num_rows
        except Exception as exc:  # pyarrow raises many types for unreadable files
            raise _unreadable(uri, kind, exc) from None
    frame = read_table(path, uri, nrows=50)
    return [str(c) for c in frame.columns], len(frame)


def read_table(path: Path, uri: str, nrows: int | None = None):
    """Training data as a pandas DataFrame (the first `nrows` rows, or all); Unprocessable when unreadable."""
    import pandas as pd

    suffix = path.suffix.lower()
    kind = _kind(suffix)
    try:
        if kind == "Parquet":
            frame = pd.read_parquet(path)
            return frame.head(nrows) if nrows is not None else frame
        if kind == "CSV":
            return pd.read_csv(path, nrows=nrows)
        if suffix in (".jsonl", ".ndjson") or _first_char(path) == "{":
            try:
                return pd.read_json(path, lines=True, nrows=nrows)
            except ValueError:
                frame = pd.read_json(path)  # one object of columns: {"age": [..], ...}
        else:
            frame = pd.read_json(path, orient="records")
        return frame.head(nrows) if nrows is not None else frame
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise _unreadable(uri, kind, exc) from None


def _kind(suffix: str) -> str:
    return {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}.get(suffix, "JSON")


def _unreadable(uri: str, kind: str, exc: Exception) -> Unprocessable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return Unprocessable(f"{uri} is not readable as {kind} training data: {first}")


def _first_char(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(4096).lstrip()[:1].decode("ascii", "replace")


def keras_inputs(path: Path) -> list[TensorSpec] | None:
    """The inputs a .keras file declares (from its config.json), or None when it does not say plainly."""
    try:
        with zipfile.ZipFile(path) as archive:
            inner = json.loads(archive.read("config.json")).get("config", {})
        layers = {layer["config"]["name"]: layer["config"] for layer in inner.get("layers", [])
                  if layer.get("class_name") == "InputLayer"}
        refs = inner.get("input_layers")
        if isinstance(refs, dict):
            pairs = [(key, ref[0]) for key, ref in refs.items()]
        elif isinstance(refs, list) and refs and isinstance(refs[0], str):
            pairs = [(refs[0], refs[0])]
        elif isinstance(refs, list) and refs:
            pairs = [(ref[0], ref[0]) for ref in refs]
        else:
            pairs = [(name, name) for name in layers]
        specs = []
        for name, layer in pairs:
            shape = layers[layer]["batch_shape"]
            specs.append(TensorSpec(name, str(layers[layer].get("dtype")), [-1 if d is None else int(d) for d in shape]))
        return specs or None
    except (KeyError, TypeError, ValueError, IndexError, zipfile.BadZipFile, OSError):
        return None


def check_inputs(inputs: list[TensorSpec], features: list[str]) -> None:
    """Raise Unprocessable when the model's inputs (TensorSpec list) do not fit the feature columns."""
    if not inputs:
        raise Unprocessable("the model reports no inputs")
    if len(inputs) == 1 and len(inputs[0].shape) == 2 and not (inputs[0].shape[1] == 1 and inputs[0].name in features):
        width = inputs[0].shape[1]
        if width not in (-1, len(features)):
            raise Unprocessable(
                f"the model's input '{inputs[0].name}' takes {width} features but the training data has "
                f"{len(features)} feature columns ({', '.join(features)})")
        return
    missing = [spec.name for spec in inputs if spec.name not in features]
    if missing:
        raise Unprocessable(f"the model's inputs {', '.join(missing)} are not columns of the training data "
                            f"(columns: {', '.join(features)})")
