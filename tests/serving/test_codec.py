"""Protobuf <-> numpy: round trips for every datatype, raw and typed, and what decoding refuses."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from modelrun.errors import InvalidInput
from modelrun.proto import inference_pb2 as pb
from serving import codec
from serving.types import InferResponse, ModelMetadata, TensorSpec

SAMPLES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-300, 0, 300]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**62), 5, 2**62]], dtype=np.int64),
    "UINT8": np.array([[0, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1]], dtype=np.uint64),
    "FP16": np.array([[0.5, -1.25, 65504]], dtype=np.float16),
    "FP32": np.array([[1.5, -2.25], [3.0, 1e30]], dtype=np.float32),
    "FP64": np.array([[1e-300, -2.5]], dtype=np.float64),
    "BYTES": np.array([[b"berlin", b""], [b"\xff\xfe", "zürich".encode()]], dtype=object),
}


def request_of(datatype: str, array: np.ndarray, raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=array.shape)
    if raw:
        request.raw_input_contents.append(codec.encode_raw(array))
    else:
        getattr(tensor.contents, codec.CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_raw_round_trip(datatype):
    array = SAMPLES[datatype]
    decoded = codec.decode_request(request_of(datatype, array, raw=True))
    assert decoded.raw and decoded.id == "r1"
    got = decoded.inputs["x"]
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", [dt for dt in SAMPLES if dt != "FP16"])
def test_typed_round_trip(datatype):
    array = SAMPLES[datatype]
    decoded = codec.decode_request(request_of(datatype, array, raw=False))
    assert not decoded.raw
    got = decoded.inputs["x"]
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.tolist() == array.tolist()


def test_raw_bytes_are_length_prefixed_little_endian():
    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    assert codec.encode_raw(array) == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"
    assert codec.decode_raw("s", "BYTES", [3], codec.encode_raw(array)).tolist() == [b"ab", b"", b"xyz"]


def test_raw_numbers_are_little_endian():
    assert codec.encode_raw(np.array([1], dtype=">i4")) == b"\x01\x00\x00\x00"
    assert codec.decode_raw("x", "INT32", [1], b"\x01\x00\x00\x00").tolist() == [1]


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("raw", [True, False])
def test_response_round_trip(datatype, raw):
    array = SAMPLES[datatype]
    message = codec.encode_response(InferResponse("m", "1", "r1", {"y": array}, raw=raw))
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "r1")
    (tensor,) = message.outputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("y", datatype, list(array.shape))
    if raw or datatype == "FP16":  # FP16 has no typed field, so it always travels raw
        got = codec.decode_raw("y", datatype, tensor.shape, message.raw_output_contents[0])
    else:
        assert not message.raw_output_contents
        got = codec.decode_typed("y", datatype, tensor.shape, tensor.contents)
    assert got.tolist() == array.tolist()


def test_string_outputs_are_sent_as_bytes():
    message = codec.encode_response(InferResponse("m", "1", "", {"s": np.array(["ä", "b"])}, raw=False))
    assert message.outputs[0].datatype == "BYTES"
    assert list(message.outputs[0].contents.bytes_contents) == ["ä".encode(), b"b"]


def test_model_metadata_message():
    meta = ModelMetadata("m", ["3"], "tensorflow_keras", [TensorSpec("x", "FP32", (-1, 8))],
                         [TensorSpec("y", "FP32", (-1, 1))])
    message = codec.encode_model_metadata(meta)
    assert (message.name, list(message.versions), message.platform) == ("m", ["3"], "tensorflow_keras")
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("x", "FP32", [-1, 8])]


def test_requested_outputs_are_decoded():
    request = request_of("FP32", SAMPLES["FP32"], raw=True)
    assert codec.decode_request(request).outputs is None
    request.outputs.add(name="b")
    request.outputs.add(name="a")
    assert codec.decode_request(request).outputs == ["b", "a"]


@pytest.mark.parametrize("make, message", [
    (lambda: codec.decode_raw("x", "FP32", [2, 2], b"\x00" * 15), "shape [2, 2] of FP32 needs 16 bytes, got 15"),
    (lambda: codec.decode_raw("x", "BF16", [1], b"\x00\x00"), "unknown datatype 'BF16'"),
    (lambda: codec.decode_raw("s", "BYTES", [2], struct.pack("<I", 1) + b"a"), "needs 2 BYTES elements, got 1"),
    (lambda: codec.decode_raw("s", "BYTES", [1], b"\x01\x00"), "end inside a length prefix"),
    (lambda: codec.decode_raw("s", "BYTES", [1], b"a" * 9), "says 1633771873 bytes but only 5 remain"),
    (lambda: codec.decode_typed("x", "FP16", [1], pb.InferTensorContents()), "send it in raw_input_contents"),
    (lambda: codec.decode_typed("x", "UINT8", [1], pb.InferTensorContents(uint_contents=[256])), "out of range"),
    (lambda: codec.decode_typed("x", "INT32", [2], pb.InferTensorContents(int_contents=[1])), "needs 2 INT32 values, got 1"),
    (lambda: codec.decode_typed("x", "INT32", [1], pb.InferTensorContents(int_contents=[1], fp32_contents=[1.0])),
     "takes int_contents, got fp32_contents"),
])
def test_decoding_refuses(make, message):
    with pytest.raises(InvalidInput) as error:
        make()
    assert message in error.value.message
