"""How the client turns rows into tensors, without a server: the API's `features` fix a matrix's column
order (a local training-data file only when the API gives none), and rows are checked before sending.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from modelrun import errors
from modelrun.client_grpc import Target

MATRIX = [SimpleNamespace(name="x", shape=[-1, 3], datatype="FP32")]


def target(tmp_path, features=None, *, revision=1, inputs=MATRIX) -> Target:
    """A Target on an address nothing listens on (no RPC is made) with the model's inputs given."""
    (tmp_path / "train.csv").write_text("b,label,a,c\n1,0,2,3\n")
    t = Target({"name": "m", "endpoint": "127.0.0.1:9", "serving_revision": revision, "features": features,
                "training_data_uri": str(tmp_path / "train.csv"), "config": {"label": "label"}})
    t._inputs = inputs
    return t


def tensors(t: Target, rows) -> list:
    return list(t._tensors(rows, timeout=1))


def test_the_apis_features_order_the_matrix_and_other_keys_are_ignored(tmp_path):
    t = target(tmp_path, ["c", "a", "b"])
    rows = [{"a": 1, "b": 2, "c": 3, "id": 7}, {"id": 8, "c": 6, "b": 5, "a": 4}]
    assert tensors(t, rows) == [("x", "FP32", [2, 3], [3.0, 1.0, 2.0, 6.0, 4.0, 5.0])]
    t.close()


def test_a_local_training_file_orders_the_matrix_only_when_the_api_gives_no_features(tmp_path):
    t = target(tmp_path, None)
    assert t.features == ["b", "a", "c"]  # the file's header, label left out
    assert tensors(t, [{"a": 1, "b": 2, "c": 3}])[0][3] == [2.0, 1.0, 3.0]
    t.close()
    (tmp_path / "train.csv").unlink()
    blind = Target({"name": "m", "endpoint": "127.0.0.1:9", "training_data_uri": "gs://b/train.csv"})
    blind._inputs = MATRIX
    with pytest.raises(errors.InvalidInput, match="cannot tell the column order"):
        tensors(blind, [{"a": 1, "b": 2, "c": 3}])  # no guessing from the rows' key order
    blind.close()


def test_missing_features_are_one_error_naming_them(tmp_path):
    t = target(tmp_path, ["a", "b", "c"])
    with pytest.raises(errors.InvalidInput) as raised:
        tensors(t, [{"a": 1, "b": 2, "c": 3}, {"a": 1, "cc": 3}, {"b": 1, "c": 2}])
    assert raised.value.message == ("missing features 'b' (row 1), 'c' (row 1), 'a' (row 2); each row needs all "
                                    "of: a, b, c (the rows also have cc, which the model does not take)")
    named = target(tmp_path, ["age", "city"], inputs=[SimpleNamespace(name="age", shape=[-1, 1], datatype="FP32"),
                                                      SimpleNamespace(name="city", shape=[-1, 1], datatype="BYTES")])
    wide = target(tmp_path, [f"f{i}" for i in range(30)],
                  inputs=[SimpleNamespace(name="x", shape=[-1, 30], datatype="FP32")])
    with pytest.raises(errors.InvalidInput) as raised:
        tensors(wide, [{"f0": 1.0}])
    assert raised.value.message.startswith("29 missing features: 'f1' (row 0), 'f2' (row 0), 'f3' (row 0), "
                                           "'f4' (row 0), 'f5' (row 0), and 24 more; each row needs all 30 features")
    assert "`modelrun get m --json` lists them" in raised.value.message and "f29" not in raised.value.message
    wide.close()
    with pytest.raises(errors.InvalidInput, match=r"^missing feature 'city' \(row 0\)"):
        tensors(named, [{"age": 3}])
    t.close()
    named.close()


def test_another_revision_behind_the_same_endpoint_brings_its_own_features(tmp_path):
    t = target(tmp_path, ["a", "b", "c"], revision=1)
    t.refresh({"serving_revision": 1, "features": ["c", "b", "a"]})
    assert t.features == ["a", "b", "c"] and t._inputs is MATRIX  # same revision: nothing to reload
    t.refresh({"serving_revision": 2, "features": ["c", "b", "a"]})
    assert t.features == ["c", "b", "a"] and t._inputs is None  # its inputs are asked for again
    t.close()
