"""The Python client of modelrun: the control-plane REST API (design 2.2) and predictions over gRPC.

    from modelrun.client import Client
    client = Client()                      # MODELRUN_API / MODELRUN_TOKEN / MODELRUN_HOME, like the CLI
    client.deploy("houses", model_uri="model.keras", training_data_uri="train.csv", wait=True)
    client.predict("houses", [{"rooms": 3, "area": 71.5, "city": "Lyon"}])

Deployments are plain dicts, exactly the API's JSON. Every failure is a `modelrun.errors.ModelrunError`
subclass carrying the API's message. Nothing heavy is imported here (no TensorFlow; numpy and gRPC only
when predicting).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from modelrun import errors
from modelrun.settings import Settings

TERMINAL = ("READY", "FAILED")
_BY_STATUS = {
    400: errors.InvalidInput,
    401: errors.Unauthenticated,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.TooLarge,
    422: errors.Unprocessable,
    503: errors.Unavailable,
}
Deployment = dict[str, Any]


class Client:
    """REST calls to the control plane and `predict` to a deployment's gRPC endpoint. Thread-safe."""

    def __init__(self, api: str | None = None, token: str | None = None, *, settings: Settings | None = None,
                 timeout: float = 30.0, refresh_after: float = 2.0):
        settings = settings or Settings()
        self.api = (api or settings.api).rstrip("/")
        token = token or settings.resolved_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.api, headers=headers, timeout=timeout)
        self.refresh_after = refresh_after
        self._lock = threading.Lock()
        self._targets: dict[str, _Target] = {}  # deployment name -> its endpoint and input metadata

    # -- REST -------------------------------------------------------------------------------------------

    def deploy(self, name: str, model_uri: str, training_data_uri: str, config: Mapping | None = None, *,
               wait: bool = False, timeout: float = 600.0,
               on_progress: Callable[[Deployment], None] | None = None) -> Deployment:
        """Create a deployment (POST /deployments). With `wait`, return once it is READY or FAILED."""
        body = {"name": name, "model_uri": model_uri, "training_data_uri": training_data_uri}
        if config is not None:
            body["config"] = dict(config)
        deployment = self._call("POST", "/deployments", json=body)
        return self.wait(name, timeout, on_progress, revision=deployment.get("revision")) if wait else deployment

    def list(self) -> list[Deployment]:
        return self._call("GET", "/deployments")["deployments"]

    def get(self, name: str) -> Deployment:
        """The deployment; `errors.NotFound` when there is none."""
        return self._call("GET", f"/deployments/{name}")

    def update(self, name: str, *, model_uri: str | None = None, training_data_uri: str | None = None,
               config: Mapping | None = None, wait: bool = False, timeout: float = 600.0,
               on_progress: Callable[[Deployment], None] | None = None) -> Deployment:
        """Roll out a new revision (PATCH). The current one keeps serving until the new one is READY."""
        body = {k: v for k, v in (("model_uri", model_uri), ("training_data_uri", training_data_uri)) if v}
        if config is not None:
            body["config"] = dict(config)
        if not body:
            raise errors.InvalidInput("nothing to update: give a new model, training data or config")
        deployment = self._call("PATCH", f"/deployments/{name}", json=body)
        return self.wait(name, timeout, on_progress, revision=deployment.get("revision")) if wait else deployment

    def delete(self, name: str, *, wait: bool = False, timeout: float = 120.0) -> Deployment | None:
        """Delete (DELETE). With `wait`, return once the deployment is gone."""
        deployment = self._call("DELETE", f"/deployments/{name}")
        with self._lock:
            self._targets.pop(name, None)
        if wait:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.get(name)
                except errors.NotFound:
                    return None
                if time.monotonic() > deadline:
                    raise errors.Unavailable(f"deployment {name!r} still exists after {timeout:.0f}s")
                time.sleep(0.25)
        return deployment

    def wait(self, name: str, timeout: float = 600.0, on_progress: Callable[[Deployment], None] | None = None, *,
             revision: int | None = None, interval: float = 0.25) -> Deployment:
        """Poll until the deployment (at `revision` or later, if given) is READY or FAILED; return it.

        `on_progress(deployment)` is called after every poll. A FAILED deployment is returned, not
        raised: its `error` says why. Past `timeout` seconds, raises `errors.Unavailable`.
        """
        deadline = time.monotonic() + timeout
        while True:
            deployment = self.get(name)
            if on_progress:
                on_progress(deployment)
            current = revision is None or (deployment.get("revision") or 0) >= revision
            if current and deployment.get("status") in TERMINAL:
                return deployment
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"deployment {name!r} is still {deployment.get('status')} after {timeout:.0f}s")
            time.sleep(interval)

    def health(self) -> dict:
        """GET /healthz (no token needed)."""
        return self._call("GET", "/healthz")

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise errors.Unavailable(f"cannot reach the modelrun API at {self.api} — is `modelrun up` running?") from None
        except httpx.TransportError as exc:
            raise errors.Unavailable(f"the modelrun API at {self.api} did not answer: {exc}") from None
        if response.is_success:
            return response.json() if response.content else {}
        raise _error_from(response)

    # -- predictions ------------------------------------------------------------------------------------

    def predict(self, name: str, rows: Iterable[Mapping[str, Any]], *, timeout: float = 30.0,
                retry_for: float = 30.0) -> list[dict[str, Any]]:
        """Predict `rows` (dicts keyed by feature) on deployment `name`; one dict of outputs per row.

        The endpoint and the model's inputs are cached (see `_target`). When the server is unavailable
        (an update moved the deployment to a new server, or it is restarting) the endpoint is looked up
        again and the request retried for up to `retry_for` seconds, with the same request `id`, so the
        prediction log can tell a retry from a new request.
        """
        rows = list(rows)
        if not rows:
            return []
        request_id = uuid.uuid4().hex
        deadline = time.monotonic() + retry_for
        while True:
            try:
                target = self._target(name)
                return target.infer(rows, request_id, timeout)
            except (_EndpointGone, errors.Unavailable) as exc:
                with self._lock:
                    known = self._targets.get(name)
                if known is None:  # never reached it: say so at once (API down, not deployed yet)
                    if isinstance(exc, _EndpointGone):
                        raise errors.Unavailable(f"deployment {name!r} did not answer: {exc}") from None
                    raise
                known.resolved_at = float("-inf")  # ask the API where it is now
                if time.monotonic() > deadline:
                    raise errors.Unavailable(f"deployment {name!r} did not answer: {exc}") from None
                time.sleep(0.1)

    def _target(self, name: str) -> _Target:
        """The cached endpoint of `name`, checked against the API every `refresh_after` seconds.

        After an update the previous revision serves for a short grace period, so a periodic check moves
        traffic to the new one before the old one stops. If the API cannot be reached, the cached
        endpoint is kept: predictions do not depend on the control plane being up.
        """
        with self._lock:
            target = self._targets.get(name)
        if target is not None and time.monotonic() - target.resolved_at < self.refresh_after:
            return target
        try:
            deployment = self.get(name)
        except errors.Unavailable:
            if target is None:
                raise
            target.resolved_at = time.monotonic()
            return target
        if not deployment.get("endpoint"):
            if deployment.get("status") == "FAILED":
                raise errors.Unavailable(f"deployment {name!r} FAILED and serves nothing: {deployment.get('error')}")
            raise errors.Unavailable(f"deployment {name!r} has no endpoint yet (status {deployment.get('status')}); "
                                     f"wait for READY with `modelrun get {name}`")
        with self._lock:
            current = self._targets.get(name)
            if current is not None and current.endpoint == deployment["endpoint"]:
                current.resolved_at = time.monotonic()
                return current
            self._targets[name] = _Target(deployment)  # new endpoint; threads still on the old one finish there
            return self._targets[name]

    def close(self) -> None:
        self._http.close()
        with self._lock:
            targets, self._targets = list(self._targets.values()), {}
        for target in targets:
            target.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _error_from(response: httpx.Response) -> errors.ModelrunError:
    """The modelrun error for an API error response ({"error": {"code", "message"}})."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:200] or response.reason_phrase
    cls = _BY_STATUS.get(response.status_code, errors.ModelrunError)
    return cls(message)


# -- the wire: rows <-> Open Inference Protocol tensors ---------------------------------------------------

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_NUMPY = {"BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT8": "uint8",
          "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "FP16": "float16", "FP32": "float32",
          "FP64": "float64"}
_RETRY = ("UNAVAILABLE",)


class _EndpointGone(Exception):
    """The endpoint did not answer (moved, restarting, stopped): look the deployment up again."""


class _Target:
    """One deployment's gRPC endpoint, its model's inputs and the feature order of its training data."""

    def __init__(self, deployment: Deployment):
        import grpc

        from modelrun.proto import inference_pb2_grpc

        self.model = deployment.get("model_name") or deployment["name"]
        self.endpoint = deployment["endpoint"]
        self.resolved_at = time.monotonic()
        self.features = _feature_order(deployment)
        endpoint = deployment["endpoint"]
        if endpoint.startswith("https://"):
            host = endpoint.removeprefix("https://").rstrip("/")
            self.channel = grpc.secure_channel(f"{host}:443" if ":" not in host else host,
                                               grpc.ssl_channel_credentials())
        else:
            self.channel = grpc.insecure_channel(endpoint.removeprefix("http://").rstrip("/"))
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

    def _tensors(self, rows, timeout):
        inputs = self._metadata(timeout)
        keys = list(self.features or rows[0].keys())
        if len(inputs) == 1 and inputs[0].name not in rows[0]:
            # One 2-D input: the rows become a matrix, columns in the training data's feature order.
            (meta,) = inputs
            width = meta.shape[-1] if len(meta.shape) == 2 else -1
            if width > 0 and width != len(keys):
                raise errors.InvalidInput(
                    f"the model takes {width} features per row, the rows have {len(keys)}: {', '.join(keys)}")
            values = [_value(row, key, i, meta.datatype) for i, row in enumerate(rows) for key in keys]
            yield meta.name, meta.datatype, [len(rows), len(keys)], values
            return
        for meta in inputs:  # one named input per feature
            values = [_value(row, meta.name, i, meta.datatype) for i, row in enumerate(rows)]
            shape = [len(rows)] + [1] * (len(meta.shape) - 1) if len(meta.shape) > 1 else [len(rows)]
            yield meta.name, meta.datatype, shape, values

    def _metadata(self, timeout):
        with self._lock:
            if self._inputs is None:
                from modelrun.proto import inference_pb2 as pb

                reply = self._rpc(self.stub.ModelMetadata, pb.ModelMetadataRequest(name=self.model), timeout)
                self._inputs = list(reply.inputs)
            return self._inputs

    def _rpc(self, method, request, timeout):
        import grpc

        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details() or str(exc.code())
            if code.name in _RETRY:
                raise _EndpointGone(detail) from None
            cls = {"INVALID_ARGUMENT": errors.InvalidInput, "NOT_FOUND": errors.NotFound,
                   "RESOURCE_EXHAUSTED": errors.TooLarge, "FAILED_PRECONDITION": errors.Unprocessable,
                   "DEADLINE_EXCEEDED": errors.Unavailable}.get(code.name, errors.ModelrunError)
            raise cls(f"{self.model}: {detail}") from None

    def close(self) -> None:
        self.channel.close()


def _feature_order(deployment: Deployment) -> list[str] | None:
    """The training data's feature columns in order: from the API if it says, else from a local file."""
    features = deployment.get("features")
    if isinstance(features, list) and features:
        return [f["name"] if isinstance(f, dict) else str(f) for f in features]
    try:
        columns = _columns_of(deployment.get("training_data_uri") or "")
    except Exception:  # unreadable or remote: fall back to the rows' own key order
        return None
    label = (deployment.get("config") or {}).get("label")
    return [c for c in columns if c != label] or None


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
