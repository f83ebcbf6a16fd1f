"""modelrun.uris: paths and file:// URIs resolve locally (gs:// is tested against an emulator in tests/gcs)."""

from __future__ import annotations

import pytest

from modelrun.errors import NotFound, Unprocessable
from modelrun.uris import resolve_local


def test_plain_path_and_file_uri(tmp_path):
    target = tmp_path / "my model.keras"
    target.write_bytes(b"x")
    assert resolve_local(str(target)) == target
    assert resolve_local(target.as_uri()) == target  # file:///.../my%20model.keras
    assert resolve_local(f"file://localhost{target}") == target


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound) as error:
        resolve_local(f"file://{tmp_path}/nope.keras")
    assert "nope.keras" in error.value.message
    assert resolve_local(tmp_path / "later.keras", must_exist=False) == tmp_path / "later.keras"


@pytest.mark.parametrize("uri, message", [("s3://b/m", "unsupported URI scheme 's3'"), ("", "empty location"),
                                          ("file://otherhost/m", "names host 'otherhost'")])
def test_other_locations_are_refused(uri, message):
    with pytest.raises(Unprocessable) as error:
        resolve_local(uri)
    assert message in error.value.message
