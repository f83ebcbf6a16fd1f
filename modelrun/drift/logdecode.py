"""Turning the prediction log's columnar JSON into arrays, one page of log rows at a time.

The fast way parses the page with Arrow's JSON reader (C++, no Python object per value): each column
arrives as a list array whose lengths must equal the rows' batch sizes; numbers become float64 arrays,
strings a pandas Categorical (codes and categories), an output of shape [n, k] k columns `name[i]`. Anything
that does not fit that shape (a column absent from some requests, a scalar, mixed types) takes the
general way: orjson into Python lists, column by column.
"""

from __future__ import annotations

import io
from itertools import chain
from operator import itemgetter

import numpy as np
import orjson
import pandas as pd


class _NotColumnar(Exception):
    """The page does not fit the fast path."""


def columns_of(texts: list[str], batch: np.ndarray, prefix: str) -> dict:
    """{prefix + column: values, one per value row} of the JSON objects in `texts`."""
    import pyarrow as pa

    try:
        return _arrow_columns(texts, batch, prefix)
    except (_NotColumnar, pa.ArrowException):
        return _columns(orjson.loads("[" + ",".join(texts) + "]"), batch, prefix)


def _arrow_columns(texts: list[str], batch: np.ndarray, prefix: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    data = "\n".join(texts).encode()
    try:  # blocks of 1 MiB are parsed on every core; blocks typed differently raise (then the general way)
        table = pj.read_json(io.BytesIO(data), read_options=pj.ReadOptions(block_size=1 << 20))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise _NotColumnar() from None
    if table.num_rows != len(texts):
        raise _NotColumnar()
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if not pa.types.is_list(column.type) or column.null_count:
            raise _NotColumnar()  # a scalar, or absent from some requests
        if not np.array_equal(pc.list_value_length(column).to_numpy(zero_copy_only=False), batch):
            raise _NotColumnar()
        values = column.flatten()
        kind = values.type
        if pa.types.is_list(kind):  # several values per row
            widths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if values.null_count or not len(widths) or (widths != widths[0]).any():
                raise _NotColumnar()
            matrix = _numbers(values.flatten()).reshape(-1, int(widths[0]))
            for i in range(matrix.shape[1]):
                columns[f"{prefix}{name}[{i}]"] = np.ascontiguousarray(matrix[:, i])
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            encoded = values.dictionary_encode()
            codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            columns[prefix + name] = pd.Categorical.from_codes(codes, categories=encoded.dictionary.to_pylist())
        elif pa.types.is_null(kind):
            columns[prefix + name] = np.full(len(values), np.nan)
        else:
            columns[prefix + name] = _numbers(values)
    return columns


def _numbers(values) -> np.ndarray:
    import pyarrow as pa

    kind = values.type
    if pa.types.is_boolean(kind):
        if values.null_count:
            raise _NotColumnar()
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)):
        raise _NotColumnar()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls become NaN


def _columns(docs: list[dict], batch: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    if not docs:
        return {}
    total = int(batch.sum())
    first = tuple(docs[0])
    names, flat = first, {}
    if all(tuple(doc) == first for doc in docs):  # one writer: the same keys in the same order
        try:
            flat = {name: list(chain.from_iterable(values)) for name, values in zip(first, zip(*(d.values() for d in docs)))}
        except TypeError:  # a scalar (rank-0) input: column by column below
            pass
    else:
        names = tuple(dict.fromkeys(first)) + tuple(sorted(set().union(*docs) - set(first)))
    columns = {}
    for name in names:
        values = flat.get(name)
        if values is None or len(values) != total:
            values = _flat(docs, name, batch)
        array = _array(values)
        if array.ndim == 2:  # several values per row (an output of shape [n, k])
            for i in range(array.shape[1]):
                columns[f"{prefix}{name}[{i}]"] = np.ascontiguousarray(array[:, i])
        else:
            columns[prefix + name] = array
    return columns


def _flat(docs: list[dict], name: str, batch: np.ndarray) -> list:
    """Every row's values of one column, in order; a request without the column gives None per row."""
    try:
        values = list(chain.from_iterable(map(itemgetter(name), docs)))
        if len(values) == int(batch.sum()):
            return values
    except (KeyError, TypeError):
        pass
    values = []
    for doc, size in zip(docs, batch.tolist()):
        got = doc.get(name)
        if isinstance(got, list) and len(got) == size:
            values.extend(got)
        else:  # absent, or a scalar (rank-0) input
            values.extend([got if not isinstance(got, list) else None] * size)
    return values


def _array(values: list) -> np.ndarray:
    try:
        array = np.array(values, dtype=np.float64)
        if array.ndim <= 2:
            return array
    except (TypeError, ValueError):
        pass
    if values and isinstance(values[0], str):
        try:
            return pd.Categorical(values)  # hashed once here; windows then count codes
        except TypeError:  # strings mixed with numbers: no order for the categories
            pass
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
