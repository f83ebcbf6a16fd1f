"""Storage on Cloud Storage: models and training data at gs:// URIs, the models bucket's upload
manifests, and the drift dashboard as objects in its own bucket."""

from __future__ import annotations

import logging
from pathlib import Path

from modelrun import gcs
from modelrun.errors import InvalidInput
from modelrun.settings import Settings

log = logging.getLogger(__name__)


class GcsStorage:
    def __init__(self, settings: Settings):
        self.dashboard_bucket = settings.dashboard_bucket
        self._warned = False

    def check_uri(self, uri: str) -> None:
        if not uri.startswith("gs://"):
            raise InvalidInput(f"{uri}: with MODELRUN_STORAGE=gcs models and training data are read from "
                               f"Cloud Storage; expected gs://BUCKET/OBJECT")
        gcs.parse(uri)

    def object_uri(self, bucket: str, name: str) -> str:
        return f"gs://{bucket}/{name}"

    def read_bytes(self, uri: str, limit: int) -> bytes:
        self.check_uri(uri)
        return gcs.read_bytes(uri, limit)

    def fetch(self, uri: str, dest: Path) -> Path:
        self.check_uri(uri)
        return gcs.download(uri, dest)

    def publish(self, path: str, data: bytes, content_type: str) -> None:
        if not self.dashboard_bucket:
            if not self._warned:
                log.warning("MODELRUN_DASHBOARD_BUCKET is not set: the drift dashboard is not published")
                self._warned = True
            return
        if ".." in Path(path).parts or path.startswith("/"):
            raise InvalidInput(f"dashboard path {path!r} must stay inside the dashboard bucket")
        # Reports change every refresh: browsers and Cloud CDN must not keep an old one.
        gcs.upload(f"gs://{self.dashboard_bucket}/{path}", data, content_type, cache_control="no-cache, max-age=0")
