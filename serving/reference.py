"""The model's outputs on its training data: the reference the outputs' drift is judged against.

The control plane profiles the training data's features while building, without TensorFlow; the outputs
need the model, so the model server profiles them once per revision, after loading and before it serves
(so no logged prediction can precede its reference). It predicts on the same rows the features' sample
came from (`sample_rows`), names the columns as the prediction log does (an output of shape [n, k] is
k columns `name[i]`), and stores the profile with the revision. When it cannot (a column the model needs
is missing, a value the model refuses), it stores the reason instead, which the reports show.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

if TYPE_CHECKING:
    from modelrun.db.cloudsql import CloudSql

log = logging.getLogger("serving.reference")
BATCH_ROWS = 4096


def profile_outputs(model, *, database_url: str, deployment: str, revision: int, training_data: Path,
                    features: list[str] | None, sample_rows: int, cloudsql: CloudSql | None = None) -> None:
    """Store the outputs' reference profile of (deployment, revision) unless one is stored already
    (`cloudsql`: reach the database through the Cloud SQL connector, see `make_engine`)."""
    from modelrun.db import create_schema, make_engine, write_transaction
    from modelrun.drift import store

    engine = make_engine(database_url, cloudsql=cloudsql)
    try:
        create_schema(engine)
        p = store.profiles
        with engine.connect() as conn:
            if conn.execute(sa.select(p.c.part).where((p.c.deployment == deployment) & (p.c.revision == revision)
                                                      & (p.c.part == "outputs"))).first() is not None:
                return
        profile, error = None, None
        try:
            profile = _profile(model, training_data, features, sample_rows)
        except Exception as exc:  # the reason goes into the reports; the model still serves
            error = f"could not run the model on the training data: {str(exc).splitlines()[0][:300]}"
            log.warning("%s", error)
        with write_transaction(engine) as conn:
            store.save_profile(conn, deployment, revision, "outputs", profile, datetime.now(UTC).replace(tzinfo=None),
                               error=error)
        if profile is not None:
            log.info("profiled the model's outputs on %d training rows for drift", profile.rows)
    finally:
        engine.dispose()


def _profile(model, training_data: Path, features: list[str] | None, sample_rows: int):
    import pandas as pd

    from modelrun.control.inspect import read_table
    from modelrun.drift.profile import build_profile, sample_rows as sample_of

    frame = sample_of(read_table(training_data, str(training_data)), sample_rows)
    inputs = _inputs(model, frame, features)
    columns: dict[str, list[np.ndarray]] = {}
    rows = len(frame)
    for start in range(0, rows, BATCH_ROWS):
        batch = {name: array[start:start + BATCH_ROWS] for name, array in inputs.items()}
        for name, array in model.predict(batch).items():
            array = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
            if array.shape[1] == 1:
                columns.setdefault(name, []).append(array[:, 0])
            else:
                for i in range(array.shape[1]):
                    columns.setdefault(f"{name}[{i}]", []).append(array[:, i])
    outputs = pd.DataFrame({name: _decoded(np.concatenate(parts)) for name, parts in columns.items()})
    return build_profile(outputs, limit=len(outputs))


def _inputs(model, frame, features: list[str] | None) -> dict[str, np.ndarray]:
    from serving.types import NUMPY_DTYPES

    specs = model.inputs
    if len(specs) == 1 and len(specs[0].shape) == 2 and not (specs[0].shape[1] == 1 and specs[0].name in frame):
        spec = specs[0]
        names = features or list(frame.columns)
        missing = [n for n in names if n not in frame]
        if missing:
            raise ValueError(f"the training data lacks the feature columns {', '.join(missing)}")
        return {spec.name: frame[names].to_numpy(dtype=NUMPY_DTYPES[spec.datatype])}
    inputs = {}
    for spec in specs:
        if spec.name not in frame:
            raise ValueError(f"the training data has no column '{spec.name}' for the model's input")
        column = frame[spec.name]
        if spec.datatype == "BYTES":
            array = np.array([str(v).encode() for v in column.fillna("")], dtype=object)
        else:
            array = column.to_numpy(dtype=NUMPY_DTYPES[spec.datatype])
        inputs[spec.name] = array.reshape(len(array), *[1] * (len(spec.shape) - 1))
    return inputs


def _decoded(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v for v in values],
                        dtype=object)
    return values
