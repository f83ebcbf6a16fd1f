"""Fixtures `emulator` and `bucket` (registered once, in tests/conftest.py, so the session has one emulator):
a real Cloud Storage emulator (gcp-storage-emulator, in memory) for the session, reached by the real
`google-cloud-storage` client through STORAGE_EMULATOR_HOST, which every child process inherits.

    def test_x(bucket):
        bucket.put("m/model.keras", path_or_bytes)   # one object
        bucket.put_folder("m/saved", folder)         # a SavedModel as a prefix of objects
        bucket.uri("m/model.keras")                  # gs://<bucket>/m/model.keras
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from modelrun import gcs
from tests.util import free_port, wait_until


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--in-memory", "-q"], stdout=out, stderr=subprocess.STDOUT)
    host = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    gcs._client = None  # the process's client is made again, for this emulator
    try:
        import httpx

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"the Cloud Storage emulator exited:\n{log.read_text()}")
            try:
                return httpx.get(f"{host}/storage/v1/b", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, interval=0.1, what="the Cloud Storage emulator")
        yield host
    finally:
        proc.terminate()
        proc.wait(10)
        gcs._client = None
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


class Bucket:
    def __init__(self, name: str):
        from google.cloud import storage

        self.name = name
        self.client = storage.Client()
        self.handle = self.client.create_bucket(name)

    def uri(self, object_name: str) -> str:
        return f"gs://{self.name}/{object_name}"

    def put(self, object_name: str, content: bytes | str | Path) -> str:
        blob = self.handle.blob(object_name)
        if isinstance(content, Path):
            blob.upload_from_filename(str(content))
        else:
            blob.upload_from_string(content.encode() if isinstance(content, str) else content)
        return self.uri(object_name)

    def put_folder(self, prefix: str, folder: Path) -> str:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
        return self.uri(prefix)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(self.name, prefix=prefix))


@pytest.fixture
def bucket(emulator) -> Bucket:
    """A new, empty bucket in the emulator."""
    return Bucket(f"mr-test-{uuid.uuid4().hex[:12]}")
