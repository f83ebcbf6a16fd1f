"""Cloud Storage for every modelrun program: `gs://` URIs, one lazy client per process, and downloads of an
object or of a folder (a SavedModel is a prefix of objects).

`google.cloud.storage` is imported on first use only. The client library reads STORAGE_EMULATOR_HOST itself:
set it and every call goes to that emulator, without credentials.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelrun.errors import InvalidInput, NotFound, TooLarge, Unavailable, Unprocessable

# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, '-', '_' and '.', starting
# and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_MAX_NAME_BYTES = 1024

_client = None
_client_lock = threading.Lock()

# Every call: transient failures (429, 5xx, connection errors) are retried with backoff for up to
# RETRY_SECONDS in all; one HTTP request waits up to TIMEOUT_SECONDS. Then the caller gets Unavailable.
RETRY_SECONDS = 60.0
TIMEOUT_SECONDS = 30.0


def _call(deadline: float | None = None) -> dict:
    """Retry and timeout for one call: RETRY_SECONDS in all, or `deadline` when it is shorter."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    budget = RETRY_SECONDS if deadline is None else min(deadline, RETRY_SECONDS)
    return {"retry": DEFAULT_RETRY.with_timeout(budget), "timeout": min(TIMEOUT_SECONDS, budget)}


@dataclass(frozen=True)
class GsUri:
    bucket: str
    name: str  # the object's name, or a folder's prefix without its trailing '/'

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def parse(uri: str) -> GsUri:
    """Split `gs://bucket/name`; InvalidInput naming what is wrong."""
    if not uri.startswith("gs://"):
        raise InvalidInput(f"{uri!r} is not a gs:// URI; expected gs://BUCKET/OBJECT")
    bucket, _, name = uri[len("gs://"):].partition("/")
    name = name.rstrip("/")
    if not _BUCKET.match(bucket) or ".." in bucket or (len(bucket) > 63 and "." not in bucket):
        raise InvalidInput(f"{uri}: {bucket!r} is not a Cloud Storage bucket name "
                           f"(3-63 lowercase letters, digits, '-', '_' or '.')")
    if not name:
        raise InvalidInput(f"{uri}: names a bucket, not an object; expected gs://{bucket}/OBJECT")
    if len(name.encode()) > _MAX_NAME_BYTES or any(c in name for c in "\0\r\n") or \
            name in (".", "..") or name.startswith(".well-known/acme-challenge/"):
        raise InvalidInput(f"{uri}: not a valid Cloud Storage object name")
    return GsUri(bucket, name)


def client():
    """The process's one storage client (thread-safe; the library's HTTP session is shared)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                from google.cloud import storage

                _client = storage.Client()
    return _client


def read_bytes(uri: str, limit: int) -> bytes:
    """A small object's bytes; NotFound when missing, TooLarge past `limit` bytes."""
    where = parse(uri)
    with _errors(uri):
        blob = client().bucket(where.bucket).get_blob(where.name, **_call())
        if blob is None:
            raise NotFound(f"{uri} does not exist")
        if blob.size is not None and blob.size > limit:
            raise TooLarge(f"{uri} is larger than {limit} bytes")
        return blob.download_as_bytes(**_call())


def download(uri: str, dest: Path) -> Path:
    """Copy an object to the file `dest`, or every object under the folder `uri` into the folder `dest`.

    Written beside `dest` first and renamed into place, so `dest` is whole or absent. Unprocessable when
    nothing is there (the reconciler shows the message as the revision's reason).
    """
    where = parse(uri)
    tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        with _errors(uri):
            bucket = client().bucket(where.bucket)
            blob = bucket.get_blob(where.name, **_call()) if not uri.endswith("/") else None
            if blob is not None:
                blob.download_to_filename(str(tmp), **_call())
            else:
                _download_folder(bucket, where, tmp)
        tmp.rename(dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return dest


def cached_copy(uri: str, cache_dir: Path) -> Path:
    """A local copy of the object or folder `uri`, downloaded once per content: the cache key is the URI
    with its objects' generations, so a restart reuses the copy and a replaced model is downloaded anew."""
    where = parse(uri)
    with _errors(uri):
        bucket = client().bucket(where.bucket)
        blob = bucket.get_blob(where.name, **_call()) if not uri.endswith("/") else None
        blobs = [blob] if blob is not None else _folder_blobs(bucket, where)
    key = hashlib.sha256("\n".join([str(where)] + [f"{b.name}#{b.generation}" for b in blobs]).encode())
    dest = cache_dir / key.hexdigest()[:24] / PurePosixPath(where.name).name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return download(uri, dest)
    except OSError:
        if dest.exists():  # another process finished the same download first
            return dest
        raise


def _folder_blobs(bucket, where: GsUri) -> list:
    prefix = where.name + "/"
    blobs = [b for b in bucket.list_blobs(prefix=prefix, **_call()) if not b.name.endswith("/")]
    if not blobs:
        raise Unprocessable(f"{where} does not exist (no object of that name, and no objects under {prefix})")
    return blobs


def _download_folder(bucket, where: GsUri, tmp: Path) -> None:
    prefix = where.name + "/"
    found = False
    for blob in bucket.list_blobs(prefix=prefix, **_call()):
        relative = blob.name[len(prefix):]
        if not relative or relative.endswith("/"):  # a console-made "folder" placeholder
            continue
        target = tmp.joinpath(relative)
        if ".." in Path(relative).parts or not target.resolve().is_relative_to(tmp.resolve()):
            raise Unprocessable(f"gs://{where.bucket}/{blob.name}: object name leaves the folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target), **_call())
        found = True
    if not found:
        raise Unprocessable(f"{where} does not exist (no object of that name, and no objects under {prefix})")


def upload(uri: str, data: bytes, content_type: str, *, cache_control: str | None = None,
           deadline: float | None = None) -> None:
    """Write one object whole (a single request: readers see the old object or the new one)."""
    where = parse(uri)
    with _errors(uri):
        blob = client().bucket(where.bucket).blob(where.name)
        if cache_control:
            blob.cache_control = cache_control
        blob.upload_from_string(data, content_type=content_type, **_call(deadline))


def list_objects(bucket: str, prefix: str) -> list:
    """The objects whose names start with `prefix` (each with .name and .generation)."""
    with _errors(f"gs://{bucket}/{prefix}"):
        return list(client().list_blobs(bucket, prefix=prefix, **_call()))


def download_generation(bucket: str, name: str, generation: int, dest: Path) -> bool:
    """Download exactly that generation of an object; False when it is gone or was replaced."""
    from google.api_core import exceptions as gexc

    with _errors(f"gs://{bucket}/{name}"):
        try:
            client().bucket(bucket).blob(name, generation=generation).download_to_filename(str(dest), **_call())
        except gexc.NotFound:
            dest.unlink(missing_ok=True)
            return False
    return True


def delete(bucket: str, name: str, *, if_generation_match: int | None = None) -> bool:
    """Delete an object (only that generation, when given); False when it was gone or replaced."""
    from google.api_core import exceptions as gexc

    with _errors(f"gs://{bucket}/{name}"):
        try:
            client().bucket(bucket).blob(name).delete(if_generation_match=if_generation_match, **_call())
        except (gexc.NotFound, gexc.PreconditionFailed):
            return False
    return True


@contextmanager
def _errors(uri: str):
    """Map the client library's errors to modelrun's, once: what a person can act on, in one line."""
    try:
        yield
    except (NotFound, TooLarge, Unprocessable, InvalidInput):
        raise
    except Exception as exc:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        if isinstance(exc, gexc.NotFound):
            raise Unprocessable(f"{uri} does not exist (or its bucket does not)") from None
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
            raise Unprocessable(f"{uri}: access denied ({_first_line(exc)}); the service account needs "
                                f"roles/storage.objectViewer on the bucket") from None
        if isinstance(exc, auth_exc.DefaultCredentialsError):
            raise Unavailable(f"{uri}: no Google credentials ({_first_line(exc)})") from None
        transient = (gexc.GoogleAPIError, auth_exc.TransportError, ConnectionError, TimeoutError)
        if isinstance(exc, transient) or type(exc).__module__.startswith(
                ("requests", "urllib3", "google.resumable_media")):
            raise Unavailable(f"{uri}: Cloud Storage did not answer: {_first_line(exc)}") from None
        raise  # a local disk error or a bug: the caller reports it


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
