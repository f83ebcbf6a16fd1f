"""The gRPC half of `modelrun.client`: a deployment's endpoint, and rows <-> Open Inference Protocol tensors.

A model with one 2-D input gets the rows as a matrix whose columns follow the training data's feature
order, as the control plane reports it in the deployment's `features`; a model with one named input per feature gets one tensor per feature in the datatype the model's
metadata asks for (strings as BYTES). Every row must have every feature the model takes (one error names
all that are missing); other keys are ignored. Outputs come back as one dict per row. gRPC, numpy and the
generated stubs are imported only here, when predicting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelrun import errors

if TYPE_CHECKING:
    from modelrun.idtoken import IdTokens

Deployment = dict[str, Any]

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_NUMPY = {"BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT8": "uint8",
          "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "FP16": "float16", "FP32": "float32",
          "FP64": "float64"}
_RETRY = ("UNAVAILABLE",)


class EndpointGone(Exception):
    """The endpoint did not answer (moved, restarting, stopped): look the deployment up again."""


class Target:
    """One deployment's gRPC endpoint, its model's inputs and the feature order of its training data.

    An `https://host[:port]` endpoint (Cloud Run) is reached over TLS, port 443 unless given; with
    `id_tokens`, every call carries an ID token whose audience is the endpoint's URL. `tls_credentials`
    replaces the TLS channel credentials (tests pass `grpc.local_channel_credentials()` to reach a
    loopback server as if it were Cloud Run). Other endpoints (`host:port`, the local stack) are cleartext.
    """

    def __init__(self, deployment: Deployment, *, id_tokens: IdTokens | None = None, tls_credentials=None,
                 max_message_bytes: int = 64 * 1024 * 1024):
        import grpc

        from modelrun.proto import inference_pb2_grpc

        self.model = deployment.get("model_name") or deployment["name"]
        self.endpoint = deployment["endpoint"]
        self.resolved_at = time.monotonic()
        self.revision = deployment.get("serving_revision")
        self.features = _feature_order(deployment)
        endpoint = deployment["endpoint"]
        self.id_tokens = self.audience = None
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   # Cloud Run's front end keeps idle connections; a ping every 5 minutes while calls are
                   # open notices a dead one without being taken for a flood (servers allow one per 5 min).
                   ("grpc.keepalive_time_ms", 300_000), ("grpc.keepalive_timeout_ms", 20_000),
                   ("grpc.keepalive_permit_without_calls", 0)]
        if endpoint.startswith("https://"):
            host = endpoint.removeprefix("https://").split("/")[0]
            credentials = tls_credentials or grpc.ssl_channel_credentials()
            if id_tokens is not None:
                from modelrun.idtoken import audience, call_credentials

                self.id_tokens, self.audience = id_tokens, audience(endpoint)
                credentials = grpc.composite_channel_credentials(
                    credentials, call_credentials(id_tokens, self.audience))
            self.channel = grpc.secure_channel(f"{host}:443" if ":" not in host else host, credentials, options)
        else:
            self.channel = grpc.insecure_channel(endpoint.removeprefix("http://").rstrip("/"), options)
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._inputs: list | None = None
        self._lock = threading.Lock()

    def infer(self, rows: list[Mapping[str, Any]], request_id: str, timeout: float) -> list[dict[str, Any]]:
        from modelrun.proto import inference_pb2 as pb

        request = pb.ModelInferRequest(model_name=self.model, id=request_id)
        for name, datatype, shape, values in self._tensors(rows, timeout):
            tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
            if datatype not in _CONTENTS:
                raise errors.InvalidInput(f"input {name!r} has datatype {datatype}, which the client cannot send")
            getattr(tensor.contents, _CONTENTS[datatype]).extend(values)
        response = self._rpc(self.stub.ModelInfer, request, timeout)
        return _rows_from(response, len(rows))

    def refresh(self, deployment: Deployment) -> None:
        """The API still names this endpoint: note the time, and when another revision serves behind it
        (Cloud Run keeps one URL across revisions) take its feature order and ask for its inputs again."""
        self.resolved_at = time.monotonic()
        if deployment.get("serving_revision") != self.revision:
            with self._lock:
                self.revision = deployment.get("serving_revision")
                self.features = _feature_order(deployment)
                self._inputs = None

    def _tensors(self, rows, timeout):
        inputs = self._metadata(timeout)
        if _takes_matrix(inputs, self.features, rows[0]):
            # One 2-D input: the rows become a matrix, columns in the training data's feature order.
            (meta,) = inputs
            keys = self._columns(meta, rows)
            width = meta.shape[-1] if len(meta.shape) == 2 else -1
            if width > 0 and width != len(keys):
                raise errors.InvalidInput(
                    f"the model takes {width} features per row, the rows have {len(keys)}: {', '.join(keys)}")
            _check_rows(rows, keys, self.model)
            values = [_value(row, key, i, meta.datatype) for i, row in enumerate(rows) for key in keys]
            yield meta.name, meta.datatype, [len(rows), len(keys)], values
            return
        _check_rows(rows, [meta.name for meta in inputs], self.model)
        for meta in inputs:  # one named input per feature
            values = [_value(row, meta.name, i, meta.datatype) for i, row in enumerate(rows)]
            shape = [len(rows)] + [1] * (len(meta.shape) - 1) if len(meta.shape) > 1 else [len(rows)]
            yield meta.name, meta.datatype, shape, values

    def _columns(self, meta, rows) -> list[str]:
        """The matrix's column order: the API's `features`, else the local training data's header. With
        neither, only a one-column matrix is unambiguous; guessing from the rows' key order could
        silently swap features, so that is an error."""
        if self.features:
            return self.features
        keys = list(rows[0])
        if len(keys) == 1 or (len(meta.shape) == 2 and meta.shape[-1] == 1):
            return keys[:1]
        raise errors.InvalidInput(
            f"cannot tell the column order of {self.model}'s input {meta.name!r}: the control plane does not "
            f"report the training data's feature columns and the training data is not readable here; "
            f"upgrade the control plane (its Deployment JSON then carries `features`)")

    def _metadata(self, timeout):
        with self._lock:
            if self._inputs is None:
                from modelrun.proto import inference_pb2 as pb

                reply = self._rpc(self.stub.ModelMetadata, pb.ModelMetadataRequest(name=self.model), timeout)
                self._inputs = list(reply.inputs)
            return self._inputs

    def _rpc(self, method, request, timeout):
        import grpc

        if self.id_tokens is not None:
            # gRPC would report a token that cannot be had as UNAVAILABLE from its own thread: fetch it
            # here first, so missing credentials are an error of their own (the call then reuses it).
            self.id_tokens.token(self.audience)
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details() or str(exc.code())
            if code.name in _RETRY:
                raise EndpointGone(detail) from None
            if code.name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                raise self._refused(code.name, detail) from None
            cls = {"INVALID_ARGUMENT": errors.InvalidInput, "NOT_FOUND": errors.NotFound,
                   "RESOURCE_EXHAUSTED": errors.TooLarge, "FAILED_PRECONDITION": errors.Unprocessable,
                   "DEADLINE_EXCEEDED": errors.Unavailable}.get(code.name, errors.ModelrunError)
            raise cls(f"{self.model}: {detail}") from None

    def _refused(self, code: str, detail: str) -> errors.IdTokenRefused:
        if self.id_tokens is None:
            return errors.IdTokenRefused(
                f"the endpoint {self.endpoint} of {self.model} wants a signed-in caller ({code}: {detail}); "
                f"set MODELRUN_ID_TOKEN=always to send it an ID token from your Google credentials")
        from modelrun.idtoken import INVOKER

        self.id_tokens.forget(self.audience)  # the next call fetches a new one
        return errors.IdTokenRefused(
            f"the endpoint {self.endpoint} of {self.model} refused the ID token for {self.audience} "
            f"({code}: {detail}); the caller needs {INVOKER} on its Cloud Run service")

    def close(self) -> None:
        self.channel.close()


def _feature_order(deployment: Deployment) -> list[str] | None:
    """The serving revision's feature columns in training-data order: the API's `features` (the source
    of truth); only when it gives none (an older control plane), the header of a local training-data file
    less `config.label`; else None."""
    features = deployment.get("features")
    if isinstance(features, list) and features:
        return [f["name"] if isinstance(f, dict) else str(f) for f in features]
    try:
        columns = _columns_of(deployment.get("training_data_uri") or "")
    except Exception:  # unreadable or remote
        return None
    label = (deployment.get("config") or {}).get("label")
    return [c for c in columns if c != label] or None


def _takes_matrix(inputs: list, features: list[str] | None, first_row: Mapping[str, Any]) -> bool:
    """Whether the model takes the rows as one matrix (one 2-D input) rather than one input per feature.

    Decided as the control plane decides when it checks the model against its training data: one 2-D
    input, unless it is a one-wide input named like a feature column.
    """
    if len(inputs) != 1:
        return False
    meta = inputs[0]
    if features:
        return len(meta.shape) == 2 and not (meta.shape[1] == 1 and meta.name in features)
    return meta.name not in first_row


_NAMED = 5  # missing features named in the error
_LISTED = 12  # a model with more features than this is not listed in full (`modelrun get` lists them)


def _check_rows(rows: list[Mapping[str, Any]], needed: list[str], model: str) -> None:
    """One error naming every feature some row lacks (and which rows). Keys the model does not take are
    ignored (a label or id column, say), but named in that error in case one is a misspelling."""
    lacking: dict[str, list[int]] = {}
    extra: dict[str, None] = {}
    wanted = set(needed)
    for index, row in enumerate(rows):
        for key in needed:
            if key not in row:
                lacking.setdefault(key, []).append(index)
        if len(extra) < 10:
            extra.update((k, None) for k in row if k not in wanted)
    if not lacking:
        return
    parts = []
    for key, where in list(lacking.items())[:_NAMED]:
        shown = ", ".join(map(str, where[:5])) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
        parts.append(f"{key!r} (row{'s' if len(where) > 1 else ''} {shown})")
    if len(lacking) > _NAMED:
        parts.append(f"and {len(lacking) - _NAMED} more")
    if len(needed) <= _LISTED:
        message = (f"missing feature{'s' if len(lacking) > 1 else ''} {', '.join(parts)}; "
                   f"each row needs all of: {', '.join(needed)}")
    else:  # a wide model: do not print every name (`modelrun get` lists them)
        message = (f"{len(lacking)} missing feature{'s' if len(lacking) > 1 else ''}: {', '.join(parts)}; each row "
                   f"needs all {len(needed)} features the model takes (`modelrun get {model} --json` lists them)")
    if extra:
        message += f" (the rows also have {', '.join(list(extra)[:10])}, which the model does not take)"
    raise errors.InvalidInput(message)


def _columns_of(uri: str) -> list[str]:
    import csv
    import json

    from modelrun.uris import resolve_local

    path = resolve_local(uri)
    suffix = path.suffix.lower()
    if suffix == ".parquet" or path.is_dir():
        import pyarrow.parquet

        return pyarrow.parquet.read_schema(path).names
    with open(path, encoding="utf-8-sig") as f:
        if suffix == ".csv":
            return next(csv.reader(f))
        head = f.read(1 << 20).lstrip()
    if head.startswith("["):
        return list(json.loads(head if len(head) < (1 << 20) else open(path).read())[0])
    return list(json.loads(head.splitlines()[0]))


def _value(row: Mapping[str, Any], key: str, index: int, datatype: str) -> Any:
    try:
        value = row[key]
    except KeyError:
        raise errors.InvalidInput(f"row {index} has no feature {key!r} (it has: {', '.join(row)})") from None
    if datatype == "BYTES":
        return value if isinstance(value, bytes) else str(value).encode()
    if datatype == "BOOL":
        return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)
    try:
        if datatype.startswith("FP"):
            return float(value)
        return int(value) if not isinstance(value, str) or value.strip().lstrip("+-").isdigit() else int(float(value))
    except (TypeError, ValueError):
        raise errors.InvalidInput(
            f"row {index}: feature {key!r} must be a number ({datatype}), got {value!r}") from None


def _rows_from(response, count: int) -> list[dict[str, Any]]:
    """Split the output tensors into one dict per row; a one-element output becomes a scalar."""
    import numpy as np

    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for index, output in enumerate(response.outputs):
        if index < len(response.raw_output_contents):
            values = _from_raw(response.raw_output_contents[index], output.datatype)
        else:
            values = list(getattr(output.contents, _CONTENTS.get(output.datatype, "fp32_contents")))
        if output.datatype == "BYTES":
            values = np.array([v.decode("utf-8", "replace") for v in values], dtype=object)
        array = np.asarray(values).reshape(count, -1)
        for row, item in zip(rows, array, strict=True):
            row[output.name] = item[0].item() if item.size == 1 and hasattr(item[0], "item") else (
                item[0] if item.size == 1 else item.tolist())
    return rows


def _from_raw(raw: bytes, datatype: str) -> list:
    import numpy as np

    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=np.dtype(_NUMPY[datatype]).newbyteorder("<"))
    values, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset:offset + 4], "little")
        values.append(raw[offset + 4:offset + 4 + size])
        offset += 4 + size
    return values
