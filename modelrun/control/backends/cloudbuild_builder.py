"""Builder on Google Cloud: one Cloud Build per revision makes `REGION-docker.pkg.dev/PROJECT/REPO/models/NAME:rN`.

The build never rebuilds or pulls the serving base image into a Docker daemon. Its steps:

1. `check` runs in the serving base image: `python -m serving.check` fetches the model and the training data
   from their gs:// URIs, stages the bundle (bundle.json, model.keras | model/, training_data.<ext>) in
   /workspace/bundle, loads the model and checks its inputs against the training data's feature columns, and
   writes /workspace/layer.tar (the bundle at /srv/bundle). A bad model or data fails this step with one line.
2. `append` runs gcrane (crane with Google credentials): `append -b BASE -f layer.tar -t IMAGE` adds that one
   layer to the base in the registry and pushes the model image; it prints the new digest.

Both steps write `$BUILDER_OUTPUT/output`, which Cloud Build returns in `Build.results.build_step_outputs`: the
feature columns (or the reason the model was refused) and the image's digest. That is how the control plane
learns them without reading logs or another bucket.

Handles: `{"key": ..., "build_id": ..., "image": ...}` is what the reconciler stores. Every build carries the
tag `key` (deployment, revision and when the revision was recorded), so a control plane that died between
CreateBuild and saving the handle finds the running build with ListBuilds instead of starting a second one.

API errors are mapped once (`_api`): transient ones (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
ABORTED, INTERNAL) are retried with backoff for up to RETRY_SECONDS, then Unavailable (the reconciler tries
again next pass); PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT and the like are Unprocessable (the revision
FAILED with the reason).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.parse

from modelrun.control.backends import Build, Pending
from modelrun.control.models import Revision
from modelrun.errors import InvalidInput, Unavailable, Unprocessable
from modelrun.settings import Settings

log = logging.getLogger(__name__)

CRANE_IMAGE = "gcr.io/go-containerregistry/gcrane:debug"  # crane + Google credentials; :debug has a shell
BUNDLE_MOUNT = "/srv/bundle"
RETRY_SECONDS = 30.0  # transient API errors are retried this long, then the pass gives up (Unavailable)
CALL_TIMEOUT = 30.0  # one API call
RUNNING = ("PENDING", "QUEUED", "WORKING", "STATUS_UNKNOWN")


class CloudBuildBuilder:
    def __init__(self, settings: Settings, storage=None):
        if not settings.gcp_project:
            raise InvalidInput("MODELRUN_GCP_PROJECT is required with MODELRUN_BUILDER=cloudbuild")
        self.project = settings.gcp_project
        self.region = settings.gcp_region
        self.repository = f"{self.region}-docker.pkg.dev/{self.project}/{settings.artifact_repository}"
        self.base = settings.serving_image or f"{self.repository}/serving:latest"
        self.service_account = settings.build_service_account
        self.timeout = settings.build_timeout
        self.endpoint = settings.cloudbuild_endpoint
        self.registry_api = settings.artifactregistry_endpoint
        self.artifact_repository = settings.artifact_repository
        self._client = None

    # ---- the Builder protocol -------------------------------------------------------------------

    def build(self, rev: Revision) -> Build | Pending:
        handle = rev.build if rev.build and rev.build.get("build_id") else None
        if handle is None:
            return self._start(rev)
        found = self._api("GetBuild", lambda c, opts: c.get_build(name=self._build_name(handle["build_id"]),
                                                                     project_id=self.project, id=handle["build_id"],
                                                                     **opts))
        return self._outcome(found, handle)

    def cancel(self, handle: dict) -> None:
        build_id = (handle or {}).get("build_id")
        if not build_id:
            return
        from google.api_core import exceptions as gexc

        try:
            self._api("CancelBuild", lambda c, opts: c.cancel_build(name=self._build_name(build_id),
                                                                     project_id=self.project, id=build_id, **opts),
                      passthrough=(gexc.NotFound, gexc.FailedPrecondition))
        except (gexc.NotFound, gexc.FailedPrecondition):
            pass  # gone, or already finished: nothing to stop
        log.info("cancelled Cloud Build %s", build_id)

    def remove(self, artifact: str) -> None:
        """Delete the image version (by digest, with its tags) from Artifact Registry."""
        name, _, digest = artifact.partition("@")
        package = self._package(name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name)
        if package is None:
            return
        if digest:
            self._registry_delete(f"{package}/versions/{digest}?force=true", artifact)
        else:  # a tag without a digest: delete the tag (the untagged version is garbage for cleanup policies)
            tag = name.rsplit(":", 1)[-1]
            self._registry_delete(f"{package}/tags/{tag}", artifact)

    def remove_all(self, name: str) -> None:
        """Delete the deployment's package (`models/NAME`: every revision's image) from Artifact Registry."""
        package = self._package(self.image_name(name))
        if package is not None:
            self._registry_delete(package, f"{self.image_name(name)}")

    # ---- building -------------------------------------------------------------------------------

    def image_name(self, name: str) -> str:
        return f"{self.repository}/models/{name}"

    def key(self, rev: Revision) -> str:
        """The build tag naming this revision; differs for a deployment deleted and created again."""
        seed = json.dumps([rev.deployment_id, rev.name, rev.revision,
                           rev.created_at.isoformat() if rev.created_at else None,
                           rev.model_uri, rev.training_data_uri, rev.config.get("label")])
        return f"modelrun-{rev.name}-r{rev.revision}-{hashlib.sha256(seed.encode()).hexdigest()[:12]}"

    def build_config(self, rev: Revision):
        """The Build message for `rev` (a cloudbuild_v1.Build)."""
        from google.cloud.devtools import cloudbuild_v1 as cb

        image = f"{self.image_name(rev.name)}:r{rev.revision}"
        check = ["-m", "serving.check", "--model", _literal(rev.model_uri),
                 "--training-data", _literal(rev.training_data_uri),
                 "--out", "/workspace/bundle", "--layer", "/workspace/layer.tar", "--at", BUNDLE_MOUNT]
        if rev.config.get("label"):
            check[6:6] = ["--label", _literal(str(rev.config["label"]))]
        append = (f"gcrane append -b {_literal(self.base)} -f /workspace/layer.tar -t {_literal(image)} "
                  f"> $$BUILDER_OUTPUT/output")
        options = {"substitution_option": cb.BuildOptions.SubstitutionOption.ALLOW_LOOSE,
                   "logging": cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY}
        build = cb.Build(
            steps=[cb.BuildStep(id="check", name=self.base, entrypoint="python", args=check),
                   cb.BuildStep(id="append", name=CRANE_IMAGE, entrypoint="/busybox/sh", args=["-c", append])],
            timeout={"seconds": int(self.timeout)},
            tags=["modelrun", f"modelrun-{rev.name}", self.key(rev)],
            substitutions={"_DEPLOYMENT": rev.name, "_REVISION": str(rev.revision), "_IMAGE": image},
            options=options,
        )
        if self.service_account:
            account = self.service_account
            if not account.startswith("projects/"):
                account = f"projects/{self.project}/serviceAccounts/{account}"
            build.service_account = account
        return build

    def _start(self, rev: Revision) -> Pending:
        """Find this revision's build (a previous process may have created it), or create it."""
        from google.api_core import exceptions as gexc

        key = self.key(rev)
        image = f"{self.image_name(rev.name)}:r{rev.revision}"
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.2
        while True:
            existing = self._find(key)
            if existing is not None:
                log.info("%s revision %d: resuming Cloud Build %s", rev.name, rev.revision, existing.id)
                return self._pending({"key": key, "build_id": existing.id, "image": image}, existing)
            try:  # CreateBuild is not idempotent: never retried blindly, always after looking for the tag again
                operation = self._api("CreateBuild", lambda c, opts: c.create_build(
                    parent=self._parent(), project_id=self.project, build=self.build_config(rev),
                    retry=None, timeout=CALL_TIMEOUT), passthrough=_transient(gexc), retry=False)
            except _transient(gexc) as exc:
                if time.monotonic() + delay > deadline:
                    raise Unavailable(f"Cloud Build did not answer CreateBuild: {_first_line(exc)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            build_id = operation.metadata.build.id
            log.info("%s revision %d: started Cloud Build %s", rev.name, rev.revision, build_id)
            return self._pending({"key": key, "build_id": build_id, "image": image}, operation.metadata.build)

    def _find(self, key: str):
        """The newest build tagged `key`, or None."""
        found = self._api("ListBuilds", lambda c, opts: c.list_builds(
            request={"parent": self._parent(), "project_id": self.project, "filter": f'tags="{key}"',
                     "page_size": 5}, **opts))
        builds = list(found.builds) if hasattr(found, "builds") else list(found)
        return max(builds, key=lambda b: b.create_time.timestamp() if b.create_time else 0) if builds else None

    def _pending(self, handle: dict, build) -> Pending:
        return Pending(handle, f"building image {handle['image']} (Cloud Build {handle['build_id']})")

    def _outcome(self, build, handle: dict) -> Build | Pending:
        from google.cloud.devtools import cloudbuild_v1 as cb

        status = cb.Build.Status(build.status).name
        if status in RUNNING:
            return self._pending(handle, build)
        outputs = _step_outputs(build)
        if status == "SUCCESS":
            checked = outputs.get("check") or {}
            if not isinstance(checked.get("features"), list):
                raise Unprocessable(f"Cloud Build {build.id} succeeded but its check step reported no feature "
                                    f"columns (is {self._step_image(build, 'check')} a modelrun serving image?)")
            digest = _digest(outputs.get("append"))
            # `NAME:rN@sha256:...`: the tag says which revision, the digest pins what runs
            artifact = f"{handle['image']}@{digest}" if digest else handle["image"]
            return Build(artifact=artifact, features=[str(f) for f in checked["features"]])
        checked = outputs.get("check") or {}
        if isinstance(checked.get("error"), str):
            raise Unprocessable(checked["error"])
        where = f"Cloud Build {build.id}" + (f", log: {build.log_url}" if build.log_url else "")
        detail = (build.failure_info.detail if build.failure_info and build.failure_info.detail
                  else build.status_detail) or status
        if status == "TIMEOUT":
            seconds = build.timeout.total_seconds() if build.timeout else self.timeout
            raise Unprocessable(f"the image build did not finish within its timeout of {seconds:.0f} s "
                                f"(MODELRUN_BUILD_TIMEOUT) ({where})")
        if status == "CANCELLED":
            raise Unprocessable(f"the image build was cancelled ({where})")
        if status == "EXPIRED":
            raise Unprocessable(f"the image build waited too long in Cloud Build's queue and expired ({where})")
        if status == "INTERNAL_ERROR":
            raise Unprocessable(f"Cloud Build failed internally: {_first_line(detail)} ({where})")
        raise Unprocessable(f"the image build failed: {_first_line(detail)} ({where})")

    # ---- the API --------------------------------------------------------------------------------

    def client(self):
        if self._client is None:
            from google.cloud.devtools import cloudbuild_v1 as cb

            if self.endpoint:  # an emulator or a test fake: plain gRPC, no credentials
                import grpc
                from google.auth.credentials import AnonymousCredentials
                from google.cloud.devtools.cloudbuild_v1.services.cloud_build import transports

                channel = grpc.insecure_channel(self.endpoint)
                transport = transports.CloudBuildGrpcTransport(channel=channel,
                                                                credentials=AnonymousCredentials())
                self._client = cb.CloudBuildClient(transport=transport)
            else:
                self._client = cb.CloudBuildClient()
        return self._client

    def _api(self, what: str, call, *, passthrough: tuple = (), retry: bool = True):
        """Run `call(client, options)` with bounded retries of transient errors; map the rest once."""
        from google.api_core import exceptions as gexc
        from google.api_core import retry as retries
        from google.auth import exceptions as auth_exc

        options = {"timeout": CALL_TIMEOUT}
        if retry:
            options["retry"] = retries.Retry(predicate=retries.if_exception_type(*_transient(gexc)),
                                             initial=0.2, maximum=5.0, multiplier=2.0, timeout=RETRY_SECONDS)
        try:
            return call(self.client(), options)
        except passthrough:
            raise
        except auth_exc.DefaultCredentialsError as exc:
            raise Unavailable(f"Cloud Build {what}: no Google credentials ({_first_line(exc)})") from None
        except (gexc.RetryError, *_transient(gexc)) as exc:
            cause = exc.cause if isinstance(exc, gexc.RetryError) and exc.cause else exc
            raise Unavailable(f"Cloud Build did not answer {what}: {_first_line(cause)}") from None
        except gexc.PermissionDenied as exc:
            raise Unprocessable(f"Cloud Build refused {what} (permission denied: {_first_line(exc)}); the control "
                                f"plane's service account needs roles/cloudbuild.builds.editor in {self.project}") \
                from None
        except gexc.GoogleAPICallError as exc:
            raise Unprocessable(f"Cloud Build refused {what}: {_first_line(exc)}") from None

    def _parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def _build_name(self, build_id: str) -> str:
        return f"{self._parent()}/builds/{build_id}"

    @staticmethod
    def _step_image(build, step_id: str) -> str:
        return next((s.name for s in build.steps if s.id == step_id), "the check step's image")

    # ---- Artifact Registry (REST: google-cloud-artifact-registry is not a dependency) ------------

    def _package(self, image: str) -> str | None:
        """The REST resource of `image`'s package, or None when it is not in this repository."""
        prefix = self.repository + "/"
        if not image.startswith(prefix):
            log.warning("not deleting %s: it is not in %s", image, self.repository)
            return None
        package = urllib.parse.quote(image[len(prefix):], safe="")
        return (f"projects/{self.project}/locations/{self.region}/repositories/{self.artifact_repository}"
                f"/packages/{package}")

    def _registry_delete(self, resource: str, what: str) -> None:
        """DELETE one Artifact Registry resource (a long-running operation that is not waited for); a missing
        one is fine. Failures are logged, not raised: a leftover image costs storage, not correctness."""
        base = (self.registry_api or "https://artifactregistry.googleapis.com").rstrip("/")
        try:
            if self.registry_api:
                import requests

                session = requests.Session()
            else:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
                session = AuthorizedSession(credentials)
            response = session.delete(f"{base}/v1/{resource}", timeout=CALL_TIMEOUT)
        except Exception as exc:  # no credentials, no network: leave it for a cleanup policy
            log.warning("could not delete %s from Artifact Registry: %s", what, _first_line(exc))
            return
        if response.status_code == 404 or response.ok:
            log.info("deleted %s from Artifact Registry", what)
            return
        log.warning("could not delete %s from Artifact Registry: HTTP %d %s", what, response.status_code,
                    _first_line(Exception(response.text)))


def _transient(gexc) -> tuple:
    return (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.ResourceExhausted, gexc.Aborted,
            gexc.InternalServerError)


def _literal(value: str) -> str:
    """`value` as Cloud Build passes it on literally: `$` starts a substitution, `$$` is a dollar sign."""
    return value.replace("$", "$$")


def _step_outputs(build) -> dict[str, dict | str]:
    """The steps' `$BUILDER_OUTPUT/output`, by step id: parsed JSON, else the text."""
    found: dict[str, dict | str] = {}
    outputs = list(build.results.build_step_outputs) if build.results else []
    for step, raw in zip(build.steps, outputs):
        text = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else str(raw)
        if not text:
            continue
        try:
            found[step.id or step.name] = json.loads(text)
        except ValueError:
            found[step.id or step.name] = text
    return found


def _digest(output) -> str | None:
    """The digest crane printed (`IMAGE@sha256:...`)."""
    if isinstance(output, str) and "@sha256:" in output:
        return "sha256:" + output.strip().splitlines()[-1].split("@sha256:", 1)[1].strip()
    return None


def _first_line(exc: BaseException | str) -> str:
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

