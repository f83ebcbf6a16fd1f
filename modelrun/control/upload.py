"""Auto-deploy on upload (design 2.3): a finalized `modelrun.json` / `modelrun.yaml` deploys its folder.

The manifest names the deployment, the model and the training data (relative to the manifest's folder,
or absolute URIs) and optional config. Other objects are ignored. Each (bucket, object, generation) is
handled once; an existing deployment of that name gets a new revision. A bad manifest is logged and
deploys nothing; no exception escapes except Unavailable (the database is down: let the event be retried).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading

import yaml

from modelrun.control import models as m
from modelrun.control.backends import Storage
from modelrun.control.repository import Repository
from modelrun.errors import InvalidInput, ModelrunError, Unavailable
from modelrun.settings import Settings

log = logging.getLogger(__name__)
FINALIZED = "google.cloud.storage.object.v1.finalized"
MANIFEST_NAMES = ("modelrun.json", "modelrun.yaml", "modelrun.yml")
_ABSOLUTE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://|/)")


class UploadHandler:
    def __init__(self, settings: Settings, repo: Repository, storage: Storage, wake: threading.Event):
        self.settings = settings
        self.repo = repo
        self.storage = storage
        self.wake = wake

    def handle(self, event) -> None:
        try:
            self._handle(event)
        except Unavailable:
            raise
        except ModelrunError as exc:
            log.error("upload event %s: nothing deployed: %s", _describe(event), exc.message)
        except Exception:
            log.exception("upload event %s: nothing deployed: unexpected error", _describe(event))

    def _handle(self, event) -> None:
        if event["type"] != FINALIZED:
            log.info("ignored event of type %s (only %s deploys)", event["type"], FINALIZED)
            return
        data = event.data
        if isinstance(data, bytes | str):
            try:
                data = json.loads(data)
            except ValueError:
                raise InvalidInput("the event's data is not a JSON object") from None
        if not isinstance(data, dict) or not data.get("bucket") or not data.get("name"):
            raise InvalidInput("the event's data lacks the object's bucket and name")
        bucket, name, generation = str(data["bucket"]), str(data["name"]), str(data.get("generation", ""))
        if posixpath.basename(name) not in MANIFEST_NAMES:
            log.info("ignored gs://%s/%s: not a manifest (%s)", bucket, name, " or ".join(MANIFEST_NAMES))
            return
        try:
            manifest, model_uri, data_uri = self._read(bucket, name)
        except Unavailable:
            raise  # storage did not answer: the event is delivered again, and must not count as handled
        except ModelrunError as exc:
            if self.repo.record_upload(bucket, name, generation, f"invalid: {exc.message}"):
                raise
            log.info("gs://%s/%s#%s was handled before", bucket, name, generation)
            return
        outcome, deployment = self.repo.apply_manifest(
            bucket, name, generation, manifest.name, model_uri, data_uri,
            None if manifest.config is None else m.config_dict(manifest.config))
        if deployment is None:
            log.info("gs://%s/%s#%s was handled before: nothing to do", bucket, name, generation)
            return
        log.info("gs://%s/%s#%s: deployment %s %s (revision %d)", bucket, name, generation, deployment.name,
                 outcome, deployment.revision)
        self.wake.set()

    def _read(self, bucket: str, name: str) -> tuple[m.Manifest, str, str]:
        raw = self.storage.read_bytes(self.storage.object_uri(bucket, name), self.settings.max_body_bytes)
        try:
            if name.endswith(".json"):
                content = json.loads(raw)
            else:
                content = yaml.safe_load(raw)
        except (ValueError, yaml.YAMLError) as exc:
            kind = "JSON" if name.endswith(".json") else "YAML"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInput(f"manifest {name} is not valid {kind}: {first}") from None
        manifest = m.parse(m.Manifest, content, what=f"manifest {name}")
        uris = [self._resolve(bucket, name, ref) for ref in (manifest.model, manifest.training_data)]
        for uri in uris:
            self.storage.check_uri(uri)
        return manifest, uris[0], uris[1]

    def _resolve(self, bucket: str, manifest_name: str, ref: str) -> str:
        if _ABSOLUTE.match(ref):
            return ref
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(manifest_name), ref))
        if joined == ".." or joined.startswith("../"):
            raise InvalidInput(f"manifest {manifest_name}: path {ref!r} leaves the bucket")
        return self.storage.object_uri(bucket, joined)


def _describe(event) -> str:
    try:
        data = event.data if isinstance(event.data, dict) else {}
        return f"gs://{data.get('bucket')}/{data.get('name')}#{data.get('generation')}"
    except Exception:
        return "(unreadable event)"
