"""serving.model in process: kind detection, signatures, and predict equal to calling Keras."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import serving.model
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


# ---- graph mode: small models run through a tf.compat.v1.Session, checked against the eager function ----

@pytest.mark.parametrize("key", ["dense8", "dense8_savedmodel", "sequential8"])
def test_small_models_run_in_graph_mode_and_answer_like_eager(model_files, key, caplog):
    with caplog.at_level(logging.INFO, logger="serving.model"):
        model = load_model(model_files[key])
    assert model.inference_path == "graph"
    assert [r.getMessage() for r in caplog.records if "inference" in r.getMessage()] == [
        f"{model_files[key].name}: graph-mode inference (tf.compat.v1.Session; weights 2.5 KB)"]
    (output,) = model.outputs
    for n in (1, 17, 300):
        x = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
        got, eager = model.predict({"x": x})[output.name], model.predict_eager({"x": x})[output.name]
        assert got.dtype == eager.dtype == np.float32 and got.shape == eager.shape == (n, 1)
        np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("datatype", sorted(models.DTYPE_MODELS))
def test_graph_mode_answers_like_eager_on_every_datatype(model_files, datatype):
    model = load_model(model_files[f"dtype_{datatype}"])
    assert model.inference_path == "graph"
    x = {"x": models.dtype_rows(datatype, 5)}
    got, eager = model.predict(x)["y"], model.predict_eager(x)["y"]
    assert got.dtype == eager.dtype
    np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key", ["tabular", "tabular_savedmodel"])
def test_a_model_with_a_lookup_table_stays_eager(model_files, key, caplog):
    # StringLookup's table is a captured resource that freezing cannot carry: not sound, so eager.
    with caplog.at_level(logging.INFO, logger="serving.model"):
        model = load_model(model_files[key])
    assert model.inference_path == "eager" and model._graph is None
    assert any("eager inference (graph mode unavailable: the model holds 1 resource(s) besides its variables" in r.getMessage()
               for r in caplog.records)


def test_over_the_size_limit_the_model_stays_eager(model_files, caplog):
    with caplog.at_level(logging.INFO, logger="serving.model"):
        model = load_model(model_files["dense8"], graph_max_bytes=0)
    assert model.inference_path == "eager" and model._graph is None
    assert "dense8.keras: eager inference (weights 2.5 KB > graph-mode limit 0.0 KB)" in caplog.text
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(model.predict({"x": x})["y"], np.asarray(models.load_keras(model_files["dense8"])(x)),
                               rtol=1e-5, atol=1e-6)


def test_when_the_graph_cannot_be_built_the_model_stays_eager(model_files, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot freeze this")

    monkeypatch.setattr(serving.model.GraphSession, "__init__", broken)
    with caplog.at_level(logging.INFO, logger="serving.model"):
        model = load_model(model_files["dense8_savedmodel"])
    assert model.inference_path == "eager" and model._graph is None
    assert "dense8_savedmodel: eager inference (graph mode unavailable: cannot freeze this)" in caplog.text
    assert model.warm_up()["output_0"].shape == (1, 1)


def test_when_the_graph_answers_differently_the_model_stays_eager(model_files, monkeypatch, caplog):
    run = serving.model.GraphSession.run

    def off_by_a_little(self, inputs, eager):
        return {name: value + 1e-4 for name, value in run(self, inputs, eager).items()}

    monkeypatch.setattr(serving.model.GraphSession, "run", off_by_a_little)
    with caplog.at_level(logging.INFO, logger="serving.model"):
        model = load_model(model_files["dense8"])
    assert model.inference_path == "eager"
    assert "graph mode unavailable: its outputs differ from the eager function's" in caplog.text


def test_graph_mode_leaves_refusals_to_the_eager_path(model_files):
    model = load_model(model_files["dense8"])
    assert model.inference_path == "graph"
    for bad in (np.ones((2, 9), np.float32), np.ones((2, 8), np.float64)):  # wrong width; a dtype it would cast
        with pytest.raises(Exception) as graph_error:
            model.predict({"x": bad})
        with pytest.raises(Exception) as eager_error:
            model.predict_eager({"x": bad})
        assert type(graph_error.value) is type(eager_error.value)
