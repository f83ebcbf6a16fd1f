"""modelrun.gcs and the `gcs` Storage through the real client library against the emulator."""

from __future__ import annotations

import pytest

from modelrun import gcs
from modelrun.control.backends.gcs_storage import GcsStorage
from modelrun.errors import InvalidInput, NotFound, TooLarge, Unprocessable
from modelrun.settings import Settings
from modelrun.uris import resolve_local


@pytest.mark.parametrize("uri, words", [
    ("s3://bucket/m.keras", "not a gs:// URI"),
    ("gs://Bucket/m.keras", "not a Cloud Storage bucket name"),
    ("gs://ab/m.keras", "not a Cloud Storage bucket name"),
    ("gs://bucket", "names a bucket, not an object"),
    ("gs://bucket/", "names a bucket, not an object"),
    ("gs://bucket/a\nb", "not a valid Cloud Storage object name"),
    ("gs://bucket/" + "x" * 1025, "not a valid Cloud Storage object name"),
])
def test_bad_uris_are_refused_naming_the_problem(uri, words):
    with pytest.raises(InvalidInput) as error:
        gcs.parse(uri)
    assert words in error.value.message


def test_uri_parts():
    assert gcs.parse("gs://my-models/iris/v1/") == gcs.GsUri("my-models", "iris/v1")
    assert str(gcs.parse("gs://my.models.example.com/a b.keras")) == "gs://my.models.example.com/a b.keras"


def test_storage_reads_objects_and_folders(bucket, tmp_path):
    storage = GcsStorage(Settings(storage="gcs"))
    manifest = bucket.put("iris/modelrun.json", '{"name": "iris"}')
    assert storage.object_uri(bucket.name, "iris/modelrun.json") == manifest
    assert storage.read_bytes(manifest, 100) == b'{"name": "iris"}'
    with pytest.raises(TooLarge):
        storage.read_bytes(manifest, 5)
    with pytest.raises(NotFound):
        storage.read_bytes(bucket.uri("iris/nothing.json"), 100)

    saved = tmp_path / "saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.index").write_bytes(b"index")
    bucket.put_folder("iris/model", saved)
    copy = storage.fetch(bucket.uri("iris/model"), tmp_path / "copy")
    assert (copy / "saved_model.pb").read_bytes() == b"graph"
    assert (copy / "variables" / "variables.index").read_bytes() == b"index"
    assert storage.fetch(manifest, tmp_path / "m.json").read_bytes() == b'{"name": "iris"}'


def test_storage_refuses_what_it_cannot_read(bucket, tmp_path):
    storage = GcsStorage(Settings(storage="gcs"))
    with pytest.raises(InvalidInput) as error:
        storage.check_uri("/srv/model.keras")
    assert "expected gs://BUCKET/OBJECT" in error.value.message
    with pytest.raises(Unprocessable) as error:
        storage.fetch(bucket.uri("nowhere/model.keras"), tmp_path / "x")
    assert "does not exist" in error.value.message
    with pytest.raises(Unprocessable) as error:
        storage.fetch("gs://no-such-bucket-here/model.keras", tmp_path / "y")
    assert "does not exist" in error.value.message
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_dashboard_is_published_to_its_bucket_uncached(bucket):
    storage = GcsStorage(Settings(storage="gcs", dashboard_bucket=bucket.name))
    storage.publish("reports/iris.json", b'{"ok": true}', "application/json")
    blob = bucket.handle.get_blob("reports/iris.json")
    assert blob.download_as_bytes() == b'{"ok": true}'
    assert blob.content_type == "application/json"
    with pytest.raises(InvalidInput):
        storage.publish("../elsewhere.json", b"{}", "application/json")
    GcsStorage(Settings(storage="gcs")).publish("index.html", b"", "text/html")  # no bucket: a warning, no error


def test_resolve_local_downloads_once_per_content(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr("modelrun.uris.CACHE_DIR", tmp_path / "cache")
    uri = bucket.put("m/model.keras", b"first")
    first = resolve_local(uri)
    assert first.read_bytes() == b"first" and first.name == "model.keras"
    assert resolve_local(uri) == first  # the same generation: the cached copy
    bucket.put("m/model.keras", b"second")  # replaced: a new generation, a new copy
    second = resolve_local(uri)
    assert second != first and second.read_bytes() == b"second"
    with pytest.raises(Unprocessable):
        resolve_local(bucket.uri("m/missing.keras"))
