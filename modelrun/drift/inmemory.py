"""Drift between two in-memory frames, through the same profile → aggregate → report path the service
uses (with every production value kept for the exact tests). For notebooks, the parity tests and the
benchmark against Evidently."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelrun.drift.aggregate import Aggregate, priorities
from modelrun.drift.config import DriftConfig
from modelrun.drift.profile import build_profile
from modelrun.drift.report import build_report


def compare(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig | dict | None = None,
            columns: list[str] | None = None) -> dict:
    """The drift report of `current` against `reference` over `columns` (default: the reference's)."""
    if not isinstance(config, DriftConfig):
        config = DriftConfig.model_validate(config or {})
    profile = build_profile(reference, columns, limit=len(reference))
    window = Aggregate(profile, capacity=max(len(current), 1), bounded=False)
    rows = np.arange(len(current))
    window.add(profile, {name: current[name] for name in current.columns},
               priorities(rows, np.zeros_like(rows)))
    return build_report(deployment="", revision=None, window={"id": "in-memory", "kind": "frames"},
                        profile=profile, agg=window, config=config)
