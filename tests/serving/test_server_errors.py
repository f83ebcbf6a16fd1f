"""A table of malformed requests: each gets the right status code and a message a person can act on.

Requests are built by hand with our stubs (tritonclient refuses some of these before sending).
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from modelrun.proto import inference_pb2 as pb
from modelrun.proto import inference_pb2_grpc as pb_grpc
from tests.serving import models
from tests.serving.conftest import NO_LOG, SERVING, start_servers

MAX_MESSAGE = 1024 * 1024
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def servers(model_files):
    specs = {"dense8": (model_files["dense8"], "dense8"), "tabular": (model_files["tabular"], "tabular")}
    with start_servers(specs, env={**NO_LOG, "MODELRUN_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}) as running:
        yield running


def rows8(n: int = 2, dtype=np.float32) -> np.ndarray:
    return np.arange(n * 8, dtype=dtype).reshape(n, 8) / 10


def raw_x(x: np.ndarray, datatype: str = "FP32", shape=None, raw=None, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dense8", **fields)
    request.inputs.add(name="x", datatype=datatype, shape=x.shape if shape is None else shape)
    request.raw_input_contents.append(x.tobytes() if raw is None else raw)
    return request


def typed_x(values, datatype: str = "FP32", shape=(2, 8), field: str = "fp32_contents") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dense8")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def with_nan(row: int, value=np.nan) -> np.ndarray:
    x = rows8(5)
    x[row, 2] = value
    return x


def bytes_raw(items) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def tabular(n_rows: dict | None = None, drop=(), extra=None, city_raw=None) -> pb.ModelInferRequest:
    n_rows = n_rows or {}
    request = pb.ModelInferRequest(model_name="tabular")
    data = models.tabular_rows(3)
    types = {"age": "FP32", "rooms": "INT64", "city": "BYTES", "garden": "BOOL"}
    for name, datatype in types.items():
        if name in drop:
            continue
        array = data[name][: n_rows.get(name, 3)]
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            raw = bytes_raw([s.encode() for s in array.ravel()]) if city_raw is None else city_raw
        else:
            raw = array.tobytes()
        request.raw_input_contents.append(raw)
    if extra:
        request.inputs.add(name=extra, datatype="FP32", shape=[3, 1])
        request.raw_input_contents.append(np.zeros((3, 1), np.float32).tobytes())
    return request


def mixed() -> pb.ModelInferRequest:
    request = raw_x(rows8())
    request.inputs[0].contents.fp32_contents.extend([0.0] * 16)
    return request


def two_raw() -> pb.ModelInferRequest:
    request = raw_x(rows8())
    request.raw_input_contents.append(b"")
    return request


def duplicate() -> pb.ModelInferRequest:
    request = raw_x(rows8())
    request.inputs.add(name="x", datatype="FP32", shape=[2, 8])
    request.raw_input_contents.append(rows8().tobytes())
    return request


def unknown_output() -> pb.ModelInferRequest:
    request = raw_x(rows8())
    request.outputs.add(name="nope")
    return request


CASES = {
    "unknown model": ("dense8", pb.ModelInferRequest(model_name="nope"), NOT_FOUND,
                      "model 'nope' is not served here; this server serves 'dense8'"),
    "unknown version": ("dense8", raw_x(rows8(), model_version="7"), NOT_FOUND, "no version '7'"),
    "wrong input name": ("dense8", pb.ModelInferRequest(
        model_name="dense8", inputs=[pb.ModelInferRequest.InferInputTensor(name="z", datatype="FP32", shape=[2, 8])],
        raw_input_contents=[rows8().tobytes()]), INVALID, "unknown input 'z'; the model's inputs are: 'x' (FP32 [-1, 8])"),
    "missing input": ("tabular", tabular(drop=["city"]), INVALID, "missing input 'city'"),
    "extra input": ("tabular", tabular(extra="colour"), INVALID, "unknown input 'colour'"),
    "wrong dtype": ("dense8", raw_x(rows8(dtype=np.float64), "FP64"), INVALID, "input 'x': expected FP32, got FP64"),
    "wrong dtype typed": ("dense8", typed_x(range(16), "INT64", field="int64_contents"), INVALID,
                          "input 'x': expected FP32, got INT64"),
    "unknown datatype": ("dense8", raw_x(rows8(), "FP8"), INVALID, "input 'x': unknown datatype 'FP8'"),
    "byte size vs shape": ("dense8", raw_x(rows8(), raw=rows8().tobytes()[:60]), INVALID,
                           "input 'x': shape [2, 8] of FP32 needs 64 bytes, got 60"),
    "element count vs shape": ("dense8", typed_x([0.0] * 15), INVALID, "input 'x': shape [2, 8] needs 16 FP32 values, got 15"),
    "typed in the wrong field": ("dense8", typed_x(range(16), "FP32", field="int64_contents"), INVALID,
                                 "datatype FP32 takes fp32_contents, got int64_contents"),
    "raw and typed mixed": ("dense8", mixed(), INVALID, "use raw for all inputs or typed for all, not both"),
    "raw count vs inputs": ("dense8", two_raw(), INVALID, "raw_input_contents has 2 entries but the request has 1 inputs"),
    "duplicate input": ("dense8", duplicate(), INVALID, "input 'x' appears more than once"),
    "NaN in a feature": ("dense8", raw_x(with_nan(3)), INVALID, "input 'x' has NaN at row 3"),
    "inf in a feature": ("dense8", raw_x(with_nan(0, np.inf)), INVALID, "input 'x' has inf at row 0"),
    "empty batch": ("dense8", raw_x(np.zeros((0, 8), np.float32)), INVALID, "input 'x' has no rows"),
    "wrong rank": ("dense8", raw_x(rows8(1).ravel()), INVALID, "input 'x': expected shape [-1, 8], got [8]"),
    "wrong fixed dim": ("dense8", raw_x(np.zeros((2, 7), np.float32)), INVALID, "expected shape [-1, 8], got [2, 7]"),
    "negative dim": ("dense8", raw_x(rows8(), shape=[-2, -8]), INVALID, "negative dimension"),
    "inconsistent rows": ("tabular", tabular(n_rows={"age": 2}), INVALID,
                          "inputs disagree on the number of rows: 'age' has 2, 'rooms' has 3"),
    "malformed raw BYTES": ("tabular", tabular(city_raw=struct.pack("<I", 50) + b"abc"), INVALID,
                            "input 'city': raw BYTES element 0 says 50 bytes but only 3 remain"),
    "too few BYTES elements": ("tabular", tabular(city_raw=bytes_raw([b"rome"])), INVALID,
                               "input 'city': shape [3, 1] needs 3 BYTES elements, got 1"),
    "INT8 out of range": ("dense8", typed_x([300] * 16, "INT8", field="int_contents"), INVALID, "out of range for INT8"),
    "unknown output": ("dense8", unknown_output(), INVALID, "unknown output 'nope'; the model's outputs are: 'y'"),
    "over-size message": ("dense8", raw_x(np.zeros((MAX_MESSAGE // 32 + 1, 8), np.float32)),
                          grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request(servers, case):
    server_key, request, code, message = CASES[case]
    with grpc.insecure_channel(servers[server_key].address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert error.value.code() == code, error.value.details()
    assert message in (error.value.details() or ""), error.value.details()


def test_model_metadata_of_an_unknown_model(servers):
    with grpc.insecure_channel(servers["dense8"].address) as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name="other"), timeout=10)
    assert error.value.code() == NOT_FOUND and "serves 'dense8'" in error.value.details()


def test_server_survives_the_table(servers):
    """After every bad request above, both servers still serve, and none answered INTERNAL."""
    for server in servers.values():
        assert server.proc.poll() is None and server.health() == SERVING
        assert "Traceback" not in server.log() and "unexpected error" not in server.log()
    with grpc.insecure_channel(servers["dense8"].address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(raw_x(rows8()), timeout=30)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).shape == (2,)
