"""Storage URIs: turn a model or data location into a local path.

A plain path or a `file://` URI resolves to itself. Other schemes are looked up in `RESOLVERS`, the seam
where `gs://` (download to a local cache) plugs in with the Google Cloud backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelrun.errors import NotFound, Unprocessable


def _resolve_file(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise Unprocessable(f"file URI {uri!r} names host {parsed.netloc!r}; use file:///absolute/path")
    return Path(unquote(parsed.path))


def _gs_not_available(uri: str) -> Path:
    raise Unprocessable(f"{uri}: gs:// URIs are not available yet (they come with the Google Cloud backend); "
                        "use a local path or a file:// URI")


# scheme -> function(uri) -> local path. Add a scheme here, nowhere else.
RESOLVERS: dict[str, Callable[[str], Path]] = {"file": _resolve_file, "gs": _gs_not_available}


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
