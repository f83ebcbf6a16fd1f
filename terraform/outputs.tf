# modelrun on Google Cloud: what a user needs after `terraform apply`: where the API, the dashboard and the
# models bucket are, the environment for the `modelrun` CLI, and how to build the serving base image.
#
# The serving base image (cloudbuild.yaml at the repo root) is built and pushed once, and again for each new
# release; Terraform cannot run the build, it only points MODELRUN_SERVING_IMAGE at it (var.serving_image_tag):
# run the `serving_image_build` command from the repo root, then (to pin it) apply again with
# -var serving_image_tag=sha256:<the digest the build printed>.

locals {
  serving_image = format("%s-docker.pkg.dev/%s/%s/serving%s%s", var.region, var.project,
    google_artifact_registry_repository.images.repository_id,
  startswith(var.serving_image_tag, "sha256:") ? "@" : ":", var.serving_image_tag)
  dashboard_host = var.dashboard_public ? "storage.googleapis.com" : "storage.cloud.google.com"
  dashboard_url  = "https://${local.dashboard_host}/${google_storage_bucket.dashboard.name}/index.html"
  # What the `modelrun` CLI and Python client need (ID tokens come from Application Default Credentials).
  modelrun_env = {
    MODELRUN_API           = google_cloudfunctions2_function.control["api"].url
    MODELRUN_DASHBOARD_URL = local.dashboard_url
  }
}

output "api_url" {
  description = "The REST API (the `api` function); callers need an ID token and roles/run.invoker (var.invokers)."
  value       = google_cloudfunctions2_function.control["api"].url
}

output "dashboard_url" {
  description = "The drift dashboard (published by the `drift` function); signed in to Google unless dashboard_public."
  value       = local.dashboard_url
}

output "models_bucket" {
  description = "Upload model folders here, the modelrun.json manifest last: it deploys them."
  value       = "gs://${google_storage_bucket.models.name}"
}

output "serving_image" {
  description = "The serving base image model images are built on (MODELRUN_SERVING_IMAGE)."
  value       = local.serving_image
}

output "serving_image_build" {
  description = "Run from the repository root to build and push the serving base image (once, and for each release)."
  value = join(" ", [
    "gcloud builds submit --project=${var.project} --region=${var.region} --config=cloudbuild.yaml",
    "--substitutions=_REGION=${var.region},_REPOSITORY=${google_artifact_registry_repository.images.repository_id},SHORT_SHA=$(git rev-parse --short HEAD) .",
  ])
}

output "modelrun_env" {
  description = "Environment of the `modelrun` CLI and Python client for this deployment (Application Default Credentials that can mint ID tokens sign the calls)."
  value       = local.modelrun_env
}

output "modelrun_env_exports" {
  description = "The same as shell lines: eval \"$(terraform output -raw modelrun_env_exports)\"."
  value       = join("", [for name, value in local.modelrun_env : "export ${name}=${value}\n"])
}

output "service_accounts" {
  description = "The service accounts: functions (control plane), server (model servers), build (model image builds), function_build, invoker."
  value = {
    functions      = google_service_account.functions.email
    server         = google_service_account.server.email
    build          = google_service_account.build.email
    function_build = google_service_account.function_build.email
    invoker        = google_service_account.invoker.email
  }
}

output "cloudsql_instance" {
  description = "Cloud SQL instance connection name (MODELRUN_CLOUDSQL_INSTANCE)."
  value       = local.database.connection_name
}
