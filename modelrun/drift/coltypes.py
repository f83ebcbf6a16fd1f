"""Column kinds, inferred from the training data the way Evidently 0.7 infers them.

- float                      -> "numerical"
- integer                    -> "categorical" when it has <= 10 distinct values, else "numerical"
- bool, pandas "category"    -> "categorical"
- strings                    -> "text" when more than half of the non-null values are distinct
                                (distinct > 0.5 * non-null count), else "categorical"

Differences from Evidently, on purpose:
- Evidently infers the kinds from the *current* data of each report; we infer them once, from the
  reference, so a column keeps its kind (and its test) across production windows.
- Evidently reads only numpy "int*"/"float*" dtype names, so pandas' nullable Int64/UInt*/Float64/boolean
  and numpy's unsigned integers come out "unknown" there and are skipped; here they follow the integer,
  float and bool rules.
- Whatever Evidently leaves "unknown" or "datetime" (object columns not holding strings, datetimes, lists)
  is read as strings here: mostly-distinct columns become "text" (described, not tested), the others
  "categorical". An all-null column without a float dtype is "categorical" (nothing to test).
"""

from __future__ import annotations

import pandas as pd
from pandas.api import types

INTEGER_CATEGORIES = 10  # an integer column with at most this many distinct values is categorical

KINDS = ("numerical", "categorical", "text")


def column_kind(series: pd.Series) -> str:
    """"numerical", "categorical" or "text" for `series` (the reference's column), by the rules above."""
    dtype = series.dtype
    if types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    if types.is_float_dtype(dtype):
        return "numerical"
    if types.is_integer_dtype(dtype):
        return "categorical" if series.nunique() <= INTEGER_CATEGORIES else "numerical"
    present = series.dropna()
    if len(present) and isinstance(present.iloc[0], bool) and present.map(lambda v: isinstance(v, bool)).all():
        return "categorical"  # a bool column with missing values arrives as object
    distinct = present.astype(str).nunique() if types.is_object_dtype(dtype) else present.nunique()
    return "text" if distinct > 0.5 * len(present) else "categorical"
