"""Drift methods: which test each column gets, and when a whole dataset counts as drifted.

A method names a tool whose defaults we reproduce:

- "evidently" (Evidently 0.7's DataDriftPreset): the test depends on the column kind, the number of
  reference values n_ref and the number u of distinct values over reference + current --

      n_ref <= 1000   numerical, u <= 5   chisquare if u > 2 else z
                      numerical, u > 5    ks
                      categorical         chisquare if u > 2 else z
      n_ref > 1000    numerical, u <= 5   jensenshannon
                      numerical, u > 5    wasserstein
                      categorical         jensenshannon

  and the dataset drifts when at least half of the tested columns drifted.
- "vertex" (Vertex AI Model Monitoring, training-serving skew): linf for categorical columns,
  js_divergence for numerical ones, and any drifted column raises the alert.

Only numerical and categorical columns are tested; text columns are described, not tested.
"""

from __future__ import annotations

from modelrun.errors import InvalidInput

METHODS = ("evidently", "vertex")

DATASET_SHARE: dict[str, float | None] = {"evidently": 0.5, "vertex": None}
"""Share of tested columns that must drift for the dataset to drift (drifted / total >= share). None: one
drifted column is enough (Vertex alerts per feature)."""

COUNTED = 64
"""Distinct values are counted up to this many per column; `distinct=None` means more than that."""

SMALL_REFERENCE = 1000  # Evidently: n_ref <= 1000 gets the p-value tests, larger references the distances
FEW_VALUES = 5  # Evidently: a numerical column with u <= 5 is tested like a categorical one
TWO_VALUES = 2  # Evidently: u <= 2 gets the Z test instead of chi-square


def check_method(name: str) -> str:
    """`name` when it is a known method; InvalidInput naming the valid methods otherwise."""
    if name not in METHODS:
        raise InvalidInput(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return name


def choose_test(method: str, kind: str, n_reference: int, distinct: int | None) -> str:
    """The name of the test `method` applies to a column of `kind` ("numerical" or "categorical") whose
    reference has `n_reference` non-missing values and whose reference + current hold `distinct` distinct
    non-missing values (None: more than `COUNTED`)."""
    check_method(method)
    if kind not in ("numerical", "categorical"):
        raise InvalidInput(f"no drift test for {kind!r} columns; tests exist for numerical and categorical ones")
    if method == "vertex":
        return "linf" if kind == "categorical" else "js_divergence"
    few = distinct is not None and distinct <= FEW_VALUES
    if n_reference <= SMALL_REFERENCE:
        if kind == "categorical" or few:
            return "chisquare" if distinct is None or distinct > TWO_VALUES else "z"
        return "ks"
    if kind == "categorical" or few:
        return "jensenshannon"
    return "wasserstein"


def dataset_drift(method: str, drifted: int, total: int) -> bool:
    """Whether `drifted` drifted columns out of `total` tested ones make the dataset drift under `method`'s
    rule (see `DATASET_SHARE`). Nothing tested never drifts."""
    share = DATASET_SHARE[check_method(method)]
    if total <= 0:
        return False
    return drifted >= 1 if share is None else drifted / total >= share
