"""Deployments in SQL on SQLite, MariaDB and PostgreSQL (fresh database each; servers must be up)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from modelrun.control import models as m
from modelrun.control.repository import Repository, utcnow
from modelrun.db import make_engine
from modelrun.errors import Conflict, NotFound


@pytest.fixture
def repo(database_url):
    engine = make_engine(database_url)
    yield Repository(engine)
    engine.dispose()


def newest(repo, name) -> m.Revision:
    deployment, _, revisions = repo.load(name)
    return next(r for r in revisions if r.revision == deployment.revision)


def test_create_read_update_delete(repo):
    created = repo.create("iris", "/m/1.keras", "/d/train.csv", {"label": "species"})
    assert (created.status, created.revision, created.endpoint, created.config) == ("PENDING", 1, None,
                                                                                   {"label": "species"})
    with pytest.raises(Conflict, match="already exists"):
        repo.create("iris", "/m/other.keras", "/d/train.csv", {})
    assert [d.name for d in repo.list()] == ["iris"]

    updated = repo.update("iris", "/m/2.keras", None, None)
    assert (updated.revision, updated.model_uri, updated.training_data_uri, updated.config) == (
        2, "/m/2.keras", "/d/train.csv", {"label": "species"})
    assert [r.revision for r in repo.load("iris")[2]] == [1, 2]

    assert repo.mark_deleting("iris").status == "DELETING"
    assert repo.mark_deleting("iris").status == "DELETING"
    with pytest.raises(Conflict, match="being deleted"):
        repo.update("iris", None, None, {})
    deployment, dep_id, _ = repo.load("iris")
    repo.remove(dep_id, "iris")
    with pytest.raises(NotFound):
        repo.get("iris")
    with pytest.raises(NotFound):
        repo.update("iris", "/m/3.keras", None, None)
    assert repo.load("iris") is None and repo.events("iris") == []


def test_status_follows_the_newest_revision_and_a_failed_update_keeps_serving(repo):
    repo.create("iris", "/m/1.keras", "/d/train.csv", {})
    first = newest(repo, "iris")
    repo.set_revision(first, state=m.BUILDING)
    repo.set_revision(first, state=m.DEPLOYING, features=["a", "b"], runtime={"pid": 1, "port": 5},
                      endpoint="127.0.0.1:5")
    assert repo.get("iris").status == "DEPLOYING" and repo.get("iris").endpoint is None
    assert repo.get("iris").features is None  # known, but nothing serves yet
    repo.switch_serving(first, None, utcnow())
    ready = repo.get("iris")
    assert (ready.status, ready.endpoint, ready.serving_revision) == ("READY", "127.0.0.1:5", 1)
    assert ready.features == ["a", "b"] and [d.features for d in repo.list()] == [["a", "b"]]
    assert newest(repo, "iris").features == ["a", "b"] and newest(repo, "iris").runtime == {"pid": 1, "port": 5}

    repo.update("iris", "/m/2.keras", None, None)
    second = newest(repo, "iris")
    assert (repo.get("iris").status, repo.get("iris").endpoint) == ("PENDING", "127.0.0.1:5")
    repo.set_revision(second, state=m.FAILED, error="is not a model")
    failed_update = repo.get("iris")
    assert (failed_update.status, failed_update.serving_revision, failed_update.endpoint) == ("READY", 1,
                                                                                           "127.0.0.1:5")
    assert "update to revision 2 failed" in failed_update.error and "is not a model" in failed_update.error

    repo.update("iris", "/m/3.keras", None, None)
    third = newest(repo, "iris")
    assert repo.get("iris").error is None
    repo.set_revision(third, state=m.DEPLOYING, endpoint="127.0.0.1:7", features=["b", "a", "c"])
    assert repo.get("iris").features == ["a", "b"]  # revision 1 still serves
    repo.switch_serving(third, repo.load("iris")[2][0], utcnow() + timedelta(seconds=5))
    switched = repo.get("iris")
    assert (switched.status, switched.serving_revision, switched.endpoint) == ("READY", 3, "127.0.0.1:7")
    assert switched.features == ["b", "a", "c"] and repo.load("iris")[0].features == ["b", "a", "c"]
    assert repo.load("iris")[2][0].state == m.DRAINING
    history = [(e["revision"], e["from"], e["to"]) for e in repo.events("iris")]
    assert history == [(1, None, "PENDING"), (1, "PENDING", "BUILDING"), (1, "BUILDING", "DEPLOYING"),
                       (1, "DEPLOYING", "READY"), (2, None, "PENDING"), (2, "PENDING", "FAILED"),
                       (3, None, "PENDING"), (3, "PENDING", "DEPLOYING"), (3, "DEPLOYING", "READY"),
                       (1, "READY", "DRAINING")]
    assert repo.live_runtimes() == [("iris", 1, {"pid": 1, "port": 5})]


def test_first_revision_failing_is_failed(repo):
    repo.create("iris", "/m/1.keras", "/d/train.csv", {})
    repo.set_revision(newest(repo, "iris"), state=m.FAILED, error="does not exist")
    assert (repo.get("iris").status, repo.get("iris").error) == ("FAILED", "does not exist")


def race(work, n: int = 2) -> list:
    barrier = threading.Barrier(n)
    results = []

    def run():
        barrier.wait()
        try:
            results.append(work())
        except Exception as exc:  # the outcome under test
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_creates_of_one_name_make_one_deployment(repo):
    repo.list()  # schema
    for attempt in range(3):
        results = race(lambda: repo.create(f"race{attempt}", "/m.keras", "/d.csv", {}))
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "Deployment"]
    assert len(repo.list()) == 3


def test_concurrent_updates_get_distinct_revisions(repo):
    repo.create("iris", "/m/1.keras", "/d.csv", {})
    results = race(lambda: repo.update("iris", "/m/2.keras", None, None))
    assert all(isinstance(r, m.Deployment) for r in results), results
    assert sorted(r.revision for r in results) == [2, 3]


def test_upload_events_are_handled_once(repo):
    assert repo.apply_manifest("b", "x/modelrun.json", "1", "iris", "/m.keras", "/d.csv", None)[0] == "created"
    assert repo.apply_manifest("b", "x/modelrun.json", "1", "iris", "/m.keras", "/d.csv", None) == ("duplicate", None)
    outcome, deployment = repo.apply_manifest("b", "x/modelrun.json", "2", "iris", "/m2.keras", "/d.csv", {"a": 1})
    assert (outcome, deployment.revision, deployment.config) == ("updated", 2, {"a": 1})
    assert repo.record_upload("b", "y/modelrun.json", "1", "invalid: broken") is True
    assert repo.record_upload("b", "y/modelrun.json", "1", "invalid: broken") is False
    results = race(lambda: repo.apply_manifest("b", "z/modelrun.json", "9", "wine", "/w.keras", "/d.csv", None))
    assert sorted(r[0] for r in results) == ["created", "duplicate"]
