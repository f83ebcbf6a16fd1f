"""The server's core: readiness, metadata and inference on numpy + dataclasses (no protobuf here).

`DataPlane` starts without a model (the server listens first) and becomes ready when `set_model` is
called after loading and warm-up. Every request is checked against the model's signature before it
reaches the model; each check names the input and what was expected vs received.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

import modelrun
from modelrun.errors import InvalidInput, NotFound, Unavailable
from serving.batching import Batcher
from serving.model import Model
from serving.types import (NUMPY_DTYPES, Duration, InferRequest, InferResponse, ModelConfig, ModelMetadata,
                           ModelStatistics, ServerMetadata, TensorSpec, datatype_of, format_shape)

SERVER_NAME = "modelrun"
# Triton protocol extensions served (ServerMetadata lists them; perf_analyzer reads server statistics only when
# "statistics" is listed).
EXTENSIONS = ("model_configuration", "statistics")
_FLOATS = frozenset(("FP16", "FP32", "FP64"))


class DataPlane:
    def __init__(self, name: str, revision: int, *, feature_names: list[str] | None = None, logger=None):
        self.name = name
        self.version = str(revision)
        self.revision = revision
        self.feature_names = feature_names
        self.logger = logger  # a PredictionLogger, or None when prediction logging is off
        if logger is not None:
            from serving.prediction_log import PredictionBatch

            self._batch_record = PredictionBatch
        self.model: Model | None = None
        self.batcher: Batcher | None = None
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: dict[str, TensorSpec] = {}
        self._columns: list[str] | None = None  # log column names for a single 2-D input
        # For ModelStatistics (the batcher counts the rest), touched only on the event loop: no lock needed.
        self._rejected = 0  # requests that failed the checks and never reached the model
        self._last_arrived: datetime | None = None

    # ---- lifecycle ----
    def check(self, model: Model) -> None:
        """Raise ValueError when feature_names do not fit the model's input."""
        self._log_columns(model)

    def set_model(self, model: Model, batcher: Batcher) -> None:
        """Make the loaded, warmed-up model live. Raises ValueError when feature_names do not fit it."""
        self._inputs = {spec.name: spec for spec in model.inputs}
        self._outputs = {spec.name: spec for spec in model.outputs}
        self._columns = self._log_columns(model)
        self.model, self.batcher = model, batcher

    def _log_columns(self, model: Model) -> list[str] | None:
        if len(model.inputs) != 1 or len(model.inputs[0].shape) != 2:
            return None  # one log column per named input
        spec = model.inputs[0]
        width = spec.shape[1]
        if self.feature_names is not None and width != -1 and len(self.feature_names) != width:
            raise ValueError(f"MODELRUN_FEATURE_NAMES has {len(self.feature_names)} names but input "
                             f"'{spec.name}' has {width} columns")
        return self.feature_names or ([f"{spec.name}_{i}" for i in range(width)] if width != -1 else None)

    @property
    def ready(self) -> bool:
        return self.model is not None

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.ready and name == self.name and version in ("", self.version)

    # ---- metadata ----
    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=modelrun.__version__, extensions=list(EXTENSIONS))

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self._check_model(name, version)
        return ModelMetadata(name=self.name, versions=[self.version], platform=model.platform,
                             inputs=list(model.inputs), outputs=list(model.outputs))

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        """Triton's view of the model: a model with a free first dimension everywhere is batched, so its
        max_batch_size is the batcher's and its shapes leave out that dimension; any other model has
        max_batch_size 0 and full shapes."""
        model = self._check_model(name, version)
        if not model.batchable:
            return ModelConfig(name=self.name, platform=model.platform, max_batch_size=0, inputs=list(model.inputs),
                               outputs=list(model.outputs), max_queue_delay_us=None)

        def unbatched(specs: list[TensorSpec]) -> list[TensorSpec]:
            return [TensorSpec(spec.name, spec.datatype, spec.shape[1:]) for spec in specs]

        return ModelConfig(name=self.name, platform=model.platform, max_batch_size=self.batcher.max_batch_size,
                           inputs=unbatched(model.inputs), outputs=unbatched(model.outputs),
                           max_queue_delay_us=round(self.batcher.max_wait * 1_000_000))

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Counters since start; an empty name means every model served (here: the one)."""
        self._check_model(name or self.name, version)
        batch = self.batcher.stats
        arrived = self._last_arrived
        return [ModelStatistics(
            name=self.name, version=self.version,
            last_inference_ms=int(arrived.timestamp() * 1000) if arrived is not None else 0,
            inference_count=batch.rows, execution_count=batch.calls,
            success=Duration(batch.succeeded, _ns(batch.succeeded_seconds)),
            fail=Duration(batch.failed + self._rejected, _ns(batch.failed_seconds)),  # rejections are not timed
            queue=Duration(batch.requests, _ns(batch.queue_seconds)),
            compute_infer=Duration(batch.requests, _ns(batch.request_compute_seconds)))]

    def _check_model(self, name: str, version: str) -> Model:
        if name != self.name:
            raise NotFound(f"model '{name}' is not served here; this server serves '{self.name}'")
        if version not in ("", self.version):
            raise NotFound(f"model '{name}' has no version '{version}'; the served version is '{self.version}'")
        if self.model is None:
            raise Unavailable(f"model '{name}' is still loading; retry when the server reports SERVING")
        return self.model

    # ---- inference ----
    def check_model(self, name: str, version: str = "") -> None:
        """NOT_FOUND / UNAVAILABLE before the request body is decoded."""
        self._check_model(name, version)

    async def infer(self, request: InferRequest) -> InferResponse:
        started = request.started or time.perf_counter()
        arrived = request.arrived or datetime.now(UTC)
        self._check_model(request.model_name, request.model_version)
        self._last_arrived = arrived
        try:
            outputs = self._check_outputs(request.outputs)
            self._check_inputs(request.inputs)
        except InvalidInput:
            self._rejected += 1
            raise
        inputs = request.inputs
        if len(inputs) > 1:
            inputs = {name: inputs[name] for name in self._inputs}  # the model's order
        tag = (request.id, arrived, started) if self.logger is not None else None
        result = await self.batcher.predict(inputs, tag, started)
        if outputs is not None:
            result = {name: result[name] for name in outputs}
        return InferResponse(model_name=self.name, model_version=self.version, id=request.id, outputs=result,
                             raw=request.raw)

    def _check_outputs(self, wanted: list[str] | None) -> list[str] | None:
        if wanted is None:
            return None
        for name in wanted:
            if name not in self._outputs:
                raise InvalidInput(f"unknown output '{name}'; the model's outputs are: {_listing(self._outputs)}")
        if len(set(wanted)) != len(wanted):
            raise InvalidInput("an output is requested more than once")
        return wanted

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> int:
        """Validate against the signature; return the number of rows."""
        if inputs.keys() != self._inputs.keys():
            for name in inputs:
                if name not in self._inputs:
                    raise InvalidInput(f"unknown input '{name}'; the model's inputs are: {_listing(self._inputs)}")
            for name in self._inputs:
                if name not in inputs:
                    raise InvalidInput(f"missing input '{name}'; the model's inputs are: {_listing(self._inputs)}")
        rows = None
        for name, spec in self._inputs.items():
            array = inputs[name]
            if array.dtype != NUMPY_DTYPES[spec.datatype]:  # one comparison when it fits; strings count as BYTES
                got = datatype_of(array)
                if got != spec.datatype:
                    raise InvalidInput(f"input '{name}': expected {spec.datatype}, got {got}")
            shape = array.shape
            if not spec.matches(shape):
                raise InvalidInput(f"input '{name}': expected shape {format_shape(spec.shape)}, "
                                   f"got {format_shape(shape)}")
            if not shape:
                continue
            if shape[0] == 0:
                raise InvalidInput(f"input '{name}' has no rows (shape {format_shape(shape)}); send at least one")
            if rows is None:
                rows, first = shape[0], name
            elif shape[0] != rows:
                raise InvalidInput(f"inputs disagree on the number of rows: '{first}' has {rows}, "
                                   f"'{name}' has {shape[0]}")
            if spec.datatype in _FLOATS:
                _check_finite(name, array)
        return rows or 1

    def log_batch(self, tags: list, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                  rows: list[int]) -> None:
        """The batcher's observer (on the model thread): one model call's requests go to the prediction log
        as one entry. Every output of the model is logged, whatever each caller selected."""
        done = time.perf_counter()
        requests = [(client_id, arrived, (done - started) * 1000.0, n) for (client_id, arrived, started), n in
                    zip(tags, rows)]
        if self._columns is not None:
            (array,) = inputs.values()
            # One contiguous array per column, so each request's slice of it encodes without a copy.
            features = dict(zip(self._columns, np.ascontiguousarray(array.T)))
        else:
            features = {name: _column(array) for name, array in inputs.items()}
        self.logger.log(self._batch_record(deployment=self.name, revision=self.revision, features=features,
                                           outputs={name: _column(array) for name, array in outputs.items()},
                                           requests=requests))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _check_finite(name: str, array: np.ndarray) -> None:
    finite = np.isfinite(array)
    if finite.all():
        return
    index = np.argwhere(~finite)[0]
    value = array[tuple(index)]
    what = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    raise InvalidInput(f"input '{name}' has {what} at row {index[0]}" +
                       (f", column {index[1]}" if len(index) > 1 else ""))


def _column(array: np.ndarray) -> np.ndarray:
    """[n, 1] -> [n]: one value per row for a per-feature input or a single-value output."""
    return np.ascontiguousarray(array[:, 0]) if array.ndim == 2 and array.shape[1] == 1 else array


def _listing(specs: dict[str, TensorSpec]) -> str:
    return ", ".join(f"'{name}' ({spec.datatype} {format_shape(spec.shape)})" for name, spec in specs.items())
