"""Fixtures for the dashboard tests: the published folder layout served over loopback HTTP, and Debian's
chromium driven by Playwright (never a downloaded browser).

The site is what the drift function publishes: the repo's dashboard/ files, plotly.min.js from the installed
`plotly` package, and the handcrafted reports under tests/dashboard/data/.
"""

from __future__ import annotations

import functools
import http.server
import importlib.resources
import os
import shutil
import threading
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SAMPLE_DATA = Path(__file__).parent / "data"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output readable
        pass


@pytest.fixture
def site(tmp_path) -> Path:
    """A folder laid out like the published dashboard."""
    root = tmp_path / "site"
    root.mkdir()
    for name in ("index.html", "app.js", "style.css"):
        shutil.copyfile(importlib.resources.files("dashboard") / name, root / name)
    shutil.copyfile(importlib.resources.files("plotly") / "package_data" / "plotly.min.js", root / "plotly.min.js")
    shutil.copytree(SAMPLE_DATA, root / "data")
    return root


@pytest.fixture
def base_url(site):
    """The site served by a threaded http.server on a free loopback port; stopped after the test."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageLog:
    """What went wrong on a page: console errors, uncaught exceptions, failed or non-2xx requests."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))


@pytest.fixture
def page(browser):
    """A fresh 1400px-wide page with its PageLog as page.log."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    new_page = context.new_page()
    new_page.log = PageLog(new_page)
    yield new_page
    context.close()


@pytest.fixture
def artifacts(tmp_path, request) -> Path:
    """Where screenshots go: $MODELRUN_TEST_ARTIFACTS/dashboard when set, else the test's tmp_path."""
    env = os.environ.get("MODELRUN_TEST_ARTIFACTS")
    folder = Path(env) / "dashboard" if env else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
