"""Storage URIs: turn a model or data location into a local path.

A plain path or a `file://` URI resolves to itself; a `gs://` URI to a downloaded copy in a local cache.
Schemes are looked up in `RESOLVERS`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelrun.errors import NotFound, Unprocessable


def _resolve_file(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise Unprocessable(f"file URI {uri!r} names host {parsed.netloc!r}; use file:///absolute/path")
    return Path(unquote(parsed.path))


def _resolve_gs(uri: str) -> Path:
    from modelrun import gcs

    return gcs.cached_copy(uri, CACHE_DIR)


# Downloads of remote models and data, one folder per content (see gcs.cached_copy).
CACHE_DIR = Path(tempfile.gettempdir()) / "modelrun-cache"

# scheme -> function(uri) -> local path. Add a scheme here, nowhere else.
RESOLVERS: dict[str, Callable[[str], Path]] = {"file": _resolve_file, "gs": _resolve_gs}


def scheme_of(uri: str) -> str:
    """The URI's scheme, or "" for a plain path (a Windows drive letter is not a scheme)."""
    parsed = urlparse(uri)
    return parsed.scheme if len(parsed.scheme) > 1 else ""


def resolve_local(uri: str | Path, *, must_exist: bool = True) -> Path:
    """A local path for `uri` (a path, `file://...`, or a scheme in RESOLVERS).

    Raises Unprocessable for an unsupported scheme and NotFound when `must_exist` and nothing is there.
    """
    text = str(uri).strip()
    if not text:
        raise Unprocessable("empty location: expected a path or a file:// URI")
    scheme = scheme_of(text)
    if scheme:
        resolver = RESOLVERS.get(scheme)
        if resolver is None:
            known = ", ".join(f"{name}://" for name in RESOLVERS)
            raise Unprocessable(f"{text}: unsupported URI scheme {scheme!r}; expected a local path or one of {known}")
        path = resolver(text)
    else:
        path = Path(text)
    path = path.expanduser()
    if must_exist and not path.exists():
        raise NotFound(f"{text}: no such file or folder ({path})")
    return path
