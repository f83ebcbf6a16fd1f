"""Protobuf <-> numpy for the Open Inference Protocol: the only place that reads tensor contents off the wire.

Decoding checks what can be checked without the model (datatype names, shapes against element counts and
byte sizes, raw vs typed); the data plane then checks the tensors against the model's signature.
Raw tensors are little-endian; raw BYTES are a 4-byte little-endian length before each element.
"""

from __future__ import annotations

import math
import struct
import sys

import numpy as np

from modelrun.errors import InvalidInput
from modelrun.proto import inference_pb2 as pb
from serving.types import (NUMPY_DTYPES, Duration, InferRequest, InferResponse, ModelConfig, ModelMetadata,
                           ModelStatistics, datatype_of, format_shape)

# Datatype -> the typed-contents field that carries it. FP16 has none: it travels raw only.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_NARROW_INTS = {"INT8", "INT16", "UINT8", "UINT16"}  # carried in 32-bit fields: range-checked
_LENGTH = struct.Struct("<I")
# numpy byte orders that are little-endian: "|" (one byte or not applicable), "<", and "=" on a little-endian host
_LITTLE_ENDIAN = frozenset("|<=" if sys.byteorder == "little" else "|<")


def _check_datatype(name: str, datatype: str) -> np.dtype:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(NUMPY_DTYPES)}")
    return dtype


def _element_count(name: str, shape: tuple) -> int:
    if shape and min(shape) < 0:
        raise InvalidInput(f"input '{name}': shape {format_shape(shape)} has a negative dimension")
    return math.prod(shape)


def decode_raw(name: str, datatype: str, shape, raw: bytes) -> np.ndarray:
    """One raw tensor -> numpy array of `shape`."""
    dtype = _check_datatype(name, datatype)
    shape = tuple(shape)
    count = _element_count(name, shape)
    if datatype == "BYTES":
        return _decode_raw_bytes(name, shape, count, raw)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input '{name}': shape {format_shape(shape)} of {datatype} needs {expected} bytes, "
                           f"got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_raw_bytes(name: str, shape: tuple, count: int, raw: bytes) -> np.ndarray:
    items = []
    offset, end = 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input '{name}': raw BYTES end inside a length prefix at byte {offset}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"input '{name}': raw BYTES element {len(items)} says {length} bytes but only "
                               f"{end - offset} remain")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{name}': shape {format_shape(shape)} needs {count} BYTES elements, "
                           f"got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def decode_typed(name: str, datatype: str, shape, contents: pb.InferTensorContents) -> np.ndarray:
    """One tensor from typed `contents` -> numpy array of `shape`."""
    dtype = _check_datatype(name, datatype)
    shape = tuple(shape)
    count = _element_count(name, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    present = [descriptor.name for descriptor, _ in contents.ListFields()]
    if present and present != [field]:
        wrong = ", ".join(p for p in present if p != field)
        raise InvalidInput(f"input '{name}': datatype {datatype} takes {field}, got {wrong}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': shape {format_shape(shape)} needs {count} {datatype} values, "
                           f"got {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    if datatype in _NARROW_INTS:
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(dtype)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype} ({info.min}..{info.max})")
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype=dtype, count=count).reshape(shape)


def decode_request(request: pb.ModelInferRequest) -> InferRequest:
    """A ModelInfer request -> InferRequest with numpy inputs (in the request's order)."""
    raw_contents = request.raw_input_contents
    tensors = request.inputs
    inputs: dict[str, np.ndarray] = {}
    if raw_contents:
        if len(raw_contents) != len(tensors):
            raise InvalidInput(f"raw_input_contents has {len(raw_contents)} entries but the request has "
                               f"{len(tensors)} inputs; send one raw entry per input, in order")
        for tensor, raw in zip(tensors, raw_contents):
            name = tensor.name
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{name}' has typed contents in a request that uses "
                                   "raw_input_contents; use raw for all inputs or typed for all, not both")
            _put(inputs, name, decode_raw(name, tensor.datatype, tensor.shape, raw))
    else:
        for tensor in tensors:
            _put(inputs, tensor.name, decode_typed(tensor.name, tensor.datatype, tensor.shape, tensor.contents))
    outputs = request.outputs
    return InferRequest(request.model_name, request.model_version, request.id, inputs,
                        [output.name for output in outputs] if outputs else None, bool(raw_contents))


def _put(inputs: dict, name: str, array: np.ndarray) -> None:
    if name in inputs:
        raise InvalidInput(f"input '{name}' appears more than once")
    inputs[name] = array


def encode_raw(array: np.ndarray) -> bytes:
    dtype = array.dtype
    if dtype.kind in "OSU":
        return b"".join(_LENGTH.pack(len(item)) + item for item in map(_as_bytes, array.ravel()))
    if dtype.byteorder in _LITTLE_ENDIAN:  # tobytes() writes C order whatever the strides
        return array.tobytes()
    return array.astype(dtype.newbyteorder("<")).tobytes()


def _as_bytes(item) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode()


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    """InferResponse -> ModelInferResponse. Raw when the request was raw, or when an output (FP16) has no
    typed field (raw_output_contents must then cover every output)."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                     id=response.id)
    outputs = response.outputs
    datatypes = [datatype_of(array) for array in outputs.values()]
    raw = response.raw or not all(datatype in CONTENTS_FIELD for datatype in datatypes)
    for (name, array), datatype in zip(outputs.items(), datatypes):
        tensor = message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            message.raw_output_contents.append(encode_raw(array))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(map(_as_bytes, array.ravel()))
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return message


def encode_model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(specs):
        return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in specs]

    return pb.ModelMetadataResponse(name=metadata.name, versions=metadata.versions, platform=metadata.platform,
                                    inputs=tensors(metadata.inputs), outputs=tensors(metadata.outputs))


def _triton_type(datatype: str) -> int:
    """A V2 datatype as Triton's DataType enum value (BYTES is TYPE_STRING there)."""
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def encode_model_config(config: ModelConfig) -> pb.ModelConfigResponse:
    message = pb.ModelConfig(
        name=config.name, platform=config.platform, max_batch_size=config.max_batch_size,
        input=[pb.ModelInput(name=s.name, data_type=_triton_type(s.datatype), dims=s.shape) for s in config.inputs],
        output=[pb.ModelOutput(name=s.name, data_type=_triton_type(s.datatype), dims=s.shape)
                for s in config.outputs])
    if config.max_queue_delay_us is not None:
        message.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    return pb.ModelConfigResponse(config=message)


def encode_model_statistics(stats: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    def duration(d: Duration) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    def inference_stats(s: ModelStatistics) -> pb.InferStatistics:
        # The model converts its inputs and outputs inside its call, so that time is in compute_infer; Triton's
        # tools want the three compute counts equal, hence compute_input/compute_output with 0 ns.
        converted = pb.StatisticDuration(count=s.compute_infer.count, ns=0)
        return pb.InferStatistics(success=duration(s.success), fail=duration(s.fail), queue=duration(s.queue),
                                  compute_input=converted, compute_infer=duration(s.compute_infer),
                                  compute_output=converted)

    return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
        name=s.name, version=s.version, last_inference=s.last_inference_ms, inference_count=s.inference_count,
        execution_count=s.execution_count, inference_stats=inference_stats(s)) for s in stats])
