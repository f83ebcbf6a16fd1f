"""The local bucket's upload notifications: a manifest written into the bucket folder becomes the same
`google.cloud.storage.object.v1.finalized` CloudEvent Cloud Storage sends to the `on_upload` function.

Only manifests (`modelrun.json`, `modelrun.yaml`, `modelrun.yml`) are passed on; a manifest is passed on
once its size and mtime have been still for a moment, so a half-written file is never read. The
generation is the file's mtime in nanoseconds: writing the manifest again is a new upload, while a
repeated notice of the same write is the same (bucket, object, generation) and deploys once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

MANIFESTS = ("modelrun.json", "modelrun.yaml", "modelrun.yml")
FINALIZED = "google.cloud.storage.object.v1.finalized"
QUIET_SECONDS = 0.3
RETRY_SECONDS = 2.0

log = logging.getLogger("modelrun.local.watcher")


def finalize_event(bucket_dir: Path, path: Path, bucket: str):
    """The CloudEvent Cloud Storage would send for `path` (a file inside `bucket_dir`) being uploaded."""
    from cloudevents.http import CloudEvent

    stat = path.stat()
    name = path.relative_to(bucket_dir).as_posix()
    generation = str(stat.st_mtime_ns)
    written = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat().replace("+00:00", "Z")
    attributes = {
        "type": FINALIZED,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{name}",
        "id": f"{bucket}/{name}/{generation}",
        "time": written,
        "datacontenttype": "application/json",
    }
    data = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "bucket": bucket,
        "name": name,
        "generation": generation,
        "metageneration": "1",
        "size": str(stat.st_size),
        "contentType": "application/json" if name.endswith(".json") else "application/yaml",
        "timeCreated": written,
        "updated": written,
        "mediaLink": path.as_uri(),
    }
    return CloudEvent(attributes, data)


class BucketWatcher:
    """Watches `bucket_dir` (recursively) and calls `handle(event)` for each manifest written there."""

    def __init__(self, bucket_dir: Path, handle: Callable[[object], None], bucket: str | None = None):
        self.bucket_dir = Path(bucket_dir)
        self.bucket = bucket or self.bucket_dir.name
        self.handle = handle
        self._pending: dict[Path, float] = {}  # manifest path -> when it last changed
        self._seen: set[tuple[Path, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = None
        self._thread = threading.Thread(target=self._loop, name="bucket-watcher", daemon=True)

    def start(self) -> None:
        """Watch from now on, and pass on manifests already in the bucket (written while `up` was down)."""
        from watchdog.observers import Observer

        self.bucket_dir.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(_Events(self.notice), str(self.bucket_dir), recursive=True)
        self._observer.start()
        for name in MANIFESTS:
            for path in sorted(self.bucket_dir.rglob(name)):
                self.notice(path)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def notice(self, path: Path) -> None:
        if path.name in MANIFESTS:
            with self._lock:
                self._pending[Path(path)] = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                ready = [p for p, t in self._pending.items() if now - t >= QUIET_SECONDS]
                for path in ready:
                    del self._pending[path]
            for path in ready:
                self._upload(path)

    def _upload(self, path: Path) -> None:
        try:
            stat = path.stat()
        except OSError:
            return  # deleted or renamed away before it settled
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key in self._seen:
            return
        self._seen.add(key)
        from modelrun.errors import Unavailable

        try:
            event = finalize_event(self.bucket_dir, path, self.bucket)
            log.info("manifest uploaded: %s (generation %s)", event.data["name"], event.data["generation"])
            self.handle(event)
        except Unavailable as exc:  # e.g. the database is down: like Cloud Storage, deliver it again later
            log.warning("manifest %s: will retry: %s", path, exc.message)
            self._seen.discard(key)
            with self._lock:
                self._pending[path] = time.monotonic() + RETRY_SECONDS
        except Exception as exc:  # a bad manifest must not stop the watcher
            log.error("manifest %s was not deployed: %s", path, getattr(exc, "message", None) or repr(exc))


def _Events(notice: Callable[[Path], None]):
    from watchdog.events import FileSystemEventHandler

    class Events(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
                return
            for attr in ("src_path", "dest_path"):
                value = getattr(event, attr, "")
                if value:
                    notice(Path(value if isinstance(value, str) else value.decode()))

    return Events()
