"""The `run` section of a deployment's config: how the Cloud Run runner runs its model servers.

    {"run": {"min_instances": 1, "max_instances": 20, "concurrency": 32, "cpu": "2", "memory": "4Gi",
             "startup_cpu_boost": true, "startup_timeout": 240, "request_timeout": 300,
             "service_account": "server@project.iam.gserviceaccount.com"}}

Checked when a deployment is created or updated (whatever the runner, so a config moves between them);
the local runner ignores it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelrun.errors import InvalidInput

CPUS = ("1", "2", "4", "6", "8")


class RunConfig(BaseModel):
    """The `run` section of a deployment's config: how Cloud Run runs its model servers.

        {"run": {"min_instances": 1, "max_instances": 20, "concurrency": 32, "cpu": "2", "memory": "4Gi"}}
    """

    model_config = ConfigDict(extra="forbid")

    min_instances: int = Field(default=0, ge=0, le=1000)
    max_instances: int = Field(default=10, ge=1, le=1000)
    concurrency: int = Field(default=16, ge=1, le=1000)  # requests one instance takes at once
    cpu: str = "1"
    memory: str = Field(default="2Gi", pattern=r"^[1-9]\d*(Mi|Gi)$")
    startup_cpu_boost: bool = True
    startup_timeout: int = Field(default=240, ge=1, le=240)  # seconds the startup probe allows (loading TF)
    request_timeout: int = Field(default=300, ge=1, le=3600)
    service_account: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")

    @field_validator("cpu", mode="before")
    @classmethod
    def _known_cpu(cls, value):
        value = str(value)
        if value not in CPUS:
            raise ValueError(f"cpu must be one of {', '.join(CPUS)} (whole CPUs), not {value!r}")
        return value

    @model_validator(mode="after")
    def _scaling(self):
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) exceeds max_instances ({self.max_instances})")
        return self


def run_config(config: dict | None) -> RunConfig:
    """The `run` section of a deployment's config, with defaults; InvalidInput naming the bad key."""
    try:
        return RunConfig.model_validate((config or {}).get("run") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"config.run{'.' + where if where else ''}: {first['msg']}") from None
