"""serving.model in process: kind detection, signatures, and predict equal to calling Keras."""

from __future__ import annotations

import numpy as np
import pytest

from modelrun.errors import Unprocessable
from serving.model import KERAS, SAVEDMODEL, detect_kind, load_model
from tests.serving import models


def test_detect_kind(model_files, tmp_path):
    assert detect_kind(model_files["dense8"]) == KERAS
    assert detect_kind(model_files["dense8_savedmodel"]) == SAVEDMODEL
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(Unprocessable) as error:
        detect_kind(tmp_path / "weights.h5")
    assert str(tmp_path / "weights.h5") in error.value.message and "found a .h5 file" in error.value.message


@pytest.mark.parametrize("key", ["dense8", "dense8_savedmodel"])
def test_single_input_predict_matches_keras(model_files, key):
    model = load_model(model_files[key])
    x = np.random.default_rng(0).normal(size=(17, 8)).astype(np.float32)
    (output,) = model.outputs
    got = model.predict({"x": x})[output.name]
    want = np.asarray(models.load_keras(model_files["dense8"])(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert model.batchable


def test_sequential_keras_model_loads_and_predicts(model_files):
    model = load_model(model_files["sequential8"])
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("x", "FP32", (-1, 8))]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [("y", "FP32", (-1, 1))]
    x = np.random.default_rng(4).normal(size=(6, 8)).astype(np.float32)
    want = np.asarray(models.load_keras(model_files["sequential8"])(x))
    np.testing.assert_allclose(model.predict({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    assert model.batchable


@pytest.mark.parametrize("key", ["tabular", "tabular_savedmodel"])
def test_multi_input_predict_matches_keras(model_files, key):
    model = load_model(model_files[key])
    rows = models.tabular_rows(9, seed=3)
    inputs = {**rows, "city": np.vectorize(lambda s: s.encode(), otypes=[object])(rows["city"])}
    got = model.predict(inputs)
    want = models.load_keras(model_files["tabular"])(rows)
    for name in ("price", "expensive"):
        np.testing.assert_allclose(got[name], np.asarray(want[name]), rtol=1e-5, atol=1e-6)


def test_warm_up_runs_on_every_datatype(model_files):
    for datatype in models.DTYPE_MODELS:
        model = load_model(model_files[f"dtype_{datatype}"])
        assert model.inputs[0].datatype == datatype
        assert model.warm_up()["y"].shape == (1, 1)


def test_a_broken_keras_file_names_the_path(tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(Unprocessable) as error:
        load_model(broken)
    assert f"could not load {broken} as tensorflow_keras" in error.value.message
