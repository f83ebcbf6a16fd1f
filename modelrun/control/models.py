"""What the control plane talks about: statuses, the Deployment record and the validated requests.

Requests are pydantic models that reject unknown fields; `parse` turns their errors into one
InvalidInput message a person can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from modelrun.control.run_config import RunConfig
from modelrun.drift.config import DriftConfig
from modelrun.errors import InvalidInput

PENDING, BUILDING, DEPLOYING, READY, FAILED, DELETING = "PENDING", "BUILDING", "DEPLOYING", "READY", "FAILED", "DELETING"
STATUSES = (PENDING, BUILDING, DEPLOYING, READY, FAILED, DELETING)
# Revision-only states: a new revision that gets a share of the traffic until it is promoted or rolled back
# (its deployment stays READY), the previous revision after a switch, then stopped for good.
CANARY, DRAINING, RETIRED = "CANARY", "DRAINING", "RETIRED"
PROMOTE, ROLLBACK = "promote", "rollback"  # what a user asks of a canary

NAME_RULE = ("a deployment name must be a lowercase DNS label: 1 to 40 characters of a-z, 0-9 and '-', "
             "starting with a letter and not ending with '-'")
_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"invalid name {name!r}: {NAME_RULE}")
    return name


DeploymentName = Annotated[str, BeforeValidator(check_name)]


class DeploymentConfig(BaseModel):
    """Known keys are checked; other keys are kept for other parts (e.g. drift settings)."""

    model_config = ConfigDict(extra="allow")

    label: str | None = Field(default=None, min_length=1, max_length=255)
    log_sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    canary_percent: int | None = Field(default=None, ge=1, le=99)
    """An update's new revision first gets this share of the traffic, until `promote` or `rollback`."""
    drift: DriftConfig | None = None
    run: RunConfig | None = None  # how the Cloud Run runner runs it


_URI = Field(min_length=1, max_length=2048)
_OPTIONAL_URI = Field(default=None, min_length=1, max_length=2048)


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DeploymentName
    model_uri: str = _URI
    training_data_uri: str = _URI
    config: DeploymentConfig | None = None


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_uri: str | None = _OPTIONAL_URI
    training_data_uri: str | None = _OPTIONAL_URI
    config: DeploymentConfig | None = None


class Manifest(BaseModel):
    """modelrun.json / modelrun.yaml in the bucket: paths relative to the manifest's folder, or URIs."""

    model_config = ConfigDict(extra="forbid")

    name: DeploymentName
    model: str = _URI
    training_data: str = _URI
    config: DeploymentConfig | None = None


def parse(model: type[BaseModel], data: Any, what: str = "request body"):
    """Validate `data` into `model`, or raise InvalidInput naming every problem."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"invalid {what}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"unknown field '{where}'"
    if error["type"] == "missing":
        return f"missing field '{where}'"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return f"field '{where}': {message}"


def config_dict(config: DeploymentConfig | None) -> dict:
    if config is None:
        return {}
    data = config.model_dump(exclude_none=True)
    if config.drift is not None:  # as the user wrote it, not every default spelled out
        data["drift"] = config.drift.model_dump(exclude_unset=True)
    if config.run is not None:
        data["run"] = config.run.model_dump(exclude_unset=True)
    return data


@dataclass
class Deployment:
    """A deployment as users see it (the REST API's Deployment object).

    `features` are the serving revision's training-data feature columns in their order (label removed),
    None while no revision serves: clients build a model's input matrix in this order.
    """

    name: str
    status: str
    endpoint: str | None
    model_uri: str
    training_data_uri: str
    config: dict
    revision: int
    serving_revision: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    features: list[str] | None = None
    canary: dict | None = None  # {"revision", "percent", "endpoint"} while a new revision is on trial
    address: str | None = None  # for the control plane, not shown: where every non-canary revision listens

    def to_json(self) -> dict:
        return {
            "name": self.name, "status": self.status, "endpoint": self.endpoint, "model_uri": self.model_uri,
            "training_data_uri": self.training_data_uri, "config": self.config, "revision": self.revision,
            "serving_revision": self.serving_revision, "features": self.features, "canary": self.canary,
            "error": self.error, "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
        }


@dataclass
class Revision:
    """One revision of a deployment, as the reconciler sees it."""

    deployment_id: int
    name: str
    revision: int
    state: str
    model_uri: str
    training_data_uri: str
    config: dict
    features: list[str] | None = None
    build: dict | None = None  # the builder's handle of a build still running (a later pass resumes it)
    action: str | None = None  # PROMOTE or ROLLBACK, asked of a CANARY revision and not yet carried out
    artifact: str | None = None
    runtime: dict | None = None
    endpoint: str | None = None
    error: str | None = None
    deadline: datetime | None = None
    restarts: int | None = None
    crashed_at: datetime | None = None
    retry_at: datetime | None = None
    created_at: datetime | None = None  # when the revision was recorded (tells reused names apart)


def _iso(value: datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
