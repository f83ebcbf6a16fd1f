"""Google ID tokens for private Cloud Run endpoints and the `api` Cloud Function.

On Google Cloud the model servers are private Cloud Run services and the REST API is a Cloud Function
behind IAM: each request carries `authorization: Bearer <ID token>`, an ID token whose audience is the
service's URL. `IdTokens` fetches one token per audience from Application Default Credentials (a
service-account key named by GOOGLE_APPLICATION_CREDENTIALS, or the metadata server when running on
Google Cloud), keeps it and fetches a new one shortly before it expires (they last an hour).

Which requests carry one is `MODELRUN_ID_TOKEN` (`auto`, `always`, `never`), decided by `wanted`.
google-auth is imported only when a token is first needed; gRPC only by `call_credentials`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Generator
from urllib.parse import urlsplit

import httpx

from modelrun import errors

GOOGLE_HOSTS = (".run.app", ".cloudfunctions.net")
"""Hosts that `MODELRUN_ID_TOKEN=auto` sends ID tokens to (over https only)."""

LIFETIME = 3000.0
"""Seconds a token is kept when its expiry cannot be read from it (Google's last 3600)."""

MARGIN = 300.0
"""A token is replaced this many seconds before it expires."""

INVOKER = "roles/run.invoker"


def wanted(url: str, mode: str) -> bool:
    """Whether requests to `url` carry an ID token under `MODELRUN_ID_TOKEN=mode`.

    `never`: no request does. `always`: every https URL (a custom domain in front of Cloud Run, say).
    `auto`: https URLs on Cloud Run's and Cloud Functions' own hosts. Cleartext URLs (the local stack)
    never do: a token must not travel unencrypted.
    """
    parts = urlsplit(url)
    if mode == "never" or parts.scheme != "https":
        return False
    return mode == "always" or (parts.hostname or "").endswith(GOOGLE_HOSTS)


def audience(url: str) -> str:
    """The audience to ask for: the URL's origin, `https://host` (Cloud Run checks the service URL).

    A function at `https://REGION-PROJECT.cloudfunctions.net/NAME` is the whole URL up to its name,
    since that host serves every function of a project.
    """
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port not in (None, 443) else "")
    if (parts.hostname or "").endswith(".cloudfunctions.net"):
        name = parts.path.strip("/").split("/")[0]
        return f"{origin}/{name}" if name else origin
    return origin


def fetch_from_adc(audience: str) -> str:
    """One ID token for `audience` from Application Default Credentials; `errors.NoGoogleCredentials`
    when there are none that can sign one."""
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.id_token

    try:
        return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise errors.NoGoogleCredentials(
            f"no Google credentials to sign in to {audience} ({exc}): set GOOGLE_APPLICATION_CREDENTIALS to a "
            f"service-account key file, or to the file `gcloud auth application-default login "
            f"--impersonate-service-account=SA_EMAIL` writes (plain user credentials cannot mint ID tokens for "
            f"a URL), or run on Google Cloud") from None
    except google.auth.exceptions.GoogleAuthError as exc:
        raise errors.NoGoogleCredentials(f"could not get an ID token for {audience}: {exc}") from None


def expiry(token: str) -> float | None:
    """The `exp` claim (Unix time) of a JWT, read without checking its signature; None if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class IdTokens:
    """ID tokens per audience, each kept until `MARGIN` seconds before it expires. Thread-safe.

    `fetch(audience) -> token` defaults to Application Default Credentials; tests pass their own, and
    a `clock` (Unix seconds) to move time on.
    """

    def __init__(self, fetch: Callable[[str], str] | None = None, *, clock: Callable[[], float] = time.time):
        self._fetch = fetch or fetch_from_adc
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (token, time to replace it)
        self._lock = threading.Lock()

    def token(self, audience: str) -> str:
        with self._lock:
            cached = self._tokens.get(audience)
            now = self._clock()
            if cached is not None and now < cached[1]:
                return cached[0]
            token = self._fetch(audience)
            expires = expiry(token)
            renew = (expires - MARGIN) if expires is not None else now + LIFETIME
            self._tokens[audience] = (token, max(renew, now + 1.0))
            return token

    def forget(self, audience: str) -> None:
        """Drop the kept token (the endpoint refused it): the next request fetches a new one."""
        with self._lock:
            self._tokens.pop(audience, None)


def call_credentials(tokens: IdTokens, audience: str):
    """gRPC call credentials adding `authorization: Bearer <ID token for audience>` to every call.

    gRPC runs this on its own thread and turns a failure there into UNAVAILABLE, so callers fetch the
    token first (`tokens.token(audience)`) to get a missing-credentials error where it can be read.
    """
    import grpc

    def plugin(context, callback):
        try:
            callback((("authorization", f"Bearer {tokens.token(audience)}"),), None)
        except Exception as exc:  # reported to the call by gRPC
            callback((), exc)

    return grpc.metadata_call_credentials(plugin, name="modelrun-id-token")


class HttpxIdTokenAuth(httpx.Auth):
    """httpx auth sending an ID token for `audience`; on 401 it fetches a new token and tries once more."""

    def __init__(self, tokens: IdTokens, audience: str):
        self.tokens = tokens
        self.audience = audience

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.tokens.token(self.audience)}"
        response = yield request
        if response.status_code == 401:
            self.tokens.forget(self.audience)
            request.headers["Authorization"] = f"Bearer {self.tokens.token(self.audience)}"
            yield request
