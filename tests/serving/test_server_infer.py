"""ModelInfer and metadata over the wire, from tritonclient (a client nobody here wrote).

Raw requests go through `InferInput.set_data_from_numpy`; typed requests are built as tritonclient's own
`ModelInferRequest` with `contents` and sent through its stub. Every answer is compared with calling the
Keras model in this process.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.serving import models
from tests.serving.conftest import NO_LOG, start_servers

TYPED_FIELD = {"BOOL": "bool_contents", "INT32": "int_contents", "INT64": "int64_contents",
               "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
DTYPES = ["BOOL", "INT32", "INT64", "FP16", "FP64"]  # FP32 and BYTES: dense8 and tabular below


@pytest.fixture(scope="module")
def servers(model_files):
    specs = {
        "dense8": (model_files["dense8"], "dense8"),
        "dense8_savedmodel": (model_files["dense8_savedmodel"], "dense8"),
        "sequential8": (model_files["sequential8"], "sequential8"),
        "tabular": (model_files["tabular"], "tabular"),
        "tabular_savedmodel": (model_files["tabular_savedmodel"], "tabular"),
        **{f"dtype_{dt}": (model_files[f"dtype_{dt}"], f"dtype-{dt.lower()}") for dt in DTYPES},
    }
    with start_servers(specs, env=NO_LOG) as running:
        yield running


@pytest.fixture(scope="module")
def keras_models(model_files):
    return {key: models.load_keras(path) for key, path in model_files.items() if not key.endswith("savedmodel")}


def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def typed_infer(server, model: str, inputs: dict[str, tuple[str, np.ndarray]], *, outputs=(), request_id=""):
    """Send a typed-contents request through tritonclient's stub; return the raw response message."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, (datatype, array) in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        getattr(tensor.contents, TYPED_FIELD[datatype]).extend(array.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(server.address) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def typed_output(response, name: str) -> np.ndarray:
    """An output of a typed response, as numpy, checking it came back typed (not raw)."""
    assert not response.raw_output_contents, "a typed request must get typed outputs"
    for tensor in response.outputs:
        if tensor.name == name:
            field = TYPED_FIELD[tensor.datatype]
            return np.array(getattr(tensor.contents, field)).reshape(tuple(tensor.shape))
    raise AssertionError(f"no output {name!r} in {[t.name for t in response.outputs]}")


def raw_inputs(arrays: dict[str, tuple[str, np.ndarray]]) -> list[triton.InferInput]:
    result = []
    for name, (datatype, array) in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        result.append(tensor)
    return result


# ---- metadata and readiness ------------------------------------------------------------------------

def test_live_ready_and_server_metadata(servers):
    c = client(servers["dense8"])
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("dense8") and not c.is_model_ready("other")
    meta = c.get_server_metadata()
    assert meta.name == "modelrun" and meta.version and list(meta.extensions) == ["model_configuration", "statistics"]


@pytest.mark.parametrize("key, platform, output", [("dense8", "tensorflow_keras", "y"),
                                                   ("dense8_savedmodel", "tensorflow_savedmodel", "output_0")])
def test_model_metadata_single_input(servers, key, platform, output):
    meta = client(servers[key]).get_model_metadata("dense8")
    assert (meta.name, list(meta.versions), meta.platform) == ("dense8", ["1"], platform)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [(output, "FP32", [-1, 1])]


@pytest.mark.parametrize("key", ["tabular", "tabular_savedmodel"])
def test_model_metadata_one_input_per_feature(servers, key):
    meta = client(servers[key]).get_model_metadata("tabular")
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.inputs} == {
        "age": ("FP32", [-1, 1]), "rooms": ("INT64", [-1, 1]), "city": ("BYTES", [-1, 1]), "garden": ("BOOL", [-1, 1])}
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.outputs} == {
        "price": ("FP32", [-1, 1]), "expensive": ("FP32", [-1, 1])}


# ---- the 8-feature model: FP32, raw and typed, .keras and SavedModel ---------------------------------

@pytest.mark.parametrize("key, output", [("dense8", "y"), ("dense8_savedmodel", "output_0")])
def test_dense8_raw(servers, keras_models, key, output):
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    result = client(servers[key]).infer("dense8", raw_inputs({"x": ("FP32", x)}), request_id="req-7")
    assert result.get_response().id == "req-7"
    assert result.get_response().raw_output_contents, "raw in, raw out"
    got = result.as_numpy(output)
    assert got.dtype == np.float32 and got.shape == (5, 1)
    np.testing.assert_allclose(got, np.asarray(keras_models["dense8"](x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key, output", [("dense8", "y"), ("dense8_savedmodel", "output_0")])
def test_dense8_typed(servers, keras_models, key, output):
    x = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    response = typed_infer(servers[key], "dense8", {"x": ("FP32", x)}, request_id="typed-1")
    assert response.id == "typed-1" and response.model_name == "dense8" and response.model_version == "1"
    np.testing.assert_allclose(typed_output(response, output), np.asarray(keras_models["dense8"](x)),
                               rtol=1e-5, atol=1e-6)


def test_sequential_keras_model(servers, keras_models):
    meta = client(servers["sequential8"]).get_model_metadata("sequential8")
    assert meta.platform == "tensorflow_keras"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 1])]
    x = np.random.default_rng(4).normal(size=(4, 8)).astype(np.float32)
    got = client(servers["sequential8"]).infer("sequential8", raw_inputs({"x": ("FP32", x)})).as_numpy("y")
    np.testing.assert_allclose(got, np.asarray(keras_models["sequential8"](x)), rtol=1e-5, atol=1e-6)


def test_one_request_larger_than_the_batch_limit(servers, keras_models):
    x = np.random.default_rng(3).normal(size=(1000, 8)).astype(np.float32)
    got = client(servers["dense8"]).infer("dense8", raw_inputs({"x": ("FP32", x)})).as_numpy("y")
    np.testing.assert_allclose(got, np.asarray(keras_models["dense8"](x)), rtol=1e-5, atol=1e-6)


# ---- one model per datatype --------------------------------------------------------------------------

@pytest.mark.parametrize("datatype", DTYPES)
def test_datatype_raw(servers, keras_models, datatype):
    x = models.dtype_rows(datatype, 6, seed=4)
    result = client(servers[f"dtype_{datatype}"]).infer(f"dtype-{datatype.lower()}", raw_inputs({"x": (datatype, x)}))
    got = result.as_numpy("y")
    want = np.asarray(keras_models[f"dtype_{datatype}"](x))
    assert got.dtype == want.dtype
    tolerance = 1e-2 if datatype == "FP16" else 1e-5
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("datatype", [dt for dt in DTYPES if dt != "FP16"])
def test_datatype_typed(servers, keras_models, datatype):
    x = models.dtype_rows(datatype, 6, seed=5)
    response = typed_infer(servers[f"dtype_{datatype}"], f"dtype-{datatype.lower()}", {"x": (datatype, x)})
    want = np.asarray(keras_models[f"dtype_{datatype}"](x))
    np.testing.assert_allclose(typed_output(response, "y"), want, rtol=1e-5, atol=1e-6)


def test_fp16_typed_is_refused_with_advice(servers):
    request = service_pb2.ModelInferRequest(model_name="dtype-fp16")
    tensor = request.inputs.add(name="x", datatype="FP16", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    with grpc.insecure_channel(servers["dtype_FP16"].address) as channel, pytest.raises(grpc.RpcError) as error:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in error.value.details()


# ---- one named input per feature: numeric and string ---------------------------------------------------

TABULAR_TYPES = {"age": "FP32", "rooms": "INT64", "city": "BYTES", "garden": "BOOL"}


def tabular_request(n: int, seed: int) -> tuple[dict, dict]:
    rows = models.tabular_rows(n, seed=seed)
    rows["city"] = np.vectorize(lambda s: s.encode(), otypes=[object])(rows["city"])  # BYTES travel as bytes
    return rows, {name: (TABULAR_TYPES[name], array) for name, array in rows.items()}


@pytest.mark.parametrize("key", ["tabular", "tabular_savedmodel"])
def test_tabular_raw(servers, keras_models, key):
    rows, inputs = tabular_request(7, seed=6)
    result = client(servers[key]).infer("tabular", raw_inputs(inputs))
    want = keras_models["tabular"](models.tabular_rows(7, seed=6))
    for name in ("price", "expensive"):
        np.testing.assert_allclose(result.as_numpy(name), np.asarray(want[name]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["tabular", "tabular_savedmodel"])
def test_tabular_typed(servers, keras_models, key):
    rows, inputs = tabular_request(4, seed=7)
    response = typed_infer(servers[key], "tabular", inputs)
    want = keras_models["tabular"](models.tabular_rows(4, seed=7))
    for name in ("price", "expensive"):
        np.testing.assert_allclose(typed_output(response, name), np.asarray(want[name]), rtol=1e-5, atol=1e-6)


def test_outputs_select_what_comes_back(servers, keras_models):
    rows, inputs = tabular_request(3, seed=8)
    requested = [triton.InferRequestedOutput("expensive")]
    result = client(servers["tabular"]).infer("tabular", raw_inputs(inputs), outputs=requested)
    assert [t.name for t in result.get_response().outputs] == ["expensive"]
    want = keras_models["tabular"](models.tabular_rows(3, seed=8))["expensive"]
    np.testing.assert_allclose(result.as_numpy("expensive"), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_strings_need_not_be_utf8(servers):
    _, inputs = tabular_request(2, seed=9)
    inputs["city"] = ("BYTES", np.array([[b"\xff\xfe"], [b""]], dtype=object))
    result = client(servers["tabular"]).infer("tabular", raw_inputs(inputs))
    assert result.as_numpy("price").shape == (2, 1)
