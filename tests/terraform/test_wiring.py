"""Terraform tied to the code: the functions' entry points exist, their triggers watch the right things,
every setting the control plane and the model servers read is set (or deliberately left at its default),
the accounts that need Cloud Run invoker and Cloud SQL client have them, and no primitive role is granted."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from modelrun.control.backends import server_environment
from modelrun.settings import Settings
from serving.settings import ServingSettings
from tests.terraform.config import TERRAFORM, load, main_py_names, one, value

# Settings the functions leave at their defaults, each for a reason.
CONTROL_PLANE_DEFAULTS = {
    # read by the CLI and the Python client only, never by the control plane
    "api", "token", "id_token", "grpc_max_message_bytes", "dashboard_url",
    # test fakes without TLS: unset means the real Google APIs
    "cloudbuild_endpoint", "artifactregistry_endpoint", "run_endpoint",
    # `modelrun up` only (on Google Cloud Cloud Scheduler calls reconcile and drift) and the local runner only
    "reconcile_interval", "drift_interval", "stop_timeout", "restart_limit", "restart_window", "restart_backoff",
    # tuning whose defaults suit Cloud Functions and Cloud Run
    "build_timeout", "run_api_timeout", "run_wait", "run_sweep_interval", "max_body_bytes", "lease_seconds",
    "start_timeout", "drain_grace", "drift_reservoir", "drift_sample_rows", "drift_gap_grace",
    # optional: a deployment's own drift.webhook config does the same per deployment
    "drift_webhook",
}

# Model-server settings nobody sets on Cloud Run, each for a reason.
SERVER_DEFAULTS = {
    "host",  # 0.0.0.0: every interface of the container
    "max_message_bytes", "batch_max_wait_ms", "log_predictions", "intra_op_threads",  # tuning
    "max_batch_size", "log_sample_rate",  # a deployment's config sets them; server_environment passes them on
    "training_data",  # the bundle's bundle.json names it (MODELRUN_MODEL_URI is the bundle folder)
    "journal_dir", "home",  # the container's own disk, under $HOME
    "admin_port", "share_port",  # the local runner's port handover; Cloud Run routes revisions itself
}
SET_BY_CLOUD_RUN = {"MODELRUN_MODEL_URI": "the Cloud Run runner: the bundle folder", "PORT": "Cloud Run"}
FUNCTIONS = {"api", "on_upload", "on_build", "drift", "reconcile"}


@pytest.fixture(scope="module")
def tf():
    return load()


@pytest.fixture(scope="module")
def function(tf):
    return tf.resource("google_cloudfunctions2_function", "control")


def env_name(field: str) -> str:
    return "MODELRUN_" + field.upper()


def test_every_function_runs_an_entry_point_of_main_py(tf, function):
    assert function["for_each"] == "${local.functions}"
    assert one(function["build_config"])["entry_point"] == "${each.key}"
    assert value(one(function["build_config"])["runtime"]) == "python311"
    assert set(tf.locals["functions"]) == FUNCTIONS
    missing = FUNCTIONS - main_py_names()
    assert not missing, f"functions/main.py has no entry point named {sorted(missing)}"


def test_the_upload_trigger_watches_the_models_bucket_and_retries(tf, function):
    upload = tf.locals["functions"]["on_upload"]
    assert value(upload["event_type"]) == "google.cloud.storage.object.v1.finalized"
    assert upload["event_filters"] == {"bucket": "${google_storage_bucket.models.name}"}
    assert value(upload["retry"]) == "RETRY_POLICY_RETRY"
    trigger = one(function["dynamic"])["event_trigger"]
    assert trigger["for_each"] == "${each.value.event_type[*]}"
    content = one(trigger["content"])
    assert content["event_type"] == "${each.value.event_type}" and content["retry_policy"] == "${each.value.retry}"
    filters = one(content["dynamic"])["event_filters"]
    assert filters["for_each"] == "${each.value.event_filters}"
    assert one(filters["content"]) == {"attribute": "${event_filters.key}", "value": "${event_filters.value}"}


def test_build_events_come_from_the_cloud_builds_topic(tf):
    build = tf.locals["functions"]["on_build"]
    assert value(build["event_type"]) == "google.cloud.pubsub.topic.v1.messagePublished"
    assert build["pubsub_topic"] == "${google_pubsub_topic.cloud_builds.id}"
    assert value(tf.resource("google_pubsub_topic", "cloud_builds")["name"]) == "cloud-builds"
    http = [name for name, f in tf.locals["functions"].items() if f["event_type"] is None]
    assert sorted(http) == ["api", "drift", "reconcile"]


def test_every_control_plane_setting_is_set_or_deliberately_default(tf, function):
    env = tf.locals["function_env"]
    assert one(function["service_config"])["environment_variables"] == "${local.function_env}"
    fields = set(Settings.model_fields)
    assert CONTROL_PLANE_DEFAULTS <= fields, f"not settings any more: {sorted(CONTROL_PLANE_DEFAULTS - fields)}"
    unset = sorted(env_name(f) for f in fields - CONTROL_PLANE_DEFAULTS if env_name(f) not in env)
    assert not unset, f"terraform/functions.tf does not set {unset} (set it, or add it to CONTROL_PLANE_DEFAULTS)"
    unknown = sorted(set(env) - {env_name(f) for f in fields})
    assert not unknown, f"terraform/functions.tf sets {unknown}, which no setting reads"
    assert value(env["MODELRUN_STORAGE"]) == "gcs" and value(env["MODELRUN_BUILDER"]) == "cloudbuild"
    assert value(env["MODELRUN_RUNNER"]) == "cloudrun" and value(env["MODELRUN_AUTH"]) == "none"
    assert value(env["MODELRUN_RECONCILE_ON_WRITE"]) == "true" and value(env["MODELRUN_CLOUDSQL_IAM_AUTH"]) == "true"
    assert env["MODELRUN_JOURNAL_URI"] == '"gs://${google_storage_bucket.journal.name}/journal"'
    assert env["MODELRUN_DASHBOARD_BUCKET"] == "${google_storage_bucket.dashboard.name}"


def test_every_model_server_setting_reaches_the_servers_or_is_deliberately_default():
    """The model servers on Cloud Run get their environment from the control plane (server_environment)."""
    rev = SimpleNamespace(name="iris", revision=1, config={})
    given = set(server_environment(Settings(), rev, ["a", "b"])) | set(SET_BY_CLOUD_RUN)
    fields = ServingSettings.model_fields
    assert SERVER_DEFAULTS <= set(fields)
    names = {name: {env_name(name)} | ({"PORT"} if name == "port" else set()) for name in fields}
    missing = sorted(name for name in set(fields) - SERVER_DEFAULTS if not names[name] & given)
    assert not missing, f"nothing gives the model servers {missing} (or add them to SERVER_DEFAULTS)"


def test_accounts_hold_the_roles_they_need(tf, function):
    roles = {(r["member"], value(r["role"])) for r in tf.locals["project_roles"].values()}
    for member in ("${local.functions_member}", "${local.server_member}"):
        assert (member, "roles/cloudsql.client") in roles and (member, "roles/cloudsql.instanceUser") in roles
    # Each service account signs in to the database as its own IAM database user.
    assert tf.locals["database_accounts"] == {"functions": "${google_service_account.functions.email}",
                                              "server": "${google_service_account.server.email}"}
    env = tf.locals["function_env"]
    assert env["MODELRUN_DATABASE_URL"] == '${local.database_urls["functions"]}'
    assert env["MODELRUN_SERVER_DATABASE_URL"] == '${local.database_urls["server"]}'
    assert value(tf.resource("google_sql_user", "iam")["type"]) == "CLOUD_IAM_SERVICE_ACCOUNT"
    # The functions run as the control plane's account, which may invoke the model servers it creates and
    # start them as the model servers' account.
    assert one(function["service_config"])["service_account_email"] == "${google_service_account.functions.email}"
    assert env["MODELRUN_RUN_SERVICE_ACCOUNT"] == "${google_service_account.server.email}"
    assert env["MODELRUN_BUILD_SERVICE_ACCOUNT"] == "${google_service_account.build.email}"
    assert "local.functions_member" in env["MODELRUN_RUN_INVOKERS"]
    act_as = tf.resource("google_service_account_iam_member", "functions_act_as_server")
    assert act_as["service_account_id"] == "${google_service_account.server.name}"
    assert (value(act_as["role"]), act_as["member"]) == ("roles/iam.serviceAccountUser", "${local.functions_member}")


def test_only_the_invokers_call_the_functions(tf):
    grants = tf.resource("google_cloud_run_v2_service_iam_member", "function_invokers")
    assert value(grants["role"]) == "roles/run.invoker"
    assert grants["name"] == "${google_cloudfunctions2_function.control[each.value.function].service_config[0].service}"
    rule = tf.locals["function_invokers"]
    api = re.search(r"for m in var\.invokers : \"api \$\{m\}\" => \{ *function = \"api\", member = m *\}", rule)
    assert api, rule
    scheduled = re.search(r"for f in \[([^\]]*)\] : .*member = local\.invoker_member", rule)
    assert scheduled and set(re.findall(r'"(\w+)"', scheduled.group(1))) == FUNCTIONS - {"api"}, rule


def test_the_scheduler_calls_drift_and_reconcile_as_the_invoker(tf):
    assert tf.locals["schedules"] == {"drift": "${var.drift_schedule}", "reconcile": "${var.reconcile_schedule}"}
    job = tf.resource("google_cloud_scheduler_job", "schedules")
    assert job["for_each"] == "${local.schedules}"
    target = one(job["http_target"])
    assert target["uri"] == "${google_cloudfunctions2_function.control[each.key].service_config[0].uri}"
    token = one(target["oidc_token"])
    assert token["service_account_email"] == "${google_service_account.invoker.email}"
    assert token["audience"] == target["uri"]


def test_no_primitive_roles_anywhere():
    for path in TERRAFORM.glob("*.tf"):
        found = re.findall(r"roles/(?:owner|editor|viewer)\b", path.read_text())
        assert not found, f"{path.name} grants {found}: use a predefined role"


def test_every_variable_has_a_description(tf):
    undocumented = [name for name, v in tf.variables.items() if not value(v.get("description", ""))]
    assert not undocumented
    assert [name for name, v in tf.variables.items() if "default" not in v] == ["project"]


def test_the_exported_environment_points_the_cli_at_the_api_and_the_dashboard(tf):
    env = tf.locals["modelrun_env"]
    unknown = sorted(set(env) - {env_name(f) for f in Settings.model_fields})
    assert not unknown, f"terraform/outputs.tf exports {unknown}, which no setting reads"
    assert env["MODELRUN_API"] == '${google_cloudfunctions2_function.control["api"].url}'
    assert env["MODELRUN_DASHBOARD_URL"] == "${local.dashboard_url}"
    assert tf.outputs["modelrun_env"]["value"] == "${local.modelrun_env}"
