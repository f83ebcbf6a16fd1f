"""Several control-plane processes on one database: leases in SQL keep them from acting twice."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from modelrun.control import build_control_plane
from modelrun.control.leases import Leases
from modelrun.db import create_schema, make_engine
from modelrun.settings import Settings
from tests.control.conftest import wait_status
from tests.util import serving_processes


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def test_one_holder_at_a_time_until_release_or_expiry(engine, monkeypatch):
    first, second = Leases(engine, "a", ttl=60), Leases(engine, "b", ttl=60)
    assert first.acquire("iris") and first.acquire("iris")  # taking it again renews it
    assert not second.acquire("iris")
    assert second.acquire("wine")  # one lease per deployment
    assert first.held_by_others() == {"wine"} and second.held_by_others() == {"iris"}
    first.release("iris")
    assert second.acquire("iris") and not first.acquire("iris")
    second.release("wine")
    second.release("wine")  # releasing twice is harmless

    from modelrun.control import leases as module
    later = module.utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(module, "utcnow", lambda: later)  # "b" died holding "iris": the lease runs out
    assert first.acquire("iris")


def test_racing_holders_never_share_a_lease(engine):
    holders = [Leases(engine, f"h{i}", ttl=60) for i in range(6)]
    won: list[str] = []
    start = threading.Barrier(len(holders))

    def race(leases):
        start.wait()
        if leases.acquire("contested"):
            won.append(leases.holder)

    threads = [threading.Thread(target=race, args=(h,)) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_two_control_planes_deploy_each_revision_once(home, models_dir):
    """Two planes (as two function instances) reconcile the same database and home in a loop at once."""
    planes = [build_control_plane(Settings()) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(plane):
        while not stop.is_set():
            try:
                plane.reconcile_once()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                return

    try:
        names = ["one", "two", "three"]
        for name in names:
            planes[0].deployments.create({"name": name, "model_uri": str(models_dir["dense8"]),
                                          "training_data_uri": str(models_dir["train8"]),
                                          "config": {"label": "target"}})
        threads = [threading.Thread(target=loop, args=(p,)) for p in planes]
        for t in threads:
            t.start()
        for name in names:
            assert wait_status(planes[1], name)["status"] == "READY"
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(serving_processes(home)) == len(names)  # one server per revision: none started twice
        for name in names:
            starts = (home / "logs" / f"{name}-r1.log").read_text().count("--- modelrun: starting revision 1")
            assert starts == 1, f"{name}: its model server was started {starts} times"
            steps = [(e["from"], e["to"]) for e in planes[0].repo.events(name)]
            assert steps.count(("DEPLOYING", "READY")) == 1, steps
    finally:
        stop.set()
        for plane in planes:
            plane.shutdown()
