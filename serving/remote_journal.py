"""Journal files kept in Cloud Storage: the prediction rows an instance could not write to the database
before it stopped.

On Cloud Run the local disk is memory and goes with the instance, so at shutdown the prediction log
uploads its journal files to `gs://BUCKET/PREFIX/<deployment>/<file>`; the next instance to start (or the
control plane's reconciler, when no instance starts soon) replays them. Replays are exactly-once because
the predictions table's unique key on (deployment, request id) skips rows already there; an object is
deleted only after all of its rows are in, and only in the generation that was read.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from modelrun import gcs
from serving.prediction_journal import read_rows

log = logging.getLogger(__name__)


class RemoteJournal:
    def __init__(self, uri: str, deployment: str):
        root = gcs.parse(uri.rstrip("/") + "/")  # validates the bucket and prefix now, not at shutdown
        self.bucket, self.prefix = root.bucket, f"{root.name}/{deployment}/"

    @staticmethod
    def deployments(uri: str) -> list[str]:
        """The deployments that have journal files kept under `uri`."""
        root = gcs.parse(uri.rstrip("/") + "/")
        start = len(root.name) + 1
        return sorted({blob.name[start:].split("/", 1)[0] for blob in gcs.list_objects(root.bucket, root.name + "/")
                       if "/" in blob.name[start:]})

    def upload(self, paths: list[Path], *, seconds: float) -> int:
        """Upload journal files that no process holds open, then delete them locally; how many went up.
        A file that could not be uploaded within `seconds` (in all) stays where it is."""
        done = 0
        for path in paths:
            try:
                with path.open("rb") as handle:
                    if not _unlocked(handle):
                        continue  # a live writer still appends to it
                    data = handle.read()
                if data:
                    gcs.upload(f"gs://{self.bucket}/{self.prefix}{path.name}", data, "application/x-ndjson",
                               deadline=max(0.5, seconds))
                path.unlink(missing_ok=True)
                done += 1
            except Exception as error:  # the instance is stopping: keep what is left, say so, go on
                log.error("prediction log: could not keep %s in gs://%s/%s: %s", path.name, self.bucket,
                          self.prefix, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return done

    def replay(self, insert: Callable[[list[dict]], int], chunk: int) -> tuple[int, int]:
        """Insert the rows of every journal object, deleting each object once its rows are in.
        Returns (objects, rows). An error from `insert` leaves that object for the next attempt."""
        objects = rows = 0
        for blob in gcs.list_objects(self.bucket, self.prefix):
            with tempfile.TemporaryDirectory(prefix="modelrun-journal-") as tmp:
                local = Path(tmp) / "journal.jsonl"
                if not gcs.download_generation(self.bucket, blob.name, blob.generation, local):
                    continue  # replaced or replayed by someone else meanwhile
                result = read_rows(local, chunk, insert)
            if result is None:
                continue
            gcs.delete(self.bucket, blob.name, if_generation_match=blob.generation)
            objects, rows = objects + 1, rows + result[0]
        return objects, rows


def _unlocked(handle) -> bool:
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
