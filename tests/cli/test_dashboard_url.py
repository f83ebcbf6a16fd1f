"""`modelrun dashboard` prints where the drift dashboard is: the page `modelrun up` serves beside the API, or
on Google Cloud the bucket page Terraform exports as MODELRUN_DASHBOARD_URL."""

from __future__ import annotations

import json

from click.testing import CliRunner

from modelrun import cli


def test_locally_the_dashboard_is_beside_the_api(monkeypatch):
    monkeypatch.delenv("MODELRUN_DASHBOARD_URL", raising=False)
    monkeypatch.setenv("MODELRUN_API", "http://127.0.0.1:9123/")
    result = CliRunner().invoke(cli.cli, ["dashboard"])
    assert result.exit_code == 0 and result.output.strip() == "http://127.0.0.1:9123/dashboard/"


def test_on_google_cloud_the_exported_dashboard_url_wins(monkeypatch):
    url = "https://storage.cloud.google.com/my-project-modelrun-dashboard/index.html"
    monkeypatch.setenv("MODELRUN_API", "https://us-central1-my-project.cloudfunctions.net/api")
    monkeypatch.setenv("MODELRUN_DASHBOARD_URL", url)
    result = CliRunner().invoke(cli.cli, ["dashboard", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == {"url": url}
