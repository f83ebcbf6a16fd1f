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

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from modelrun import errors, idtoken
from modelrun.client_grpc import EndpointGone, Target
from modelrun.idtoken import IdTokens
from modelrun.settings import Settings

TERMINAL = ("READY", "FAILED")
_FIRST_PAUSE, _LAST_PAUSE = 0.1, 2.0  # seconds between retries of an unavailable endpoint
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
                 timeout: float = 30.0, refresh_after: float = 2.0, id_tokens: IdTokens | None = None,
                 transport: httpx.BaseTransport | None = None, tls_credentials=None):
        """`api`, `token`: override MODELRUN_API / MODELRUN_TOKEN. Google Cloud endpoints (see
        `MODELRUN_ID_TOKEN`) get ID tokens from `id_tokens` (default: Application Default Credentials)
        instead of the token. `transport` (httpx) and `tls_credentials` (gRPC channel credentials for
        https endpoints) are for tests: a mock API, a loopback server standing in for Cloud Run."""
        settings = settings or Settings()
        self.api = (api or settings.api).rstrip("/")
        self._id_token_mode = settings.id_token
        self._id_tokens = id_tokens or IdTokens()
        self._grpc_options = {"tls_credentials": tls_credentials, "max_message_bytes": settings.grpc_max_message_bytes}
        self._api_audience = None
        auth, headers = None, {}
        if idtoken.wanted(self.api, settings.id_token):  # the `api` Cloud Function behind IAM
            self._api_audience = idtoken.audience(self.api)
            auth = idtoken.HttpxIdTokenAuth(self._id_tokens, self._api_audience)
        elif token := token or settings.resolved_token():
            headers = {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=self.api, headers=headers, auth=auth, timeout=timeout, transport=transport)
        self.refresh_after = refresh_after
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}  # deployment name -> its endpoint and input metadata

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

    def promote(self, name: str, *, wait: bool = False, timeout: float = 120.0) -> Deployment:
        """Give the canary all the traffic. With `wait`, return once it serves (or failed)."""
        return self._canary(name, "promote", wait, timeout)

    def rollback(self, name: str, *, wait: bool = False, timeout: float = 120.0) -> Deployment:
        """Drop the canary; the serving revision gets all the traffic again. With `wait`, return once done."""
        return self._canary(name, "rollback", wait, timeout)

    def _canary(self, name: str, action: str, wait: bool, timeout: float) -> Deployment:
        deployment = self._call("POST", f"/deployments/{name}/{action}")
        deadline = time.monotonic() + timeout
        # A promoted canary may first start again at the deployment's endpoint (DEPLOYING, no canary then).
        while wait and (deployment.get("canary") is not None or deployment.get("status") not in TERMINAL):
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"deployment {name!r} still has its canary after {timeout:.0f}s")
            time.sleep(0.25)
            deployment = self.get(name)
        return deployment

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

    def drift(self, name: str, window: str | None = None, *, timeout: float = 300.0) -> dict:
        """Refresh drift and return NAME's reports: {"deployment", "windows": [report, ...]}, or with
        `window` ("all", "last-24h", "YYYY-MM-DD") that window's report (design 2.6)."""
        params = {"window": window} if window else None
        return self._call("GET", f"/deployments/{name}/drift", params=params, timeout=timeout)

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
        if self._api_audience and response.status_code in (401, 403):  # IAM in front of the function
            raise errors.IdTokenRefused(
                f"the modelrun API at {self.api} refused the ID token for {self._api_audience} (HTTP "
                f"{response.status_code}); the caller needs {idtoken.INVOKER} on the `api` function")
        raise _error_from(response)

    # -- predictions ------------------------------------------------------------------------------------

    def predict(self, name: str, rows: Iterable[Mapping[str, Any]], *, timeout: float = 30.0,
                retry_for: float = 30.0) -> list[dict[str, Any]]:
        """Predict `rows` (dicts keyed by feature) on deployment `name`; one dict of outputs per row.

        Every row needs every feature the model takes, else `errors.InvalidInput` names the missing ones;
        keys the model does not take (a label, an id) are ignored. A model with one 2-D input gets the
        features in the order the deployment's `features` gives (the training data's column order).

        The endpoint and the model's inputs are cached (see `_target`). When the server is unavailable
        (an update moved the deployment to a new server, it is restarting, Cloud Run scaled it in) the
        endpoint is looked up again and the request retried, with the same request `id` so the prediction
        log can tell a retry from a new request, after pauses of 0.1 s doubling up to 2 s, for up to
        `retry_for` seconds. Each attempt waits at most `timeout` seconds, a retry no longer than
        `retry_for` leaves.
        """
        rows = list(rows)
        if not rows:
            return []
        request_id = uuid.uuid4().hex
        start = time.monotonic()
        deadline, attempt, pause = start + retry_for, 0, _FIRST_PAUSE
        while True:
            attempt += 1
            # Each attempt has a deadline: `timeout`, and no later than `retry_for` allows for a retry.
            budget = timeout if attempt == 1 else max(min(timeout, deadline - time.monotonic()), 0.1)
            try:
                target = self._target(name)
                return target.infer(rows, request_id, budget)
            except (EndpointGone, errors.Unavailable) as exc:
                with self._lock:
                    known = self._targets.get(name)
                if known is None:  # never reached it: say so at once (API down, not deployed yet)
                    if isinstance(exc, EndpointGone):
                        raise errors.Unavailable(f"deployment {name!r} did not answer: {exc}") from None
                    raise
                known.resolved_at = float("-inf")  # ask the API where it is now
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.Unavailable(
                        f"deployment {name!r} at {known.endpoint} did not answer: {exc} (gave up after {attempt} "
                        f"attempt{'s' if attempt > 1 else ''} in {time.monotonic() - start:.1f}s)") from None
                # Exponential backoff with jitter (Cloud Run scales in with GOAWAY; a restart takes a while).
                time.sleep(min(pause * random.uniform(0.5, 1.0), left))
                pause = min(pause * 2, _LAST_PAUSE)

    def _target(self, name: str) -> Target:
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
            if current is None or current.endpoint != deployment["endpoint"]:
                # A new endpoint; threads on the old one finish there.
                tokens = self._id_tokens if idtoken.wanted(deployment["endpoint"], self._id_token_mode) else None
                self._targets[name] = Target(deployment, id_tokens=tokens, **self._grpc_options)
                return self._targets[name]
        current.refresh(deployment)  # same endpoint, maybe another revision behind it (Cloud Run)
        return current

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
