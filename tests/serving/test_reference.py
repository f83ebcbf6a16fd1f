"""The outputs' drift reference the model server stores before serving (serving/reference.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from modelrun.db import create_schema, make_engine
from modelrun.drift import store
from serving.reference import profile_outputs
from serving.types import TensorSpec


@dataclass
class MatrixModel:
    """One 2-D FP32 input; outputs a score [n] and class probabilities [n, 3], like a real model's predict."""

    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    calls = 0

    def predict(self, batch):
        MatrixModel.calls += 1
        x = batch["x"]
        assert x.dtype == np.float32 and x.shape[1] == 2
        total = x.sum(axis=1)
        return {"score": total.reshape(-1, 1), "probs": np.stack([total, -total, total * 0], axis=1)}


def test_outputs_are_profiled_once_under_the_log_s_column_names(tmp_path):
    url = f"sqlite:///{tmp_path / 'modelrun.db'}"
    data = tmp_path / "train.csv"
    pd.DataFrame({"b": np.arange(5000.0), "a": np.ones(5000), "label": 0}).to_csv(data, index=False)
    for _ in range(2):
        profile_outputs(MatrixModel(), database_url=url, deployment="m", revision=3, training_data=data,
                        features=["a", "b"], sample_rows=4000)
    assert MatrixModel.calls == 1  # 4000 rows in one batch of 4096; the second start found the profile
    engine = make_engine(url)
    with engine.connect() as conn:
        outputs = store.load_profiles(conn, "m")
    assert outputs == {}  # no features profile yet: the revision is not monitored without one
    with engine.connect() as conn:
        meta = conn.execute(sa.select(store.profiles.c.meta, store.profiles.c.error)).one()
    assert meta.error is None
    assert '"output:score"' in meta.meta and '"output:probs[2]"' in meta.meta and '"rows": 4000' in meta.meta


def test_a_model_that_cannot_run_on_the_training_data_leaves_the_reason(tmp_path):
    url = f"sqlite:///{tmp_path / 'modelrun.db'}"
    data = tmp_path / "train.csv"
    pd.DataFrame({"a": [1.0, 2.0]}).to_csv(data, index=False)
    profile_outputs(MatrixModel(), database_url=url, deployment="m", revision=1, training_data=data,
                    features=["a", "b"], sample_rows=10)
    engine = make_engine(url)
    create_schema(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(store.profiles.c.meta, store.profiles.c.error)).one()
    assert row.meta is None and "lacks the feature columns b" in row.error
