"""The REST API (design 2.2) over a Flask request: route, authenticate, parse, call `Deployments`, format.

Errors are mapped to HTTP here and only here: a ModelrunError becomes its `http_status` with
`{"error": {"code", "message"}}`; anything else is logged and answered 500 without details.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from importlib import resources

import flask

from modelrun.control.service import Deployments
from modelrun.errors import InvalidInput, ModelrunError, NotFound, TooLarge, Unauthenticated, Unavailable
from modelrun.settings import Settings

log = logging.getLogger(__name__)
OPENAPI = resources.files("modelrun.control") / "openapi.yaml"  # package data (pyproject.toml ships it)
_ITEM = re.compile(r"^/deployments/([^/]+)$")
_EVENTS = re.compile(r"^/deployments/([^/]+)/events$")
_DRIFT = re.compile(r"^/deployments/([^/]+)/drift$")
_CANARY = re.compile(r"^/deployments/([^/]+)/(promote|rollback)$")


class MethodNotAllowed(ModelrunError):
    http_status = 405
    code = "method_not_allowed"


class Api:
    def __init__(self, settings: Settings, deployments: Deployments):
        self.settings = settings
        self.deployments = deployments

    def handle(self, request: flask.Request) -> flask.Response:
        try:
            return self._route(request)
        except ModelrunError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return _error(500, "internal", "internal error; the control-plane log has the details")

    def handle_drift(self, request: flask.Request, refresh) -> flask.Response:
        """The `drift` function: authenticate like the API, refresh, answer each deployment's verdicts."""
        def answer() -> dict:
            reports = refresh()
            return {"deployments": {name: {r["window"]["id"]: r["status"] for r in windows}
                                    for name, windows in reports.items()}}
        return self._scheduled(request, "drift", answer)

    def handle_reconcile(self, request: flask.Request, reconcile) -> flask.Response:
        """The `reconcile` function: authenticate like the API, run one pass, answer every status."""
        def answer() -> dict:
            reconcile()
            return {"deployments": {d.name: d.status for d in self.deployments.list()}}
        return self._scheduled(request, "reconcile", answer)

    def _scheduled(self, request: flask.Request, what: str, answer) -> flask.Response:
        """A function Cloud Scheduler calls: authenticated like the API, errors mapped the same way."""
        try:
            self._authenticate(request)
            return _json(200, answer())
        except ModelrunError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        except Exception:
            log.exception("unexpected error in the %s function", what)
            return _error(500, "internal", "internal error; the control-plane log has the details")

    def _route(self, request: flask.Request) -> flask.Response:
        path = request.path.rstrip("/") or "/"
        method = "GET" if request.method == "HEAD" else request.method  # werkzeug drops HEAD bodies
        if path == "/healthz":
            return _allow(method, "GET") or _json(200, {"status": "ok"})
        if path == "/openapi.yaml":
            return _allow(method, "GET") or flask.Response(OPENAPI.read_bytes(), 200, mimetype="application/yaml")
        self._authenticate(request)
        if path == "/deployments":
            if method == "GET":
                return _json(200, {"deployments": [d.to_json() for d in self.deployments.list()]})
            if method == "POST":
                return _json(202, self.deployments.create(self._body(request)).to_json())
            raise MethodNotAllowed(f"{method} is not allowed on /deployments; use GET or POST")
        if match := _ITEM.match(path):
            name = match.group(1)
            if method == "GET":
                return _json(200, self.deployments.get(name).to_json())
            if method == "PATCH":
                return _json(202, self.deployments.update(name, self._body(request)).to_json())
            if method == "DELETE":
                return _json(202, self.deployments.delete(name).to_json())
            raise MethodNotAllowed(f"{method} is not allowed on /deployments/{{name}}; use GET, PATCH or DELETE")
        if match := _EVENTS.match(path):
            return _allow(method, "GET") or _json(200, {"events": self.deployments.events(match.group(1))})
        if match := _DRIFT.match(path):
            return _allow(method, "GET") or _json(200, self.deployments.drift(match.group(1),
                                                                              request.args.get("window") or None))
        if match := _CANARY.match(path):
            name, action = match.groups()
            ask = self.deployments.promote if action == "promote" else self.deployments.rollback
            return _allow(method, "POST") or _json(202, ask(name).to_json())
        raise NotFound(f"no route {path}; the API is described at /openapi.yaml")

    def _authenticate(self, request: flask.Request) -> None:
        if self.settings.auth == "none":
            return
        expected = self.settings.resolved_token()
        if not expected:
            raise Unavailable("the API has no token configured: set MODELRUN_TOKEN or start it with `modelrun up`")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthenticated("missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                                  "(the token is in $MODELRUN_HOME/token)")

    def _body(self, request: flask.Request) -> object:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"request body is larger than {limit} bytes")
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise TooLarge(f"request body is larger than {limit} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def _allow(method: str, allowed: str) -> flask.Response | None:
    if method == allowed:
        return None
    raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}")


def _json(status: int, payload: dict) -> flask.Response:
    return flask.Response(json.dumps(payload), status, mimetype="application/json")


def _error(status: int, code: str, message: str) -> flask.Response:
    response = _json(status, {"error": {"code": code, "message": message}})
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="modelrun"'
    return response
