"""Fuzz the REST API from its own OpenAPI document (schemathesis): valid and invalid requests, with and
without the token, must never get a 5xx, and every response must be as the document says."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.control.conftest import AUTH, REPO

SCHEMA = schemathesis.openapi.from_path(REPO / "modelrun" / "control" / "openapi.yaml")
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def routable(case) -> bool:
    """functions-framework's own router (werkzeug `<path:path>`) answers a path holding a line break with
    its HTML 404 before our function runs; that response is not ours to shape. Schemathesis hands path
    parameters over percent-encoded already (a line break is `%0A`)."""
    values = [unquote(str(value)) for value in (case.path_parameters or {}).values()]
    return not any(ch in value for value in values for ch in "\n\r")


def fuzz(functions, operation, mode: GenerationMode, headers: dict) -> list[int]:
    statuses = []

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode).filter(routable))
    def run(case):
        response = case.call(app=functions.api_app, headers=headers)
        case.validate_response(response, checks=CHECKS)
        statuses.append(response.status_code)

    run()
    return statuses


CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE) for op in OPERATIONS if "{" in op.path or op.method.upper() in ("POST", "PATCH")]


@pytest.mark.parametrize("operation, mode", CASES, ids=lambda x: getattr(x, "label", getattr(x, "value", "")))
def test_api_conforms_to_its_openapi_document(functions, operation, mode):
    statuses = fuzz(functions, operation, mode, AUTH)
    assert statuses and all(status < 500 for status in statuses)
    if mode == GenerationMode.POSITIVE and operation.label == "POST /deployments":
        assert 202 in statuses  # valid bodies are accepted (and the Deployment returned as documented)


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_wrong_token_is_401_as_documented(functions, operation):
    statuses = fuzz(functions, operation, GenerationMode.POSITIVE, {"Authorization": "Bearer not-the-token"})
    public = operation.path in ("/healthz", "/openapi.yaml")
    assert set(statuses) == ({200} if public else {401})
