"""The control plane's ports (design 3.1): Storage, Builder and Runner, each a small Protocol with a
registry from the settings' name to an implementation. The deploy logic only sees these Protocols.

Each implementation is a module of its own, registered here under the name its setting takes
(MODELRUN_STORAGE=local|gcs, ...); Google Cloud ones import their client libraries lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelrun.control.inspect import TensorSpec
from modelrun.control.models import Revision
from modelrun.errors import InvalidInput
from modelrun.settings import Settings


class Storage(Protocol):
    """Where models, training data and upload manifests are read from."""

    def check_uri(self, uri: str) -> None:
        """Raise InvalidInput/Unprocessable when this storage could never read `uri` (scheme, form)."""

    def object_uri(self, bucket: str, name: str) -> str:
        """The URI of object `name` in `bucket` (the models bucket of an upload event)."""

    def read_bytes(self, uri: str, limit: int) -> bytes:
        """A small file's bytes; NotFound when missing, TooLarge past `limit`."""

    def fetch(self, uri: str, dest: Path) -> Path:
        """Copy a file or a folder (a SavedModel) to `dest` (never moves); Unprocessable when unreadable."""

    def publish(self, path: str, data: bytes, content_type: str) -> None:
        """Write one file of the drift dashboard site (`path` relative to its root), replacing it whole."""


@dataclass
class Build:
    artifact: str  # what the runner runs: a bundle folder locally, an image on Google Cloud
    features: list[str]  # training-data columns the model's inputs must match (label removed)


@dataclass
class Pending:
    handle: dict  # JSON-able; stored as the revision's `build`, so any later pass (or process) resumes it
    message: str  # what users see while it runs ("building the image (Cloud Build 1234…)")


class Builder(Protocol):
    """Turns a revision's model + training data into something the runner can start."""

    def build(self, rev: Revision) -> Build | Pending:
        """Validate and stage the revision, or start doing so and return Pending (`rev.build` then holds the
        handle on later calls: look at that build, never start a second one). Idempotent: a finished build
        is reused. Unprocessable on bad input or a failed build, with the reason."""

    def cancel(self, handle: dict) -> None:
        """Stop a build that is still running (its revision failed or was deleted); safe to repeat."""

    def remove(self, artifact: str) -> None:
        """Delete what `build` made; safe to repeat."""

    def remove_all(self, name: str) -> None:
        """Delete everything built for deployment `name`; safe to repeat."""


@dataclass
class Started:
    runtime: dict  # JSON-able handle, stored with the revision (pid/port locally, a service name on Cloud Run)
    endpoint: str  # the gRPC target clients use


@dataclass
class Probe:
    state: str  # "starting", "serving" or "exited"
    reason: str | None = None


class Runner(Protocol):
    """Runs one model server per revision."""

    detached: bool  # do its servers outlive the control plane (Cloud Run)? Then shutting down stops none.

    def start(self, rev: Revision, features: list[str], address: str | None = None) -> Started:
        """Start serving `rev.artifact`; return at once (readiness is polled with `probe`). `address` is the
        endpoint the deployment already has, which the new server must take over (None: a new deployment's
        first server or a canary, which get one of their own)."""

    def probe(self, runtime: dict) -> Probe:
        """One quick look: starting, serving, or exited (with the reason a person can act on)."""

    def model_inputs(self, runtime: dict, name: str) -> list[TensorSpec]:
        """The model's inputs as the running server reports them (ModelMetadata)."""

    def serve(self, runtime: dict, previous: dict | None = None, percent: int = 100) -> None:
        """Send `percent` of the deployment's traffic to this revision and the rest to `previous` (called when it
        is ready, before the control plane records it as serving). Locally a no-op: a server started at the
        deployment's address already shares its port, and `previous` leaves it when stopped."""

    def stop(self, runtime: dict) -> None:
        """Stop it and wait until it is gone; safe to repeat."""

    def sweep(self, owned: Callable[[], tuple[list[tuple[str, int, dict]], set[str]]]) -> None:
        """Stop servers this runner started that nothing owns. List the servers first, then call `owned()`:
        (live revisions as (name, revision, runtime), names of deployments whose servers must be kept)."""


def server_environment(settings: Settings, rev: Revision, features: list[str]) -> dict[str, str]:
    """What every runner tells a revision's model server: who it is, its columns, where to log (the control
    plane's database and Cloud SQL settings, even when they came from code rather than the environment),
    and the deployment's serving options."""
    env = {
        "MODELRUN_MODEL_NAME": rev.name,
        "MODELRUN_REVISION": str(rev.revision),
        "MODELRUN_FEATURE_NAMES": ",".join(features),
        "MODELRUN_REFERENCE_ROWS": str(settings.drift_sample_rows),
        "MODELRUN_DATABASE_URL": settings.server_database_url or settings.resolved_database_url,
        "MODELRUN_CLOUDSQL_INSTANCE": settings.cloudsql_instance or "",
        "MODELRUN_CLOUDSQL_IAM_AUTH": str(settings.cloudsql_iam_auth).lower(),
        "MODELRUN_CLOUDSQL_IP_TYPE": settings.cloudsql_ip_type,
        "MODELRUN_JOURNAL_URI": settings.journal_uri or "",
    }
    for key, var in (("log_sample_rate", "MODELRUN_LOG_SAMPLE_RATE"), ("max_batch_size", "MODELRUN_MAX_BATCH_SIZE")):
        if rev.config.get(key) is not None:
            env[var] = str(rev.config[key])
    return env


def _local_storage(settings: Settings):
    from modelrun.control.backends.local_storage import LocalStorage
    return LocalStorage(settings)


def _gcs_storage(settings: Settings):
    from modelrun.control.backends.gcs_storage import GcsStorage
    return GcsStorage(settings)


def _local_builder(settings: Settings, storage: Storage):
    from modelrun.control.backends.local_builder import LocalBuilder
    return LocalBuilder(settings, storage)


def _cloudbuild_builder(settings: Settings, storage: Storage):
    from modelrun.control.backends.cloudbuild_builder import CloudBuildBuilder
    return CloudBuildBuilder(settings, storage)


def _local_runner(settings: Settings):
    from modelrun.control.backends.local_runner import LocalRunner
    return LocalRunner(settings)


def _cloudrun_runner(settings: Settings):
    from modelrun.control.backends.cloudrun_runner import CloudRunRunner
    return CloudRunRunner(settings)


__all__ = ["Build", "Builder", "Pending", "Probe", "Runner", "Started", "Storage", "TensorSpec", "choose",
           "server_environment"]

STORAGES = {"local": _local_storage, "gcs": _gcs_storage}
BUILDERS = {"local": _local_builder, "cloudbuild": _cloudbuild_builder}
RUNNERS = {"local": _local_runner, "cloudrun": _cloudrun_runner}


def choose(registry: dict, kind: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise InvalidInput(f"unknown {kind} backend '{name}'; choose one of: {', '.join(sorted(registry))}") from None
