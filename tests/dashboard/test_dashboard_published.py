"""The dashboard on what the drift service really publishes (not handcrafted JSON): real log rows in SQLite,
a refresh, the Storage port writing the site, `modelrun up`'s /dashboard/ middleware serving it, chromium
reading it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from modelrun.control.backends.local_storage import LocalStorage
from modelrun.drift.service import DriftService
from modelrun.local.stack import DashboardFiles
from modelrun.settings import Settings
from tests.dashboard.test_dashboard_browser import feature_row, open_home, wait_for_charts
from tests.drift.logutil import engine_for, houses, log_requests, save_reference


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def _api(environ, start_response):  # stands in for the REST API behind the middleware
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"api"]


@pytest.fixture
def published(tmp_path):
    settings = Settings(home=tmp_path / "home")
    engine = engine_for(f"sqlite:///{tmp_path / 'modelrun.db'}")
    now = datetime.now(UTC).replace(tzinfo=None)
    save_reference(engine, "houses", 1, houses(2000, 0), created=now - timedelta(days=3))
    for days_ago, shift in ((2, 0), (1, 0), (0, 45)):  # two calm days, then bigger flats today
        log_requests(engine, "houses", 1, houses(400, 10 + days_ago, area_shift=shift), per_request=4,
                     prefix=f"d{days_ago}-", ts=now - timedelta(days=days_ago, minutes=5))
    deployments = [{"name": "houses", "status": "READY", "revision": 1, "serving_revision": 1, "config": {}},
                   {"name": "fresh", "status": "DEPLOYING", "revision": 1, "serving_revision": None, "config": {}}]
    DriftService(engine, LocalStorage(settings)).refresh(deployments)
    server = make_server("127.0.0.1", 0, DashboardFiles(_api, settings.dashboard_dir), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/dashboard/"
    server.shutdown()
    server.server_close()


def test_the_published_dashboard_shows_the_drifted_feature(page, published, artifacts):
    open_home(page, published)
    houses_row = page.locator("tr[data-deployment='houses']")
    assert "area" in houses_row.inner_text()
    assert page.locator("tr[data-deployment='fresh'] .verdict").inner_text().endswith("No data")
    page.screenshot(path=artifacts / "published-home.png", full_page=True)

    page.get_by_role("link", name="houses", exact=True).click()
    page.wait_for_url("**#/d/houses")
    wait_for_charts(page)
    assert feature_row(page, "features", "area").locator(".badge").inner_text() == "DRIFTED"
    for calm in ("rooms", "age", "city"):
        assert feature_row(page, "features", calm).locator(".badge").inner_text() == "OK"
    assert feature_row(page, "outputs", "price").count() == 1
    assert page.locator(".windows a").count() == 5  # all, last-24h and three days
    page.screenshot(path=artifacts / "published-houses.png", full_page=True)
    assert page.log.problems == []
