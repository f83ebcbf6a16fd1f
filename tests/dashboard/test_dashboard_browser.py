"""The drift dashboard in a real browser (Debian's chromium through Playwright), on handcrafted reports:
what a data scientist sees on the home page and on a deployment's page, with screenshots of each page."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

# Each chart container holds a plotly SVG with drawn bars or lines; returns how many marks it drew.
MARKS_DRAWN = """el => {
  if (!el.querySelector('svg.main-svg')) return 0;
  return el.querySelectorAll('.barlayer .point path, .scatterlayer .js-line, .scatterlayer .point').length;
}"""
ALL_PLOTS_DRAWN = f"""() => {{
  const plots = [...document.querySelectorAll('.plot')];
  return plots.length > 0 && plots.every(p => ({MARKS_DRAWN})(p) > 0);
}}"""


def open_home(page, base_url):
    page.goto(base_url)
    page.wait_for_selector("#deployments tbody tr")


def wait_for_charts(page):
    page.wait_for_function(ALL_PLOTS_DRAWN)


def feature_row(page, section, name):
    return page.locator(f"#{section}-table tr[data-feature='{name}']")


def test_home_lists_every_deployment_with_its_verdict(page, base_url, artifacts):
    open_home(page, base_url)

    rows = page.locator("#deployments tbody tr")
    assert rows.count() == 2
    houses, tiny = page.locator("tr[data-deployment='houses']"), page.locator("tr[data-deployment='tiny']")
    assert houses.locator(".verdict").inner_text().endswith("Drift")
    assert "area" in houses.inner_text() and "812" in houses.inner_text()
    assert tiny.locator(".verdict").inner_text().endswith("Not enough data")
    page.screenshot(path=artifacts / "home.png", full_page=True)
    assert page.log.problems == []


def test_deployment_page_shows_what_drifted_with_charts(page, base_url, artifacts):
    open_home(page, base_url)
    page.get_by_role("link", name="houses", exact=True).click()
    page.wait_for_url("**#/d/houses")
    wait_for_charts(page)

    assert page.locator(".summary .verdict").inner_text().endswith("Drift")
    assert "812 production vs 2,000 reference" in page.locator(".summary").inner_text()
    area, city = feature_row(page, "features", "area"), feature_row(page, "features", "city")
    assert area.locator(".badge").inner_text() == "DRIFTED"
    assert area.locator("[data-check='out_of_range']").get_attribute("class") == "chip flagged"
    assert city.locator(".badge").inner_text() == "OK"
    # Drifted features come first, then by how far past the threshold they are.
    assert page.locator("#features-table tbody tr").first.get_attribute("data-feature") == "area"
    assert feature_row(page, "outputs", "price").locator(".badge").inner_text() == "OK"

    plots = page.locator(".plot")
    names = [plots.nth(i).get_attribute("data-plot") for i in range(plots.count())]
    assert names == ["area", "city", "price", "drifted_share", "scores"]
    for i in range(plots.count()):
        assert plots.nth(i).evaluate(MARKS_DRAWN) > 0, f"chart {names[i]} drew nothing"
    assert "257 above" not in page.inner_text("body")  # that is the 'all' window, not last-24h
    assert "162 above" in page.locator("#plot-features-area").inner_text()
    assert "Unseen in training: braga" in page.locator("#plot-features-city").inner_text()
    page.screenshot(path=artifacts / "houses.png", full_page=True)
    assert page.log.problems == []


def test_window_selector_switches_the_report(page, base_url, artifacts):
    page.goto(base_url + "#/d/houses")
    wait_for_charts(page)
    page.locator(".windows a[data-window='2026-11-30']").click()
    page.wait_for_url("**#/d/houses/2026-11-30")
    wait_for_charts(page)

    assert page.locator(".summary .verdict").inner_text().endswith("No drift")
    assert feature_row(page, "features", "area").locator(".badge").inner_text() == "OK"
    assert page.locator(".windows a[aria-current='page']").inner_text() == "2026-11-30"
    page.screenshot(path=artifacts / "houses-2026-11-30.png", full_page=True)
    assert page.log.problems == []


def test_not_enough_data_is_a_state_of_its_own(page, base_url, artifacts):
    open_home(page, base_url)
    page.get_by_role("link", name="tiny", exact=True).click()
    wait_for_charts(page)

    banner = page.locator("#not-enough-data")
    assert banner.is_visible()
    assert "31 production rows" in banner.inner_text() and "at least 100" in banner.inner_text()
    assert page.locator(".summary .verdict").inner_text().endswith("Not enough data")
    assert page.locator("#features .badge.drifted").count() == 0
    # area's score is past its threshold, but with 31 rows no column is judged.
    assert feature_row(page, "features", "area").locator(".badge").inner_text() == "NOT JUDGED"
    page.screenshot(path=artifacts / "tiny.png", full_page=True)
    assert page.log.problems == []


def test_no_deployments_is_an_empty_state(page, base_url, artifacts):
    empty = {"schema": 1, "generated_at": "2026-12-02T14:20:05Z", "deployments": []}
    page.route("**/data/index.json", lambda route: route.fulfill(json=empty))
    page.goto(base_url)

    assert page.get_by_role("heading", name="No deployments yet").is_visible()
    page.screenshot(path=artifacts / "empty.png", full_page=True)
    assert page.log.problems == []


def test_missing_json_is_a_visible_error_not_a_blank_page(page, base_url, artifacts):
    page.goto(base_url + "#/d/nowhere")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.inner_text() == "Could not load data/deployments/nowhere.json: HTTP 404"

    page.route("**/data/index.json", lambda route: route.fulfill(status=200, body="{not json"))
    page.goto(base_url + "#/")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('index.json')")
    assert error.inner_text() == "Could not read data/index.json: not valid JSON"
    page.screenshot(path=artifacts / "error.png", full_page=True)


def test_text_from_the_reports_is_never_parsed_as_html(page, base_url, site):
    index = json.loads((site / "data" / "index.json").read_text())
    index["deployments"][0]["status"] = "<img src=x onerror=\"document.title='owned'\">"
    page.route("**/data/index.json", lambda route: route.fulfill(json=index))
    open_home(page, base_url)

    assert page.locator("#deployments img").count() == 0
    assert "<img src=x" in page.locator("tr[data-deployment='houses']").inner_text()

    houses = json.loads((site / "data" / "deployments" / "houses.json").read_text())
    city = houses["windows"][1]["features"][1]
    assert city["name"] == "city"
    city["production"]["histogram"]["categories"][-1] = "<i>braga</i>"
    page.route("**/data/deployments/houses.json", lambda route: route.fulfill(json=houses))
    page.goto(base_url + "#/d/houses")
    wait_for_charts(page)

    ticks = page.locator("[data-plot='city'] .xtick text").evaluate_all("els => els.map(e => e.textContent)")
    assert ticks[-1] == "<i>braga</i>"  # the chart shows the label as written, not in italics
    assert page.title() != "owned"
