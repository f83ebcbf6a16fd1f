"""Storage on this machine: absolute paths and file:// URIs; the models bucket is a folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelrun.errors import InvalidInput, NotFound, TooLarge, Unprocessable
from modelrun.settings import Settings

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class LocalStorage:
    def __init__(self, settings: Settings):
        self.bucket_dir = settings.bucket_dir
        self.dashboard_dir = settings.dashboard_dir

    def path(self, uri: str) -> Path:
        """The local path a URI names; InvalidInput/Unprocessable for what local mode cannot read."""
        match = _SCHEME.match(uri)
        if match:
            scheme = match.group(1).lower()
            if scheme == "gs":
                raise Unprocessable(f"{uri}: gs:// URIs are not available in local mode (MODELRUN_STORAGE=local); "
                                    f"use an absolute path or a file:// URI")
            if scheme != "file":
                raise InvalidInput(f"{uri}: unsupported URI scheme '{scheme}://'; use an absolute path, "
                                   f"a file:// URI or (on Google Cloud) gs://")
            parsed = urlparse(uri)
            if parsed.netloc not in ("", "localhost"):
                raise InvalidInput(f"{uri}: a file:// URI names a local file: file:///absolute/path")
            path = unquote(parsed.path)
        else:
            path = uri
        if "\0" in path or not path.startswith("/"):
            raise InvalidInput(f"{uri!r} is not an absolute path; use an absolute path or a file:// URI")
        return Path(path)

    def check_uri(self, uri: str) -> None:
        self.path(uri)

    def object_uri(self, bucket: str, name: str) -> str:
        return str(self.bucket_dir / name)

    def read_bytes(self, uri: str, limit: int) -> bytes:
        path = self.path(uri)
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise NotFound(f"{uri} does not exist") from None
        except OSError as exc:
            raise Unprocessable(f"{uri} is not readable: {exc.strerror}") from None
        if len(data) > limit:
            raise TooLarge(f"{uri} is larger than {limit} bytes")
        return data

    def fetch(self, uri: str, dest: Path) -> Path:
        source = self.path(uri)
        if not source.exists():
            raise Unprocessable(f"{uri} does not exist")
        try:
            if source.is_dir():
                shutil.copytree(source, dest, symlinks=False)
            else:
                shutil.copyfile(source, dest)
        except (OSError, shutil.Error) as exc:
            raise Unprocessable(f"{uri} is not readable: {_reason(exc)}") from None
        return dest

    def publish(self, path: str, data: bytes, content_type: str) -> None:
        target = self.dashboard_dir / path
        if ".." in Path(path).parts or Path(path).is_absolute():
            raise InvalidInput(f"dashboard path {path!r} must stay inside the dashboard folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)  # readers see the old file or the new one, never half of one


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
