"""The `drift` section of a deployment's config: which method, per-feature overrides, windows, alerts.

    {"drift": {"method": "vertex", "min_rows": 200, "features": {"area": {"test": "psi", "threshold": 0.2},
               "id": {"monitor": false}}, "checks": {"out_of_range": 0.05}, "webhook": "https://..."}}

Unknown methods, tests, checks and windows are refused when the deployment is created or updated, with
the valid names; feature names are checked against the training data when the revision is built.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelrun.drift import methods, stattests
from modelrun.errors import ModelrunError

WINDOWS = ("all", "last-24h", "daily")
CHECKS = {"missing_rate": 0.1, "out_of_range": 0.1, "unseen": 0.1}  # default thresholds (shares, 0..1)


class FeatureOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test: str | None = None
    threshold: float | None = Field(default=None, ge=0)
    monitor: bool = True

    @field_validator("test")
    @classmethod
    def _known_test(cls, value):
        if value is not None:
            _valid(stattests.get_test, value)
        return value


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = "evidently"
    min_rows: int = Field(default=100, ge=1)
    windows: list[str] = Field(default_factory=lambda: list(WINDOWS))
    days: int = Field(default=30, ge=1, le=366)
    features: dict[str, FeatureOverride] = Field(default_factory=dict)
    checks: dict[str, float] = Field(default_factory=dict)
    share: float | None = Field(default=None, gt=0, le=1)  # dataset drift when this share of columns drifted
    webhook: str | None = Field(default=None, pattern=r"^https?://")
    reservoir: int | None = Field(default=None, ge=100, le=1_000_000)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        return _valid(methods.check_method, value)

    @field_validator("windows")
    @classmethod
    def _known_windows(cls, value):
        return _only(value, WINDOWS, "window")

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, value):
        return _only(value, CHECKS, "check")

    def check_threshold(self, name: str) -> float:
        return self.checks.get(name, CHECKS[name])

    def override(self, column: str) -> FeatureOverride:
        return self.features.get(column) or FeatureOverride()


def _only(given, valid, what: str):
    """`given` (names, or a dict keyed by names) when every name is one of `valid`; else the first unknown."""
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; valid {what}s: {', '.join(valid)}")
    return given


def _valid(check, value):
    """Run a lookup that raises InvalidInput (naming the valid choices) as a pydantic validation error."""
    try:
        check(value)
    except ModelrunError as exc:
        raise ValueError(exc.message) from None
    return value


def drift_config(config: dict | None) -> DriftConfig:
    """The validated drift section of a deployment config (defaults when absent)."""
    return DriftConfig.model_validate((config or {}).get("drift") or {})
