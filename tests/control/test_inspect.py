"""Local storage URIs and the checks on training data and models that need no TensorFlow."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest

from modelrun.control.backends.local_storage import LocalStorage
from modelrun.control.inspect import TensorSpec, check_inputs, check_model, feature_columns, keras_inputs
from modelrun.errors import InvalidInput, NotFound, TooLarge, Unprocessable
from modelrun.settings import Settings


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(Settings(home=tmp_path))


@pytest.mark.parametrize("uri, path", [("/srv/m.keras", "/srv/m.keras"), ("file:///srv/m%20v2.keras", "/srv/m v2.keras"),
                                       ("file://localhost/srv/m.keras", "/srv/m.keras")])
def test_local_paths(storage, uri, path):
    assert str(storage.path(uri)) == path


@pytest.mark.parametrize("uri, error, words", [
    ("gs://bucket/m.keras", Unprocessable, "not available in local mode"),
    ("s3://bucket/m.keras", InvalidInput, "unsupported URI scheme 's3://'"),
    ("models/m.keras", InvalidInput, "not an absolute path"),
    ("file://otherhost/m.keras", InvalidInput, "file:///absolute/path"),
])
def test_uris_local_mode_cannot_read(storage, uri, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        storage.check_uri(uri)


def test_bucket_objects_and_small_reads(storage, tmp_path):
    uri = storage.object_uri("any-bucket", "iris/modelrun.json")
    assert uri == str(tmp_path / "bucket" / "iris" / "modelrun.json")
    with pytest.raises(NotFound):
        storage.read_bytes(uri, 100)
    (tmp_path / "bucket" / "iris").mkdir(parents=True)
    (tmp_path / "bucket" / "iris" / "modelrun.json").write_text("x" * 101)
    with pytest.raises(TooLarge):
        storage.read_bytes(uri, 100)
    assert storage.read_bytes(uri, 101) == b"x" * 101


FRAME = pd.DataFrame({"age": [31, 45], "city": ["rome", "paris"], "price": [1.5, 2.5]})


@pytest.mark.parametrize("name, write", [
    ("t.csv", lambda p: FRAME.to_csv(p, index=False)),
    ("t.json", lambda p: p.write_text(FRAME.to_json(orient="records"))),
    ("t.json", lambda p: p.write_text(FRAME.to_json(orient="records", lines=True))),
    ("t.json", lambda p: p.write_text(FRAME.to_json(orient="columns"))),
    ("t.jsonl", lambda p: p.write_text(FRAME.to_json(orient="records", lines=True))),
    ("t.parquet", lambda p: FRAME.to_parquet(p)),
])
def test_training_data_formats(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    assert feature_columns(path, name, "price") == ["age", "city"]
    assert feature_columns(path, name, None) == ["age", "city", "price"]


@pytest.mark.parametrize("name, content, words", [
    ("t.txt", "a,b\n1,2\n", "must be CSV, JSON or Parquet"),
    ("t.csv", "", "not readable as CSV"),
    ("t.csv", "a,b\n", "no rows"),
    ("t.json", "{broken", "not readable as JSON"),
    ("t.json", "[]", "no rows"),
    ("t.parquet", "not parquet", "not readable as Parquet"),
])
def test_unusable_training_data(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(Unprocessable, match=words):
        feature_columns(path, name, None)


def test_model_files(tmp_path):
    keras_file = tmp_path / "m.keras"
    config = {"class_name": "Functional", "config": {
        "layers": [{"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_shape": [None, 3],
                                                                         "dtype": "float32"}}],
        "input_layers": ["x", 0, 0]}}
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", b"\0" * 100)
    assert check_model(keras_file, "m.keras") == "keras"
    assert keras_inputs(keras_file) == [TensorSpec("x", "float32", [-1, 3])]
    truncated = tmp_path / "t.keras"
    truncated.write_bytes(keras_file.read_bytes()[:60])
    with pytest.raises(Unprocessable, match="corrupt"):
        check_model(truncated, "t.keras")
    folder = tmp_path / "sm"
    folder.mkdir()
    with pytest.raises(Unprocessable, match="no saved_model.pb"):
        check_model(folder, "sm")
    (folder / "saved_model.pb").write_bytes(b"")
    with pytest.raises(Unprocessable, match="empty"):
        check_model(folder, "sm")


def test_inputs_against_feature_columns():
    check_inputs([TensorSpec("x", "FP32", [-1, 2])], ["a", "b"])
    check_inputs([TensorSpec("x", "FP32", [-1, -1])], ["a", "b", "c"])
    check_inputs([TensorSpec("a", "FP32", [-1, 1]), TensorSpec("b", "BYTES", [-1, 1])], ["a", "b", "c"])
    check_inputs([TensorSpec("a", "FP32", [-1, 1])], ["a", "b"])  # one named input of width 1
    with pytest.raises(Unprocessable, match="takes 2 features but the training data has 3 feature columns"):
        check_inputs([TensorSpec("x", "FP32", [-1, 2])], ["a", "b", "c"])
    with pytest.raises(Unprocessable, match="inputs z are not columns of the training data"):
        check_inputs([TensorSpec("a", "FP32", [-1, 1]), TensorSpec("z", "FP32", [-1, 1])], ["a", "b"])
