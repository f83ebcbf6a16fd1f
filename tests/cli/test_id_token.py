"""Signing in to private Google Cloud endpoints with ID tokens, against a local stand-in for Cloud Run.

The stand-in is a gRPC server answering the Open Inference Protocol for a 2-feature FP32 model (its
output `y` is the sum of a row's features) that refuses every call without the bearer token it expects,
over loopback credentials in place of TLS (`grpc.local_server_credentials`), reached by the real client
code. The control plane is an `httpx.MockTransport` that records the Authorization header it was sent.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest
from click.testing import CliRunner

from modelrun import cli, errors, idtoken
from modelrun.client import Client
from modelrun.idtoken import IdTokens
from modelrun.proto import inference_pb2 as pb
from modelrun.proto import inference_pb2_grpc
from modelrun.settings import Settings

API = "https://api-abc123-ew.a.run.app"
ROWS = [{"a": 1.0, "b": 2.0}, {"b": 10.0, "a": 0.5}]


def jwt(audience: str, exp: float, serial: int = 0) -> str:
    """An unsigned JWT carrying `aud` and `exp`, as google-auth hands back (the client never checks it)."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'aud': audience, 'exp': int(exp), 'n': serial})}.c2ln"


class Tokens:
    """A fake Application Default Credentials: a token per audience, valid an hour from the fake clock."""

    def __init__(self):
        self.now = 1_700_000_000.0
        self.fetched: list[str] = []
        self.issued: dict[str, str] = {}  # audience -> the last token fetched for it
        self.fail_for: set[str] = set()

    def clock(self) -> float:
        return self.now

    def fetch(self, audience: str) -> str:
        if audience in self.fail_for:
            raise errors.NoGoogleCredentials(f"no Google credentials to sign in to {audience}")
        self.fetched.append(audience)
        self.issued[audience] = jwt(audience, self.now + 3600, len(self.fetched))
        return self.issued[audience]


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class CloudRun(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The model server behind Cloud Run's IAM check: wants `authorization: Bearer <ID token>` whose
    audience is `self.audience` and which has not expired by `self.clock`."""

    def __init__(self):
        self.audience: str | None = None
        self.clock = time.time
        self.seen: list[tuple[str, str | None]] = []  # (method, authorization header)
        self.infer_ids: list[str] = []
        self.unavailable = 0  # fail this many ModelInfer calls with UNAVAILABLE (Cloud Run's GOAWAY on scale-in)
        self.lock = threading.Lock()

    def _check(self, method: str, context) -> None:
        header = dict(context.invocation_metadata()).get("authorization")
        with self.lock:
            self.seen.append((method, header))
        try:
            token = claims(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else {}
        except (AttributeError, IndexError, ValueError):
            token = {}
        if token.get("aud") != self.audience or token.get("exp", 0) <= self.clock():
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "The request was not authenticated.")

    def ServerLive(self, request, context):
        self._check("ServerLive", context)
        return pb.ServerLiveResponse(live=True)

    def ModelMetadata(self, request, context):
        self._check("ModelMetadata", context)
        return pb.ModelMetadataResponse(
            name=request.name, platform="tensorflow_savedmodel",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name="x", datatype="FP32", shape=[-1, 2])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name="y", datatype="FP32", shape=[-1, 1])])

    def ModelInfer(self, request, context):
        self._check("ModelInfer", context)
        with self.lock:
            self.infer_ids.append(request.id)
            if self.unavailable:
                self.unavailable -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        (tensor,) = request.inputs
        values = list(tensor.contents.fp32_contents)
        sums = [values[i] + values[i + 1] for i in range(0, len(values), 2)]
        output = pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[len(sums), 1])
        output.contents.fp32_contents.extend(sums)
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[output])


@pytest.fixture
def cloud_run():
    service = CloudRun()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())
    server.start()
    service.endpoint = service.audience = f"https://127.0.0.1:{port}"
    yield service
    server.stop(0)


class ControlPlane:
    """The `api` function: GET /deployments/houses names the stand-in's endpoint."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.authorization: list[str | None] = []
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.authorization.append(request.headers.get("authorization"))
        if self.status != 200:
            return httpx.Response(self.status, text="<html><body>Error: Forbidden</body></html>")
        if request.url.path != "/deployments/houses":
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such deployment"}})
        return httpx.Response(200, json={"name": "houses", "status": "READY", "endpoint": self.endpoint,
                                         "features": ["a", "b"], "revision": 1, "serving_revision": 1})


@pytest.fixture
def tokens():
    return Tokens()


def make_client(tmp_path, cloud_run, tokens, mode="always", api=API):
    plane = ControlPlane(cloud_run.endpoint)
    cloud_run.clock = tokens.clock
    settings = Settings(api=api, id_token=mode, home=tmp_path, token="modelrun-token")
    client = Client(settings=settings, id_tokens=IdTokens(tokens.fetch, clock=tokens.clock),
                    transport=httpx.MockTransport(plane), tls_credentials=grpc.local_channel_credentials())
    return client, plane


def test_predict_signs_every_call_with_a_token_for_the_endpoint_and_the_api_with_its_own(tmp_path, cloud_run,
                                                                                        tokens):
    client, plane = make_client(tmp_path, cloud_run, tokens)
    with client:
        assert client.predict("houses", ROWS) == [{"y": 3.0}, {"y": 10.5}]
        assert client.predict("houses", ROWS[:1]) == [{"y": 3.0}]
    assert tokens.fetched == [API, cloud_run.endpoint]  # one token per audience, kept
    assert {method for method, _ in cloud_run.seen} == {"ModelMetadata", "ModelInfer"}
    assert {header for _, header in cloud_run.seen} == {f"Bearer {tokens.issued[cloud_run.endpoint]}"}
    assert set(plane.authorization) == {f"Bearer {tokens.issued[API]}"}  # not the modelrun token


def test_a_token_is_replaced_before_it_expires(tmp_path, cloud_run, tokens):
    client, _ = make_client(tmp_path, cloud_run, tokens)
    with client:
        client.predict("houses", ROWS)
        first = tokens.issued[cloud_run.endpoint]
        tokens.now += 3000  # 10 minutes left: still used
        client.predict("houses", ROWS)
        assert tokens.fetched.count(cloud_run.endpoint) == 1
        assert cloud_run.seen[-1] == ("ModelInfer", f"Bearer {first}")
        tokens.now += 400  # 3 minutes left: replaced
        assert client.predict("houses", ROWS) == [{"y": 3.0}, {"y": 10.5}]
        assert tokens.fetched.count(cloud_run.endpoint) == 2
        assert cloud_run.seen[-1] == ("ModelInfer", f"Bearer {tokens.issued[cloud_run.endpoint]}")
        tokens.now += 3000  # the first token has expired: the server would refuse it
        assert client.predict("houses", ROWS) == [{"y": 3.0}, {"y": 10.5}]
    assert tokens.fetched.count(cloud_run.endpoint) == 2
    assert cloud_run.seen[-1] == ("ModelInfer", f"Bearer {tokens.issued[cloud_run.endpoint]}")
    assert tokens.issued[cloud_run.endpoint] != first


def test_a_refused_token_is_one_clear_line_naming_the_endpoint_and_the_role(tmp_path, cloud_run, tokens,
                                                                              monkeypatch):
    client, _ = make_client(tmp_path, cloud_run, tokens)
    cloud_run.audience = "https://another-service-abc123-ew.a.run.app"
    with pytest.raises(errors.IdTokenRefused) as caught:
        client.predict("houses", ROWS)
    message = caught.value.message
    assert f"the endpoint {cloud_run.endpoint} of houses refused the ID token for {cloud_run.endpoint}" in message
    assert "roles/run.invoker" in message
    with pytest.raises(errors.IdTokenRefused):  # the refused token was dropped: a new one is asked for
        client.predict("houses", ROWS)
    assert tokens.fetched.count(cloud_run.endpoint) == 2

    monkeypatch.setattr(cli, "_client", lambda: client)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    result = CliRunner().invoke(cli.cli, ["predict", "houses", str(rows)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: the endpoint https://127.0.0.1:")
    assert "MODELRUN_TOKEN" not in result.stderr  # not the API-token advice
    client.close()


def test_an_endpoint_off_google_hosts_gets_no_token_under_auto_and_the_error_says_how_to_send_one(
        tmp_path, cloud_run, tokens):
    client, _ = make_client(tmp_path, cloud_run, tokens, mode="auto")
    with client, pytest.raises(errors.IdTokenRefused, match="set MODELRUN_ID_TOKEN=always"):
        client.predict("houses", ROWS)
    assert cloud_run.seen == [("ModelMetadata", None)]
    assert tokens.fetched == [API]  # the API is on run.app: it got one


def test_missing_credentials_for_the_endpoint_fail_at_once_without_retrying(tmp_path, cloud_run, tokens):
    client, _ = make_client(tmp_path, cloud_run, tokens)
    tokens.fail_for.add(cloud_run.endpoint)
    started = time.monotonic()
    with client, pytest.raises(errors.NoGoogleCredentials, match=f"sign in to {cloud_run.endpoint}"):
        client.predict("houses", ROWS, retry_for=30)
    assert time.monotonic() - started < 5  # not taken for an unavailable endpoint and retried for 30 s
    assert cloud_run.seen == []  # nothing was sent unsigned


def test_the_cli_without_google_credentials_prints_one_line(tmp_path, monkeypatch):
    """Application Default Credentials pointing at a missing file: google-auth's own error, no network."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    monkeypatch.setenv("MODELRUN_API", API)
    monkeypatch.setenv("MODELRUN_HOME", str(tmp_path))
    monkeypatch.delenv("MODELRUN_ID_TOKEN", raising=False)
    result = CliRunner().invoke(cli.cli, ["list"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no Google credentials to sign in to {API} ")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in result.stderr


def test_unavailable_is_retried_with_the_same_request_id_until_it_answers(tmp_path, cloud_run, tokens):
    client, _ = make_client(tmp_path, cloud_run, tokens)
    cloud_run.unavailable = 3
    with client:
        assert client.predict("houses", ROWS, retry_for=20) == [{"y": 3.0}, {"y": 10.5}]
    assert len(cloud_run.infer_ids) == 4 and len(set(cloud_run.infer_ids)) == 1


def test_unavailable_past_the_deadline_gives_up_with_a_clear_error(tmp_path, cloud_run, tokens):
    client, _ = make_client(tmp_path, cloud_run, tokens)
    cloud_run.unavailable = 1_000_000
    started = time.monotonic()
    with client, pytest.raises(errors.Unavailable) as caught:
        client.predict("houses", ROWS, retry_for=1.5)
    took = time.monotonic() - started
    assert 1.5 <= took < 4
    assert caught.value.message.startswith(f"deployment 'houses' at {cloud_run.endpoint} did not answer: "
                                           f"the server is shutting down (gave up after ")
    assert 3 <= len(cloud_run.infer_ids) <= 12  # backed off: not hundreds of attempts in 1.5 s


def test_the_api_refusing_the_token_names_the_role(tmp_path, cloud_run, tokens):
    client, plane = make_client(tmp_path, cloud_run, tokens)
    plane.status = 403
    with pytest.raises(errors.IdTokenRefused) as caught:
        client.get("houses")
    assert caught.value.message == (f"the modelrun API at {API} refused the ID token for {API} (HTTP 403); "
                                    f"the caller needs roles/run.invoker on the `api` function")
    plane.status = 401  # an expired or revoked token: one new token, one more try, then the error
    with client, pytest.raises(errors.IdTokenRefused, match=r"\(HTTP 401\)"):
        client.get("houses")
    assert tokens.fetched == [API, API]
    assert plane.authorization[-2] != plane.authorization[-1]


def test_a_cleartext_api_gets_the_modelrun_token_and_no_id_token(tmp_path, cloud_run, tokens):
    client, plane = make_client(tmp_path, cloud_run, tokens, mode="always", api="http://127.0.0.1:8080")
    with client:
        client.get("houses")
    assert plane.authorization == ["Bearer modelrun-token"] and tokens.fetched == []


@pytest.mark.parametrize(("url", "mode", "wanted"), [
    ("https://houses-abc123-ew.a.run.app", "auto", True),
    ("https://europe-west1-proj.cloudfunctions.net/api", "auto", True),
    ("https://models.example.com", "auto", False),
    ("https://models.example.com", "always", True),
    ("https://houses-abc123-ew.a.run.app", "never", False),
    ("http://houses-abc123-ew.a.run.app", "always", False),  # never a token over cleartext
    ("127.0.0.1:50051", "always", False),
])
def test_which_urls_get_a_token(url, mode, wanted):
    assert idtoken.wanted(url, mode) is wanted


@pytest.mark.parametrize(("url", "audience"), [
    ("https://houses-abc123-ew.a.run.app", "https://houses-abc123-ew.a.run.app"),
    ("https://houses-abc123-ew.a.run.app:443/", "https://houses-abc123-ew.a.run.app"),
    ("https://api-abc123-ew.a.run.app/deployments", "https://api-abc123-ew.a.run.app"),
    ("https://europe-west1-proj.cloudfunctions.net/api/", "https://europe-west1-proj.cloudfunctions.net/api"),
    ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
])
def test_the_audience_is_the_service_url(url, audience):
    assert idtoken.audience(url) == audience


def test_a_token_without_a_readable_expiry_is_kept_50_minutes():
    now = [0.0]
    fetched = []
    tokens = IdTokens(lambda audience: fetched.append(audience) or "opaque", clock=lambda: now[0])
    tokens.token("https://a.run.app")
    now[0] = 2999
    tokens.token("https://a.run.app")
    now[0] = 3001
    tokens.token("https://a.run.app")
    assert fetched == ["https://a.run.app"] * 2
