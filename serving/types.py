"""Plain types the server core works with: tensor specs, requests and responses as numpy + dataclasses.

No protobuf and no TensorFlow here: codec.py converts from/to the wire, model.py from/to TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

# Open Inference Protocol datatype -> numpy dtype (little-endian on the wire). BYTES are Python bytes objects.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_DATATYPE_OF: dict[np.dtype, str] = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array ("FP32", "BYTES", ...); strings count as BYTES."""
    name = _DATATYPE_OF.get(array.dtype)
    if name is None:
        if array.dtype.kind in "SU":
            return "BYTES"
        name = _DATATYPE_OF.get(array.dtype.newbyteorder("<"), f"unsupported numpy dtype {array.dtype}")
    return name


def format_shape(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model: V2 datatype and shape, -1 for a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def matches(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape):  # a plain loop: checked on every request
            if want != -1 and want != got:
                return False
        return True


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str] = field(default_factory=list)


@dataclass
class InferRequest:
    """A decoded ModelInfer request. `inputs` keeps the request's order; `outputs` None means all."""

    model_name: str
    model_version: str
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    raw: bool = False
    arrived: datetime | None = None  # wall clock (UTC) when the request arrived, for the log
    started: float | None = None  # time.perf_counter() when it arrived, for the latency


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    raw: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """The model as Triton's ModelConfig describes it. With max_batch_size > 0 the tensors' shapes leave out
    the batch dimension; `max_queue_delay_us` is None when requests are not batched together."""

    name: str
    platform: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_queue_delay_us: int | None


@dataclass(frozen=True)
class Duration:
    """`count` events that took `ns` nanoseconds in total."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class ModelStatistics:
    name: str
    version: str
    last_inference_ms: int  # wall clock (ms since the epoch) of the last request's arrival; 0 before any
    inference_count: int  # rows through the model
    execution_count: int  # model calls
    success: Duration  # requests answered, and their time from arrival to the end of their model call
    fail: Duration  # requests refused by the input checks or failed by the model
    queue: Duration  # per request: from arrival to the start of its model call
    compute_infer: Duration  # per request: the time of the model call that served it
