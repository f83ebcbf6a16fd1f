"""Helpers for drift tests: a reference profile and prediction-log rows written straight into SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from modelrun.db import create_schema, make_engine
from modelrun.db.predictions import encode_row, insert_ignoring_duplicates
from modelrun.drift import store
from modelrun.drift.profile import build_profile
from modelrun.drift.refresh import Target

CITIES = ["lisbon", "lyon", "porto", "turin"]


def houses(n: int, seed: int, *, area_shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rooms = rng.integers(1, 7, n)
    return pd.DataFrame({"rooms": rooms, "area": np.round(rooms * rng.uniform(18, 32, n) + area_shift, 1),
                         "age": np.round(rng.uniform(0, 90, n), 0), "city": rng.choice(CITIES, n)})


def prices(frame: pd.DataFrame) -> np.ndarray:
    return (2.6 * frame["area"] + 12 * frame["rooms"] - 0.8 * frame["age"] + 40).to_numpy(np.float32)


def engine_for(url: str) -> sa.Engine:
    engine = make_engine(url)
    create_schema(engine)
    return engine


def save_reference(engine, name: str, revision: int, frame: pd.DataFrame, *, outputs: bool = True,
                   created: datetime | None = None) -> None:
    created = created or datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    with engine.begin() as conn:
        store.save_profile(conn, name, revision, "features", build_profile(frame), created)
        if outputs:
            store.save_profile(conn, name, revision, "outputs", build_profile(pd.DataFrame({"price": prices(frame)})),
                               created)


def log_requests(engine, name: str, revision: int, frame: pd.DataFrame, *, per_request: int = 1,
                 ts: datetime | None = None, prefix: str = "r", drop: tuple[str, ...] = ()) -> int:
    """Write `frame` as logged requests of `per_request` rows; returns the number of requests."""
    ts = ts or datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    out = prices(frame)
    rows = []
    for index, start in enumerate(range(0, len(frame), per_request)):
        part = frame.iloc[start:start + per_request]
        features = {c: part[c].to_numpy() for c in part.columns if c not in drop}
        rows.append(encode_row(name, revision, f"{prefix}{revision}-{index:08d}", "", ts, features,
                               {"price": out[start:start + per_request]}, 1.0))
    with engine.begin() as conn:
        for start in range(0, len(rows), 500):
            insert_ignoring_duplicates(conn, rows[start:start + 500])
    return len(rows)


def target(name: str = "houses", *, revision: int = 1, serving: int | None = 1, config: dict | None = None) -> Target:
    return Target(name=name, status="READY", revision=revision, serving_revision=serving, config=config or {})


def window(reports: list[dict], window_id: str) -> dict:
    return next(r for r in reports if r["window"]["id"] == window_id)


def column(report: dict, name: str) -> dict:
    return next(c for c in report["features"] + report["outputs"] if c["name"] == name)
