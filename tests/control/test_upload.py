"""The `on_upload` function through functions-framework: CloudEvents in binary and structured mode."""

from __future__ import annotations

import json
import logging

import pytest

from tests.control.conftest import AUTH


def drop(home, folder: str, content: str | bytes, filename: str = "modelrun.json") -> str:
    """Write a file into the local bucket, as an upload would; return its object name."""
    path = home / "bucket" / folder / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return f"{folder}/{filename}" if folder else filename


def event(name: str, generation: str = "1") -> dict:
    return {"bucket": "models", "name": name, "generation": generation, "contentType": "application/json",
            "size": "120", "metageneration": "1", "timeCreated": "2026-11-25T09:00:00.000Z"}


def deployments(functions) -> dict[str, dict]:
    listed = functions.api.get("/deployments", headers=AUTH).get_json()["deployments"]
    return {d["name"]: d for d in listed}


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_manifest_deploys_with_paths_relative_to_its_folder(functions, home, structured):
    name = drop(home, "iris/v1", json.dumps({"name": "iris", "model": "model.keras", "training_data": "../train.csv",
                                             "config": {"label": "species"}}))
    assert functions.post_event(event(name), structured=structured).status_code == 200
    found = deployments(functions)["iris"]
    assert found["status"] == "PENDING" and found["revision"] == 1
    assert found["model_uri"] == str(home / "bucket" / "iris" / "v1" / "model.keras")
    assert found["training_data_uri"] == str(home / "bucket" / "iris" / "train.csv")
    assert found["config"] == {"label": "species"}


def test_yaml_manifest_with_absolute_uris(functions, home):
    name = drop(home, "wine", "name: wine\nmodel: file:///srv/wine.keras\ntraining_data: /srv/wine.parquet\n",
                "modelrun.yaml")
    functions.post_event(event(name))
    found = deployments(functions)["wine"]
    assert (found["model_uri"], found["training_data_uri"]) == ("file:///srv/wine.keras", "/srv/wine.parquet")


def test_repeated_event_deploys_once_and_a_new_generation_updates(functions, home):
    name = drop(home, "iris", json.dumps({"name": "iris", "model": "m.keras", "training_data": "t.csv"}))
    for structured in (False, True, False):
        assert functions.post_event(event(name, "1700000000000001"), structured=structured).status_code == 200
    assert deployments(functions)["iris"]["revision"] == 1
    events = functions.api.get("/deployments/iris/events", headers=AUTH).get_json()["events"]
    assert len(events) == 1

    functions.post_event(event(name, "1700000000000002"))  # uploaded again: a new revision
    assert deployments(functions)["iris"]["revision"] == 2


def test_other_objects_and_event_types_are_ignored(functions, home, caplog):
    caplog.set_level(logging.INFO)
    model = drop(home, "iris", b"PK\x03\x04 not really", "model.keras")
    assert functions.post_event(event(model)).status_code == 200
    manifest = drop(home, "iris", json.dumps({"name": "iris", "model": "m.keras", "training_data": "t.csv"}))
    assert functions.post_event(event(manifest), type_="google.cloud.storage.object.v1.deleted").status_code == 200
    assert deployments(functions) == {}
    assert "not a manifest" in caplog.text


@pytest.mark.parametrize("content, words", [
    ("{\"name\": \"iris\", ", "not valid JSON"),
    (json.dumps({"name": "iris", "model": "m.keras"}), "missing field 'training_data'"),
    (json.dumps({"name": "Iris!", "model": "m.keras", "training_data": "t.csv"}), "lowercase DNS label"),
    (json.dumps({"name": "iris", "model": "m.keras", "training_data": "t.csv", "extra": 1}), "unknown field 'extra'"),
    (json.dumps({"name": "iris", "model": "../../outside.keras", "training_data": "t.csv"}), "leaves the bucket"),
    (json.dumps({"name": "iris", "model": "gs://b/m.keras", "training_data": "t.csv"}), "not available in local mode"),
    (json.dumps(["iris"]), "JSON object"),
])
def test_invalid_manifest_is_logged_and_deploys_nothing(functions, home, caplog, content, words):
    name = drop(home, "iris", content)
    assert functions.post_event(event(name)).status_code == 200
    assert deployments(functions) == {}
    assert words in caplog.text and "nothing deployed" in caplog.text


def test_invalid_yaml_manifest(functions, home, caplog):
    name = drop(home, "iris", "name: iris\nmodel: [unclosed\n", "modelrun.yaml")
    assert functions.post_event(event(name)).status_code == 200
    assert deployments(functions) == {} and "not valid YAML" in caplog.text


def test_manifest_that_vanished_before_it_was_read(functions, caplog):
    assert functions.post_event(event("gone/modelrun.json")).status_code == 200
    assert deployments(functions) == {} and "does not exist" in caplog.text
